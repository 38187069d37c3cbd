package repair

import (
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The checksum tree's checker: every data extent must have one item at
// its start holding a checksum per block, and every item must start a
// data extent. (Whether the data matches its checksums is the data
// scrub's part: --data.)
var csumCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeCsum: func(st *checkState, _ format.BlockNr, k format.Key, val []byte) {
			if k.Type != format.TypeCsum {
				return
			}
			if _, err := format.DecodeCsums(val); err != nil {
				st.Reportf(engine.ErrItemBad, format.TreeCsum, format.BlockNr(k.Obj), "checksum item %s: %v", k, err)
				return
			}
			st.csums.add(csumRec{format.BlockNr(k.Obj), uint64(len(val) / 4)})
		},
	},
	cross: checkCsums,
}

func checkCsums(st *checkState) {
	// Like every comparison of the data's structures, it waits for a
	// clean walk of the extent tree.
	if st.Broken(format.TreeExtent) || st.Broken(format.TreeCsum) || st.Broken(format.TreeAlloc) {
		return
	}
	// Both come by start; of two items of one start the later counts.
	csums := newSeeker(st.csums, func(c csumRec) format.BlockNr { return c.start }, cmpBlock)
	st.allocs.all(func(a allocRec) {
		if a.item.Flags != format.ExtentData {
			return
		}
		if c, ok := csums.last(a.start); !ok || c.n != a.n {
			st.Reportf(engine.ErrCsumMissing, format.TreeCsum, a.start, "data extent %d+%d has no checksum item of %d entries", a.start, a.n, a.n)
		}
	})
	at := st.allocSeeker()
	distinct(st.csums, func(c csumRec) format.BlockNr { return c.start }, cmpBlock, func(c csumRec) {
		if a, ok := at.last(c.start); !ok || a.item.Flags != format.ExtentData {
			st.Reportf(engine.ErrCsumOrphan, format.TreeCsum, c.start, "checksum item for block %d, which starts no data extent", c.start)
		}
	})
}
