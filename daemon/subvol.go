package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/scrubd/scrubd/engine/format"
	sfs "github.com/scrubd/scrubd/engine/fs"
)

// Subvolume operations.
//
// One function, SubvolCall, carries them out on an engine/fs filesystem:
// the control server calls it for the subvol_* ops on the mount it
// serves, and "scrubd subvol --image" calls it on an image it opened
// itself, so the mounted and the offline forms behave alike. Paths are the
// filesystem's own, from its top level ("/vols/a"): the client turns a
// path inside the mount into one (Locate). A subvolume made or deleted
// through the control socket changes names the kernel may have cached
// from the mount, so the server then drops the kernel's cache
// (FS.ExternalChange), as after a repair.

// The subvolume operations of the control protocol.
const (
	OpSubvolCreate      = "subvol_create"       // path: make an empty subvolume there
	OpSubvolList        = "subvol_list"         // every subvolume, by id
	OpSubvolShow        = "subvol_show"         // path: the subvolume rooted there
	OpSubvolDelete      = "subvol_delete"       // path (wait: until its space is freed)
	OpSubvolFind        = "subvol_find"         // uuid: the subvolumes with that UUID or received UUID
	OpSubvolSetReceived = "subvol_set_received" // path, uuid (all zeros: clear)
	OpSubvolSnapshot    = "subvol_snapshot"     // path (the source), dest, readonly (wait: until filled)
)

// SubvolOps are the subvolume operations.
var SubvolOps = []string{OpSubvolCreate, OpSubvolList, OpSubvolShow, OpSubvolDelete, OpSubvolFind, OpSubvolSetReceived, OpSubvolSnapshot}

// isSubvolOp reports whether op is a subvolume operation.
func isSubvolOp(op string) bool {
	for _, o := range SubvolOps {
		if o == op {
			return true
		}
	}
	return false
}

// SubvolResult answers a subvolume operation (Response.Subvol).
type SubvolResult struct {
	// Subvols: for list every subvolume by id; for create, show, delete
	// and set_received the one; for find those found (own UUID first,
	// then received), by id.
	Subvols []sfs.SubvolInfo `json:"subvols"`
	// Own and Received, for find: the ids of the subvolumes whose UUID,
	// or received UUID, is the one asked (from the uuid tree).
	Own      []uint64 `json:"own,omitempty"`
	Received []uint64 `json:"received,omitempty"`
}

// ErrBadArgument is wrapped by SubvolCall's errors for a request that is
// malformed (an unknown op, a missing path or UUID, a UUID that does not
// parse): the caller's mistake, not the filesystem's answer. Through the
// control socket it is a CodeBadRequest answer.
var ErrBadArgument = errors.New("bad argument")

func badArg(msg string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrBadArgument, fmt.Sprintf(msg, a...))
}

// waitPoll is how often a delete with wait looks whether the reaper has
// freed the subvolume.
const waitPoll = 20 * time.Millisecond

// SubvolCall carries out the subvolume operation req (Op one of
// SubvolOps; Path, UUID and Wait as the op takes them) on fsys. Path is
// taken from the top of the filesystem, "." and ".." resolved lexically
// (symlinks are not followed). Errors
// are the filesystem's (fs.ErrNotSubvol, fs.ErrSubvolBusy,
// fs.ErrNoSuchSubvol, fs.ErrNoSubvols, or an errno such as EEXIST or
// ENOENT), or wrap ErrBadArgument.
func SubvolCall(ctx context.Context, fsys *sfs.FS, req Request) (*SubvolResult, error) {
	return subvolCall(ctx, fsys, req, func() {})
}

// subvolCall is SubvolCall calling changed once a create or delete has
// changed the names of the filesystem.
func subvolCall(ctx context.Context, fsys *sfs.FS, req Request, changed func()) (*SubvolResult, error) {
	if !isSubvolOp(req.Op) {
		return nil, badArg("unknown subvolume op %q", req.Op)
	}
	if req.Repair || req.Data || req.Rate != "" || req.Since != 0 || req.Incremental || req.Errors || req.Background ||
		req.Tree != "" || req.Kind != "" || req.Seed != 0 || req.Level != nil || req.Copy != nil || req.File != "" || req.Offset != 0 {
		return nil, badArg("%s takes path, uuid and wait only", req.Op)
	}
	if req.Op != OpSubvolSnapshot && (req.Dest != "" || req.ReadOnly) {
		return nil, badArg("only %s takes dest and readonly", OpSubvolSnapshot)
	}
	if req.Op == OpSubvolSnapshot && req.Dest == "" {
		return nil, badArg("%s needs a dest (the path of the snapshot to make)", req.Op)
	}
	needPath := req.Op != OpSubvolList && req.Op != OpSubvolFind
	needUUID := req.Op == OpSubvolFind || req.Op == OpSubvolSetReceived
	switch {
	case needPath && req.Path == "":
		return nil, badArg("%s needs a path", req.Op)
	case !needPath && req.Path != "":
		return nil, badArg("%s takes no path", req.Op)
	case needUUID && req.UUID == "":
		return nil, badArg("%s needs a uuid", req.Op)
	case !needUUID && req.UUID != "":
		return nil, badArg("%s takes no uuid", req.Op)
	case req.Wait && req.Op != OpSubvolDelete && req.Op != OpSubvolSnapshot:
		return nil, badArg("only %s and %s wait", OpSubvolDelete, OpSubvolSnapshot)
	}
	var u format.UUID
	if needUUID {
		var err error
		if u, err = format.ParseUUID(req.UUID); err != nil {
			return nil, badArg("%v", err)
		}
	}
	p := path.Clean("/" + req.Path)
	one := func(info sfs.SubvolInfo, err error) (*SubvolResult, error) {
		if err != nil {
			return nil, err
		}
		return &SubvolResult{Subvols: []sfs.SubvolInfo{info}}, nil
	}
	switch req.Op {
	case OpSubvolList:
		infos, err := fsys.Subvols()
		if err != nil {
			return nil, err
		}
		return &SubvolResult{Subvols: nonNil(infos)}, nil
	case OpSubvolFind:
		return findSubvols(fsys, u)
	case OpSubvolShow:
		id, err := subvolAt(fsys, p)
		if err != nil {
			return nil, err
		}
		return one(fsys.Subvol(id))
	case OpSubvolSetReceived:
		id, err := subvolAt(fsys, p)
		if err != nil {
			return nil, err
		}
		if err := fsys.SetReceivedUUID(id, u); err != nil {
			return nil, err
		}
		return one(fsys.Subvol(id))
	case OpSubvolSnapshot:
		return snapshot(ctx, fsys, p, path.Clean("/"+req.Dest), req, changed)
	}
	// create and delete: a name in a directory.
	if p == "/" {
		return nil, badArg("the path names the top level: give one below it")
	}
	dir, name, err := fsys.ResolveParent(p)
	if err != nil {
		return nil, err
	}
	if req.Op == OpSubvolCreate {
		info, err := fsys.CreateSubvol(dir, name)
		if err == nil {
			changed()
		}
		return one(info, err)
	}
	info, err := fsys.DeleteSubvol(dir, name)
	if err != nil {
		return nil, err
	}
	changed()
	info.Path = p // gone from the tree: the path it had
	if req.Wait {
		if err := waitReaped(ctx, fsys, info); err != nil {
			return nil, fmt.Errorf("deleted, but waiting for its space to be freed: %w", err)
		}
	}
	return &SubvolResult{Subvols: []sfs.SubvolInfo{info}}, nil
}

// snapshot makes a snapshot of the subvolume rooted at src as dst.
func snapshot(ctx context.Context, fsys *sfs.FS, src, dst string, req Request, changed func()) (*SubvolResult, error) {
	if dst == "/" {
		return nil, badArg("the dest names the top level: give a new path below it")
	}
	a, err := fsys.Resolve(src)
	if err != nil {
		return nil, err
	}
	if a.Ino == sfs.RootIno {
		return nil, sfs.ErrSnapTopLevel
	}
	if !format.IsSubvolRoot(a.Ino) {
		return nil, sfs.ErrNotSubvol
	}
	dir, name, err := fsys.ResolveParent(dst)
	if err != nil {
		return nil, fmt.Errorf("dest %s: %w", dst, err)
	}
	info, err := fsys.CreateSnapshot(a.Ino, dir, name, req.ReadOnly)
	if err != nil {
		return nil, err
	}
	changed()
	if req.Wait {
		if err := waitFilled(ctx, fsys, info.ID); err != nil {
			return nil, fmt.Errorf("made, but waiting for its fill to end: %w", err)
		}
		if info, err = fsys.Subvol(info.ID); err != nil {
			return nil, err
		}
	}
	return &SubvolResult{Subvols: []sfs.SubvolInfo{info}}, nil
}

// waitFilled waits until snapshot id's fill has ended (or ctx ends, or
// the snapshot is gone).
func waitFilled(ctx context.Context, fsys *sfs.FS, id uint64) error {
	t := time.NewTicker(waitPoll)
	defer t.Stop()
	for {
		cur, err := fsys.Subvol(id)
		if err != nil {
			return err
		}
		if !cur.Filling {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// subvolAt returns the id of the subvolume whose root is at p.
func subvolAt(fsys *sfs.FS, p string) (uint64, error) {
	a, err := fsys.Resolve(p)
	if err != nil {
		return 0, err
	}
	if !format.IsSubvolRoot(a.Ino) {
		return 0, sfs.ErrNotSubvol
	}
	return sfs.SubvolOf(a.Ino), nil
}

// findSubvols answers find from the uuid tree, with each subvolume found
// described (one deleted meanwhile is left out of Subvols).
func findSubvols(fsys *sfs.FS, u format.UUID) (*SubvolResult, error) {
	own, received, err := fsys.FindSubvols(u)
	if err != nil {
		return nil, err
	}
	res := &SubvolResult{Subvols: []sfs.SubvolInfo{}, Own: own, Received: received}
	seen := map[uint64]bool{}
	for _, id := range append(append([]uint64(nil), own...), received...) {
		if seen[id] {
			continue
		}
		seen[id] = true
		info, err := fsys.Subvol(id)
		if errors.Is(err, sfs.ErrNoSuchSubvol) {
			continue
		}
		if err != nil {
			return nil, err
		}
		res.Subvols = append(res.Subvols, info)
	}
	return res, nil
}

// waitReaped waits until the background reaper has freed the subvolume
// info describes (it leaves the list), or ctx ends. A reaper stopped by
// damage (the mount's log says so) leaves it for the next mount: the
// wait then lasts until ctx ends.
func waitReaped(ctx context.Context, fsys *sfs.FS, info sfs.SubvolInfo) error {
	t := time.NewTicker(waitPoll)
	defer t.Stop()
	for {
		cur, err := fsys.Subvol(info.ID)
		switch {
		case errors.Is(err, sfs.ErrNoSuchSubvol):
			return nil
		case err != nil:
			return err
		case cur.UUID != info.UUID:
			return nil // its id was reused after it went
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func nonNil(infos []sfs.SubvolInfo) []sfs.SubvolInfo {
	if infos == nil {
		return []sfs.SubvolInfo{}
	}
	return infos
}

// subvol serves a subvolume operation on the mount. A create or delete
// drops the kernel's cache of the mount as soon as it is done (before a
// delete's wait): the kernel may hold names that changed beneath it.
func (s *Server) subvol(ctx context.Context, req Request) Response {
	res, err := subvolCall(ctx, s.fsys, req, func() { s.fsys.ExternalChange("subvol") })
	if err != nil {
		if errors.Is(err, ErrBadArgument) {
			return errResponse(CodeBadRequest, err.Error())
		}
		return errResponse(CodeFailed, err.Error())
	}
	return Response{Subvol: res}
}

// Subvol sends the subvolume operation req (Op one of SubvolOps) and
// returns its answer; a refusal is a *RemoteError (CodeBadRequest for a
// malformed request, CodeFailed for the filesystem's refusal).
func (c *Client) Subvol(ctx context.Context, req Request) (*SubvolResult, error) {
	r, err := c.call(ctx, req)
	if err != nil {
		return nil, err
	}
	if r.Subvol == nil {
		return nil, fmt.Errorf("control socket %s: %s answer without a result", c.path, req.Op)
	}
	return r.Subvol, nil
}

// ErrNotInMount is wrapped by Locate's error when the path is not inside
// a mount a scrubd control socket serves.
var ErrNotInMount = errors.New("not inside a scrubd mount")

// Locate finds the scrubd mount holding p (which need not exist: a path
// to create) and returns its mountpoint, as its server names it, and p
// as a path of the mounted filesystem ("/" for the mountpoint). The
// directories above p's last element have their symlinks resolved; the
// nearest mountpoint at or above p decides: if no scrubd control socket
// serves it, p is not in a scrubd mount (a path inside another
// filesystem mounted inside a scrubd mount is not in it either).
func Locate(p string) (mountpoint, rel string, err error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", "", err
	}
	if dir, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		abs = filepath.Join(dir, filepath.Base(abs))
	}
	for d := abs; ; d = filepath.Dir(d) {
		if fi, err := os.Lstat(d); err == nil && fi.IsDir() && isMountpoint(d) {
			mnt, ok := Discover(d)
			if !ok {
				return "", "", fmt.Errorf("%s: %w (the mount holding it, %s, has no live scrubd control socket; for an image file use --image)", p, ErrNotInMount, d)
			}
			r, err := filepath.Rel(d, abs)
			if err != nil {
				return "", "", err
			}
			return mnt, path.Clean("/" + filepath.ToSlash(r)), nil
		}
		if d == filepath.Dir(d) {
			return "", "", fmt.Errorf("%s: %w", p, ErrNotInMount)
		}
	}
}
