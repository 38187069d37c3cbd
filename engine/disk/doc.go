// Package disk is the block device layer: every byte scrubd reads or writes
// goes through a [Device].
//
// # Guarantees
//
// All devices in this package promise the same things:
//
//   - A Device has a fixed [Device.Size]. An access with a negative offset,
//     or one that would reach past Size, fails with an error wrapping
//     [ErrOutOfRange] before any I/O is done; it never panics and never
//     grows the device. A zero-length access at offset Size is allowed.
//   - ReadAt and WriteAt either transfer all of p and return len(p), nil,
//     or return an error. A transfer the operating system cut short is
//     reported as an error wrapping [ErrShortIO]. Errors name the offset
//     and length.
//   - WriteAt never keeps a reference to p.
//   - ReadAt calls may run concurrently with each other and with WriteAt
//     calls to other offsets. Overlapping concurrent writes, or a read
//     overlapping a concurrent write, see some interleaving; ordering them
//     is the caller's job.
//   - After Flush returns nil, every WriteAt that completed before Flush was
//     called survives a power loss. Nothing is promised about writes that
//     were not followed by a successful Flush: any of them may be lost or
//     torn at a [SectorSize] boundary. [Recorder] simulates exactly that.
//   - After Close, operations return an error wrapping [ErrClosed].
//
// # Devices
//
//   - [File] is a regular image file or a block device, using pread and
//     pwrite; Flush is fdatasync. [Open] opens an existing one, [Create]
//     makes a sparse image file of an exact size and refuses, with
//     [ErrExists], to overwrite anything that holds data unless forced.
//   - [Mem] is an in-memory device for tests.
//   - [Recorder] is an in-memory device that logs every write and flush so a
//     test can ask what the disk could hold after a crash at any flush
//     ([Recorder.CrashImage]).
//   - [Faulty] wraps any Device to fail chosen writes, flushes or reads and
//     to count I/O.
package disk
