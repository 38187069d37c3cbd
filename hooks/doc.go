// Package hooks provides typed live-update hook chains: the engine publishes
// every change to its trees on a Chain, and online repair subscribes to keep
// a shadow index current while it rebuilds a structure. It follows the
// xfs_hooks of Linux (a notifier chain behind a static key).
//
// # Guarantees
//
//   - Cheap when nobody listens. A Chain with no hooks costs one atomic load
//     and a nil check per Call, inlined at the call site (about 1 ns), and
//     no allocation. Active lets a publisher skip building an expensive
//     event. With hooks, a Call does not allocate either.
//   - Order. Call runs the registered functions synchronously, in the
//     caller's goroutine, in registration order. Events published by one
//     goroutine reach each hook in the order they were published; events
//     from different goroutines are not ordered with respect to each other,
//     and hooks may run concurrently, one per publishing goroutine, so a
//     hook called from several goroutines must do its own locking.
//   - Exactly once. A hook registered before a Call starts and not
//     unregistered until after it returns is called exactly once for it.
//     A Call that starts after Register returns includes the new hook.
//     A Call running concurrently with Register or Unregister may or may
//     not include that hook, and calls it at most once.
//   - Unregister waits. When Unregister returns, the hook's function is not
//     running in any goroutine and will never be called again, even by
//     Calls that were already in progress; so the subscriber may tear down
//     what the hook writes to. Consequently a hook must not unregister
//     itself from inside its own call.
//   - Concurrency. Call, Register, Unregister, and Active are safe for
//     concurrent use. The zero Chain is ready to use and must not be copied
//     after first use.
//
// Hooks run in the publisher's goroutine, inside whatever locks the
// publisher holds: they must be short, must not block, and must not call
// back into the publisher in ways that take those locks.
package hooks
