package repair

import (
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The deleted tree's checker: it lists inodes unlinked while still open,
// whose link count is then zero (inode.go compares them), and exactly
// those: the unlink that drops an inode's last name adds its entry in the
// same transaction, its last close (or a link back in) removes it. An
// inode with no links and no entry would never be freed; an entry for an
// inode with links would not free it (the deleted_inodes pass frees only
// an inode with none), so it is reported, not feared.
var deletedCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeDeleted: func(st *checkState, _ format.BlockNr, k format.Key, _ []byte) {
			st.deleted.add(k.Obj)
		},
	},
	cross: checkDeletedList,
}

func checkDeletedList(st *checkState) {
	if st.inodes.len() == 0 || st.Broken(format.TreeInode) || st.Broken(format.TreeDeleted) {
		return
	}
	deleted := newSeeker(st.sortedDeleted(), ident, cmpUint)
	distinct(st.inodes, inodeNr, cmpUint, func(in nsInode) {
		if st.halfFreed(in.ino) || format.IsSubvolRoot(in.ino) {
			return // a subvolume being deleted; a root is never listed (subvol.go)
		}
		if in.nlink == 0 && deleted.seek(in.ino) == 0 {
			st.Reportf(engine.ErrDeletedList, format.TreeDeleted, 0, "inode %d has no links and is not on the deleted list: it would never be freed", in.ino)
		}
	})
	inodes := newSeeker(st.inodes, inodeNr, cmpUint)
	distinct(st.deleted, ident, cmpUint, func(ino uint64) {
		if in, ok := inodes.last(ino); ok && in.nlink != 0 {
			st.Reportf(engine.ErrDeletedList, format.TreeDeleted, 0, "inode %d is on the deleted list with %d links", ino, in.nlink)
		}
	})
}
