package repair

import "github.com/scrubd/scrubd/engine/format"

// The deleted tree's checker: it lists inodes unlinked while still open,
// whose link count is then zero (inode.go compares them).
var deletedCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeDeleted: func(st *checkState, _ format.BlockNr, k format.Key, _ []byte) {
			st.deleted[k.Obj] = true
		},
	},
}
