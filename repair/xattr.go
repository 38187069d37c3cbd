package repair

import (
	"fmt"
	"slices"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The xattr tree's checker (format/xattr.go): every item must be an
// extended attribute that decodes (lengths bounded: a name of 1..255
// bytes in a namespace the filesystem stores, name and value within one
// item), sit under the hash of its name, and be the only one of its name
// on its inode; and every inode with attributes must exist (an attribute
// of a freed inode is an orphan: the free drops them in its transaction,
// so one left behind is damage, or an inode the inode repair could not
// restore). A large value's chunks (format 1.6) must all be there, each
// of its length, and none without its head (xattr_chunk). The tree is
// optional: an image where no attribute was ever set has none, and
// nothing is checked.

// xattrState is what the walk of the xattr tree collects.
type xattrState struct {
	inos    *recArr[uint64] // the inodes with attributes, ascending
	lastIno uint64          // the last one added to inos, when any is
	// The names met under the last (inode, hash), to find a name stored
	// twice (items come in key order: one hash's items are adjacent).
	curIno, curHash uint64
	names           []string
	started         bool
	// The large values of inode largeIno met so far, whose chunks follow
	// all of its heads in key order.
	largeIno uint64
	large    []largeHead
}

// largeHead is a large value's head item, and the next chunk expected.
type largeHead struct {
	key         format.Key
	name        string
	total, next int
	root        format.BlockNr
}

var xattrCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeXattr: checkXattrItem,
	},
	cross: checkXattrOrphans,
}

// xattrItemProblem says what is wrong with an item of the xattr tree
// (its finding id and why), or returns 0 and the decoded attribute. The
// repair keeps exactly the items the checker accepts alone.
func xattrItemProblem(k format.Key, val []byte) (engine.ErrorID, string, format.XattrItem) {
	if k.Type == format.TypeXattrChunk {
		// Alone, a chunk is an index and some bytes; the join with its
		// head checks the rest.
		if _, i := format.XattrChunkHead(k); i == 0 || len(val) == 0 || len(val) > format.MaxValueSize {
			return engine.ErrXattrChunk, fmt.Sprintf("chunk %d of %d bytes", i, len(val)), format.XattrItem{}
		}
		return 0, "", format.XattrItem{}
	}
	if k.Type != format.TypeXattr {
		return engine.ErrXattrKey, "not an xattr item", format.XattrItem{}
	}
	x, err := format.DecodeXattrItem(val)
	if err != nil {
		return engine.ErrItemBad, err.Error(), format.XattrItem{}
	}
	if !format.XattrNamespaceOK(x.Name) {
		return engine.ErrXattrKey, "name " + quote(x.Name) + " in no namespace the filesystem stores", x
	}
	if format.XattrHash(x.Name) != k.Off {
		return engine.ErrXattrKey, "name " + quote(x.Name) + " does not hash to the key", x
	}
	return 0, "", x
}

func quote(s string) string {
	b := []byte{'"'}
	for _, c := range []byte(s) {
		if c < 0x20 || c >= 0x7f || c == '"' {
			b = append(b, '?')
		} else {
			b = append(b, c)
		}
	}
	return string(append(b, '"'))
}

func checkXattrItem(st *checkState, root format.BlockNr, k format.Key, val []byte) {
	xs := &st.xattr
	if k.Obj != xs.largeIno {
		checkXattrChunksDone(st)
		xs.largeIno = k.Obj
	}
	id, why, x := xattrItemProblem(k, val)
	if id != 0 {
		st.Reportf(id, format.TreeXattr, root, "xattr item %s: %s", k, why)
		return
	}
	if k.Type == format.TypeXattrChunk {
		checkXattrChunk(st, root, k, len(val))
		return
	}
	if x.Large() {
		xs.large = append(xs.large, largeHead{key: k, name: x.Name, total: x.Total, next: 1, root: root})
	}
	if xs.inos == nil {
		xs.inos = newRecArr(st, "xattr inodes", u64Codec)
	}
	if xs.inos.len() == 0 || k.Obj != xs.lastIno {
		xs.inos.add(k.Obj)
	}
	xs.lastIno = k.Obj
	if k.Obj != xs.curIno || k.Off != xs.curHash || !xs.started {
		xs.curIno, xs.curHash, xs.names, xs.started = k.Obj, k.Off, xs.names[:0], true
	}
	if slices.Contains(xs.names, x.Name) {
		st.Reportf(engine.ErrXattrKey, format.TreeXattr, root, "xattr item %s: inode %d has attribute %s twice", k, k.Obj, quote(x.Name))
		return
	}
	xs.names = append(xs.names, x.Name)
}

// checkXattrChunk checks a chunk against its head, met before it.
func checkXattrChunk(st *checkState, root format.BlockNr, k format.Key, n int) {
	xs := &st.xattr
	hk, i := format.XattrChunkHead(k)
	for j := range xs.large {
		h := &xs.large[j]
		if h.key != hk {
			continue
		}
		chunks := format.XattrChunks(h.name, h.total)
		if _, want := format.XattrChunkSpan(h.name, h.total, i); i > chunks || n != want {
			st.Reportf(engine.ErrXattrChunk, format.TreeXattr, root, "xattr chunk %s: attribute %s of inode %d has %d chunks, this is %d of %d bytes", k, quote(h.name), k.Obj, chunks, i, n)
			return
		}
		if i > h.next {
			st.Reportf(engine.ErrXattrChunk, format.TreeXattr, h.root, "attribute %s of inode %d: chunks %d to %d of %d missing", quote(h.name), k.Obj, h.next, i-1, chunks)
		}
		h.next = max(h.next, i+1)
		return
	}
	st.Reportf(engine.ErrXattrChunk, format.TreeXattr, root, "xattr chunk %s: no attribute of inode %d owns it", k, k.Obj)
}

// checkXattrChunksDone reports the large values of the last inode whose
// last chunks never came.
func checkXattrChunksDone(st *checkState) {
	xs := &st.xattr
	for _, h := range xs.large {
		if chunks := format.XattrChunks(h.name, h.total); h.next <= chunks {
			st.Reportf(engine.ErrXattrChunk, format.TreeXattr, h.root, "attribute %s of inode %d: chunks %d to %d of %d missing", quote(h.name), h.key.Obj, h.next, chunks, chunks)
		}
	}
	xs.large = xs.large[:0]
}

// checkXattrOrphans reports attributes of inodes that do not exist, when
// both trees were walked whole: one look-up in the inode tree per inode
// with attributes (few inodes have any).
func checkXattrOrphans(st *checkState) {
	xs := &st.xattr
	if !st.Broken(format.TreeXattr) {
		checkXattrChunksDone(st)
	}
	if xs.inos == nil || xs.inos.len() == 0 || st.Broken(format.TreeInode) || st.Broken(format.TreeXattr) {
		return
	}
	it, ok := st.Snapshot().Tree(format.TreeInode)
	if !ok {
		return
	}
	var prev uint64
	xs.inos.all(func(ino uint64) {
		if ino == prev {
			return
		}
		prev = ino
		found, err := it.Lookup(format.InodeKey(ino), func([]byte) {})
		switch {
		case err != nil:
			st.fail(fmt.Errorf("look inode %d up: %w", ino, err)) // the walk read it whole: not damage
		case !found:
			st.Reportf(engine.ErrXattrOrphan, format.TreeXattr, 0, "extended attributes of inode %d, which does not exist", ino)
		}
	})
}
