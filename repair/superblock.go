package repair

import (
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The superblock's checker: every copy must be a valid superblock of this
// filesystem, of the generation in use, and equal to the one in use. (The
// free-block counter is compared with the free-space tree by free.go.)
var superblockCheck = &checker{before: checkSupers}

func checkSupers(st *checkState) {
	s := st.Snapshot()
	use := s.Super()
	s.ReadSuperCopies(func(at format.BlockNr, sb *format.Super, err error) {
		switch {
		case err != nil:
			st.Reportf(engine.ErrSuperCopyBad, format.OwnerSuper, at, "%v", err)
		case sb.FSID != use.FSID:
			st.Reportf(engine.ErrSuperCopyBad, format.OwnerSuper, at, "copy belongs to filesystem %s", sb.FSID)
		case sb.Gen < s.Gen():
			st.Reportf(engine.ErrSuperCopyStale, format.OwnerSuper, at, "copy has generation %d, filesystem is at %d", sb.Gen, s.Gen())
		case sb.Gen == s.Gen():
			if f := use.Differs(sb); f != "" {
				st.Reportf(engine.ErrSuperCopyField, format.OwnerSuper, at, "copy of generation %d differs from the one in use in its %s", sb.Gen, f)
			}
		}
	})
}
