// Package daemon is the control API of a mounted scrubd filesystem: the
// mount process serves it on a unix socket, and scrubd scrub and scrubd
// inject (or any program speaking the protocol) use it to scrub, repair
// and damage the mounted image without a second open of the image.
//
// # Where the socket is
//
// SocketPath(mountpoint) is <runtime dir>/scrubd/<id>.sock, where the
// runtime dir is $XDG_RUNTIME_DIR if set, else /run, and id is the first
// 16 hex digits of the SHA-256 of the absolute, cleaned mountpoint. The
// server names its socket after the mountpoint with symlinks resolved; a
// client tries the path as given and then the resolved one, so a mount
// made or reached through a symlink is found either way.
//
// # Who may connect
//
// The scrubd directory is created 0700 and the socket is made 0600, both
// owned by the server's user; a directory that exists with other
// permissions is tightened, one owned by another user is refused. As
// defence in depth every connection's peer credentials (SO_PEERCRED) are
// checked and a peer with another uid is answered "permission denied"
// and disconnected.
//
// # Protocol
//
// One JSON object per line each way; a connection may carry any number of
// requests, answered in order. A request is at most MaxRequest bytes and
// has no fields beyond those of Request (unknown fields are refused, so an
// option an old server does not know is never silently ignored).
//
//	{"op":"status"}                                     → {"status":{…}}
//	{"op":"scrub","repair":true,"data":false}           → {"report":{…}}
//	{"op":"inject","tree":"rmap","kind":"bitflip","seed":1} → {"inject":{…}}
//	anything that fails                                  → {"error":"…","code":"…"}
//
// The report is repair.Report (its JSON is versioned); inject answers
// inject.Result; status answers Status.
//
// One maintenance operation runs at a time: a scrub or inject that
// arrives while a scrub (or inject) is running is refused at once with
// code "busy" and the error "scrub already running", rather than queued —
// a caller that wants to wait retries, and nobody piles up repairs. Status
// is always answered.
//
// Hanging up while a request runs cancels that request: a scrub stops at
// its next cancellation check, and a repair either commits or leaves the
// old structure in place (repair's guarantee). Closing only the writing
// half (shutdown(SHUT_WR), as socat and nc -N do) is not hanging up: the
// requests sent are answered, then the server closes the connection. Closing the server (or cancelling the context given to
// Serve) cancels every running request, waits for them, and removes the
// socket.
package daemon
