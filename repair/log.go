package repair

import (
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The fsync log's checker, offline only: on a mounted image fsyncs append
// to the chain while it is read, and a block being written is no damage.
//
// It walks the chain as the mount's replay would, and reports the blocks
// that replay would stop at although they are part of the chain: a block
// carrying the chain's tag and the expected sequence number that fails any
// other check (its checksum, its header, its chain pointer, its records).
// A block of another tag or sequence, or without the log magic, is the
// chain's normal end (the next block, not written yet). The head block,
// when it holds a log block of this filesystem, must also be a well-formed
// one (whatever its chain). A crash during an fsync can tear the chain's
// last block the same way: the detail says so, and the next mount drops
// that unacknowledged fsync and restarts the chain.
var logCheck = &checker{before: func(st *checkState) {
	if st.Snapshot().Offline() {
		checkLog(st)
	}
}}

func checkLog(st *checkState) {
	s := st.Snapshot()
	sb := s.Super()
	total := sb.TotalBlocks
	start, seq, tag := sb.LogChain()
	buf := make([]byte, format.BlockSize)
	read := func(at format.BlockNr) []byte {
		if uint64(at) >= total {
			st.Reportf(engine.ErrLogBlockBad, format.TreeLog, at, "log block number %d is beyond the filesystem's %d blocks", at, total)
			return nil
		}
		if err := s.ReadRaw(at, buf); err != nil {
			st.Reportf(engine.ErrLogBlockBad, format.TreeLog, at, "unreadable: %v", err)
			return nil
		}
		return buf
	}
	chain := walkLogChain(st, start, seq, tag, read)
	if head := sb.Log.Block; head != 0 && head != start && !chain[head] && read(head) != nil {
		// Zeros (no fsync since mkfs) or any well-formed log block of
		// some chain are fine; a log block of ours that fails is not.
		n := format.Node(buf)
		if format.IsLogBlock(n) && n.FSID() == sb.FSID {
			if err := format.VerifyLogBlock(buf, sb.FSID, head, n.Gen(), n.LogSeq(), total); err != nil {
				st.Reportf(engine.ErrLogBlockBad, format.TreeLog, head, "log head block: %v (a crash during an fsync can leave it torn; the next fsync rewrites it)", err)
			}
		}
	}
}

// walkLogChain is checkLog's walk of the chain from start; it returns the
// blocks that verified as part of it.
func walkLogChain(st *checkState, start format.BlockNr, seq uint32, tag format.Gen, read func(format.BlockNr) []byte) map[format.BlockNr]bool {
	sb := st.Snapshot().Super()
	chain := map[format.BlockNr]bool{}
	for at := start; at != 0; seq++ {
		if chain[at] {
			st.Reportf(engine.ErrLogBlockBad, format.TreeLog, at, "the log chain loops back to block %d", at)
			return chain
		}
		buf := read(at)
		if buf == nil {
			return chain
		}
		n := format.Node(buf)
		if verr := format.VerifyLogBlock(buf, sb.FSID, at, tag, seq, sb.TotalBlocks); verr != nil {
			// Ours (the chain's tag and sequence, our filesystem) but
			// failing: damage. Anything else: the chain's end.
			if format.IsLogBlock(n) && n.FSID() == sb.FSID && n.Gen() == tag && n.LogSeq() == seq {
				st.Reportf(engine.ErrLogBlockBad, format.TreeLog, at, "log block %d of the chain: %v (the records from here on cannot be replayed; a crash during an fsync leaves the same)", seq, verr)
			}
			return chain
		}
		chain[at] = true
		for i := 1; i < n.NrItems(); i++ {
			if n.Key(i).Type != format.TypeLogRecord {
				st.Reportf(engine.ErrLogBlockBad, format.TreeLog, at, "log block %d of the chain: item %d is not a log record", seq, i)
				return chain
			}
			if _, _, _, err := format.DecodeLogRecord(n.Value(i)); err != nil {
				st.Reportf(engine.ErrLogBlockBad, format.TreeLog, at, "log block %d of the chain: item %d: %v", seq, i, err)
				return chain
			}
		}
		at = n.LogNext()
	}
	return chain
}
