package inject

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"syscall"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// Damage to one data block of a file: the block holding a byte of it, as
// the committed generation maps it. Its checksum in the csum tree is left
// as it was, so a data scrub (and any read of the block) finds the
// mismatch: data_checksum, naming the file, the offset and the disk block.
// The path is resolved in the snapshot itself, not through a mounted
// filesystem, so the same code serves an image and a frozen mount.

func planFile(s *engine.Snapshot, dev disk.Device, opts Options) (*Result, []byte, error) {
	if !slices.Contains(FileKinds, opts.Kind) {
		return nil, nil, fmt.Errorf("%w: %s does not apply to file data (file kinds: %v)", ErrRefused, opts.Kind, FileKinds)
	}
	if opts.Level != nil {
		return nil, nil, fmt.Errorf("%w: file data is not a tree: it has no levels", ErrRefused)
	}
	p := path.Clean("/" + opts.File)
	ino, in, err := resolve(s, p)
	if err != nil {
		return nil, nil, err
	}
	if in.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil, nil, fmt.Errorf("%w: %s is not a regular file", ErrRefused, p)
	}
	if opts.Offset >= in.Size {
		return nil, nil, fmt.Errorf("%w: offset %d is past the end of %s (%d bytes)", ErrRefused, opts.Offset, p, in.Size)
	}
	fb := opts.Offset / format.BlockSize
	etr, ok := s.Tree(format.TreeExtent)
	if !ok {
		return nil, nil, fmt.Errorf("%w: the image has no extent tree", ErrRefused)
	}
	k, v, ok, err := etr.Last(format.FileExtentKey(ino, fb))
	if err != nil {
		return nil, nil, fmt.Errorf("%s (inode %d) block %d: %w", p, ino, fb, err)
	}
	var fe format.FileExtent
	if ok && k.Obj == ino && k.Type == format.TypeFileExtent {
		if fe, err = format.DecodeFileExtent(v); err != nil {
			return nil, nil, fmt.Errorf("%s (inode %d) extent item %s: %w", p, ino, k, err)
		}
	}
	if fe.Count == 0 || k.Off+fe.Count <= fb {
		return nil, nil, fmt.Errorf("%w: offset %d of %s is in a hole: no data block to damage", ErrRefused, opts.Offset, p)
	}
	at := fe.Disk(k.Off, fb)
	if uint64(at) >= s.Super().TotalBlocks {
		return nil, nil, fmt.Errorf("%s (inode %d) block %d maps to block %d, beyond the filesystem: %w", p, ino, fb, at, format.ErrCorrupt)
	}
	if ctr, ok := s.Tree(format.TreeCsum); ok {
		if _, ok, err := ctr.Get(format.CsumKey(fe.Start), nil); err == nil && !ok {
			return nil, nil, fmt.Errorf("%w: the extent at block %d holding offset %d of %s has no checksums: damage to it would go unseen", ErrRefused, fe.Start, opts.Offset, p)
		}
	}
	blk := make([]byte, format.BlockSize)
	if _, err := dev.ReadAt(blk, int64(at)*format.BlockSize); err != nil {
		return nil, nil, fmt.Errorf("read data block %d of %s: %w", at, p, err)
	}
	off := fb * format.BlockSize
	res := &Result{Version: 1, Tree: format.OwnerData.String(), Kind: opts.Kind, Block: uint64(at), Generation: uint64(s.Gen()),
		File: &engine.FileRef{Path: p, Inode: ino, Offset: off, DiskBlock: at}}
	switch opts.Kind {
	case Bitflip:
		r := rng(opts.Seed)
		var flips []int // bit numbers in the block, distinct
		for n := 1 + r.IntN(3); len(flips) < n; {
			if b := r.IntN(8 * format.BlockSize); !slices.Contains(flips, b) {
				flips = append(flips, b)
			}
		}
		var ds []string
		for _, b := range flips {
			blk[b/8] ^= 1 << (b % 8)
			ds = append(ds, fmt.Sprintf("flipped bit %#02x at offset %d", 1<<(b%8), b/8))
		}
		res.Detail = strings.Join(ds, "; ") + " of the block, checksum left as it was"
	case Zero:
		if !slices.ContainsFunc(blk, func(c byte) bool { return c != 0 }) {
			return nil, nil, fmt.Errorf("%w: the block at offset %d of %s holds only zeros already: zeroing it changes nothing", ErrRefused, off, p)
		}
		clear(blk)
		res.Detail = "zeroed the block, checksum left as it was"
	}
	return res, blk, nil
}

// resolve walks path p (absolute, clean) from the root directory in
// snapshot s, symlinks not followed, and returns the inode it names.
func resolve(s *engine.Snapshot, p string) (uint64, format.InodeItem, error) {
	itr, ok1 := s.Tree(format.TreeInode)
	dtr, ok2 := s.Tree(format.TreeDir)
	if !ok1 || !ok2 {
		return 0, format.InodeItem{}, fmt.Errorf("%w: the image has no inode or directory tree", ErrRefused)
	}
	ino := uint64(fs.RootIno)
	in, err := inodeOf(itr, ino)
	if err != nil {
		return 0, format.InodeItem{}, err
	}
	walked := ""
	for _, name := range strings.Split(p, "/") {
		if name == "" {
			continue
		}
		if in.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			return 0, format.InodeItem{}, fmt.Errorf("%w: %s: %s is not a directory", ErrRefused, p, path.Clean("/"+walked))
		}
		child, found, err := lookupName(dtr, ino, name)
		if err != nil {
			return 0, format.InodeItem{}, fmt.Errorf("%s: directory %s (inode %d): %w", p, path.Clean("/"+walked), ino, err)
		}
		if !found {
			return 0, format.InodeItem{}, fmt.Errorf("%w: %s: no such file or directory", ErrRefused, p)
		}
		walked += "/" + name
		if in, err = inodeOf(itr, child); err != nil {
			return 0, format.InodeItem{}, fmt.Errorf("%s: %w", walked, err)
		}
		ino = child
	}
	return ino, in, nil
}

// lookupName finds the entry called name in directory dir. It reads the
// directory's entries in key order rather than by name hash: the hash is
// the filesystem's business, and a directory scan costs a tool nothing.
func lookupName(dtr *eb.Tree, dir uint64, name string) (uint64, bool, error) {
	var ino uint64
	var derr error
	err := dtr.Ascend(format.Key{Obj: dir, Type: format.TypeDirEntry}, func(k format.Key, v []byte) bool {
		if k.Obj != dir || k.Type != format.TypeDirEntry {
			return false
		}
		de, err := format.DecodeDirEntry(v)
		if err != nil {
			derr = fmt.Errorf("entry %s: %w", k, err)
			return false
		}
		if de.Name == name {
			ino = de.Ino
			return false
		}
		return true
	})
	if err == nil {
		err = derr
	}
	return ino, ino != 0, err
}

// inodeOf reads inode ino's item.
func inodeOf(itr *eb.Tree, ino uint64) (format.InodeItem, error) {
	v, ok, err := itr.Get(format.InodeKey(ino), nil)
	if err != nil {
		return format.InodeItem{}, fmt.Errorf("inode %d: %w", ino, err)
	}
	if !ok {
		return format.InodeItem{}, fmt.Errorf("inode %d has no inode item: %w", ino, format.ErrCorrupt)
	}
	return format.DecodeInodeItem(v)
}
