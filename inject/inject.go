package inject

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// Fault injection: exact damage to one block — of a metadata tree, one
// superblock copy (super.go) or one data block of a file (file.go) — so
// tests, the demo and operators rehearsing a recovery can see what scrub
// finds and what repair fixes. Quarantined here: the engine itself never
// damages blocks.

// Injection kinds.
const (
	Bitflip    = "bitflip"     // flip bits in a block (checksum mismatch)
	Zero       = "zero"        // zero a whole block
	DropRecord = "drop-record" // remove one record, checksum kept valid
	WrongOwner = "wrong-owner" // another owner: an rmap or file extent record's, or the block header's
	StaleGen   = "stale-gen"   // a block claiming an older generation
)

// Kinds lists the kinds in a stable order.
var Kinds = []string{Bitflip, Zero, DropRecord, WrongOwner, StaleGen}

// SuperKinds are the kinds that apply to a superblock copy (it has no
// records to drop), FileKinds those that apply to file data.
var (
	SuperKinds = []string{Bitflip, Zero, WrongOwner, StaleGen}
	FileKinds  = []string{Bitflip, Zero}
)

// Superblock is the name the superblock copies go by as an injection
// target (Options.Tree format.OwnerSuper).
const Superblock = "superblock"

// Options say what damage to do.
type Options struct {
	// Tree is the tree to damage; format.OwnerSuper damages a superblock
	// copy instead. Zero with File.
	Tree format.TreeID
	Kind string
	Seed uint64
	// Level, when set, damages a node of that level only: 0 a leaf, 1 the
	// interior nodes just above the leaves, and so on. Nil lets the seed
	// choose among every node the kind can damage. Trees only.
	Level *int
	// Copy, with Tree format.OwnerSuper, damages the superblock copy at
	// that block (one of format.SuperBlocks); nil lets the seed choose.
	Copy *format.BlockNr
	// File, when set, damages the data block holding byte Offset of the
	// regular file at that path in the filesystem ("/dir/a.txt"; symlinks
	// are not followed) instead of a tree.
	File   string
	Offset uint64
}

// Result says what was done.
type Result struct {
	Version    int    `json:"version"` // of this document (1)
	Tree       string `json:"tree"`
	Kind       string `json:"kind"`
	Block      uint64 `json:"block"`
	Level      int    `json:"level"`
	Generation uint64 `json:"generation"`
	Detail     string `json:"detail"`
	// File, for damage to file data, names the file, the offset of the
	// damaged block in it (the requested offset rounded down to a block)
	// and its disk block (also Block): what a data scrub's finding names.
	File *engine.FileRef `json:"file,omitempty"`
}

// ErrRefused is wrapped by errors for requests that cannot be carried out.
var ErrRefused = errors.New("cannot inject")

// Offline damages an unmounted image.
func Offline(path string, opts Options) (*Result, error) {
	e, err := engine.OpenPath(path, engine.Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	s := e.Pin()
	res, blk, err := plan(s, e.Device(), opts)
	s.Release()
	e.Close()
	if err != nil {
		return nil, err
	}
	dev, err := disk.Open(path, false)
	if err != nil {
		return nil, err
	}
	defer dev.Close()
	if _, err := dev.WriteAt(blk, int64(res.Block)*format.BlockSize); err != nil {
		return nil, err
	}
	return res, dev.Flush()
}

// Online damages committed metadata or file data of a mounted engine:
// with the writers frozen right after a commit (so the block it damages
// is one the filesystem goes on using, not one a running transaction has
// already replaced), it writes the device directly and drops the
// engine's cached copy. (File data is never cached; a superblock copy
// stays damaged until the next commit, which writes every copy anew.)
func Online(e *engine.Engine, opts Options) (*Result, error) {
	var res *Result
	err := e.Freeze(func(s *engine.Snapshot) error {
		r, blk, err := plan(s, e.Device(), opts)
		if err != nil {
			return err
		}
		if _, err := e.Device().WriteAt(blk, int64(r.Block)*format.BlockSize); err != nil {
			return err
		}
		if err := e.Device().Flush(); err != nil {
			return err
		}
		e.DropCached(format.BlockNr(r.Block))
		if opts.Tree == format.TreeFree {
			e.DamagedFreeTree()
		}
		res = r
		return nil
	})
	return res, err
}

// plan picks the block to damage in snapshot s and returns it damaged as
// asked, to be written at the result's Block.
func plan(s *engine.Snapshot, dev disk.Device, opts Options) (*Result, []byte, error) {
	if !slices.Contains(Kinds, opts.Kind) {
		return nil, nil, fmt.Errorf("%w: unknown kind %q (kinds: %v)", ErrRefused, opts.Kind, Kinds)
	}
	if opts.Copy != nil && (opts.File != "" || opts.Tree != format.OwnerSuper) {
		return nil, nil, fmt.Errorf("%w: a superblock copy is named, but the target is not the superblock", ErrRefused)
	}
	switch {
	case opts.File != "":
		if opts.Tree != 0 && opts.Tree != format.OwnerData {
			return nil, nil, fmt.Errorf("%w: a file or a tree (%s), not both", ErrRefused, opts.Tree)
		}
		return planFile(s, dev, opts)
	case opts.Tree == format.OwnerSuper:
		return planSuper(s, dev, opts)
	}
	return planTree(s, dev, opts)
}

// rng is the seeded source every choice of an injection draws from: the
// same seed on the same image makes the same damage.
func rng(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x5eed)) }

// planTree picks a block of the tree in snapshot s and returns it damaged
// as asked.
func planTree(s *engine.Snapshot, dev disk.Device, opts Options) (*Result, []byte, error) {
	tr, ok := s.Tree(opts.Tree)
	if !ok {
		return nil, nil, fmt.Errorf("%w: no tree %s", ErrRefused, opts.Tree)
	}
	type cand struct {
		b     format.BlockNr
		level int
		items int
	}
	var cands []cand
	var perr error
	if err := tr.Check(btreeVisitor(func(n format.Node, b format.BlockNr) {
		cands = append(cands, cand{b, n.Level(), n.NrItems()})
	}, &perr)); err != nil {
		return nil, nil, err
	}
	if perr != nil {
		return nil, nil, fmt.Errorf("%w: tree %s is already damaged: %v", ErrRefused, opts.Tree, perr)
	}
	if opts.Kind == DropRecord || opts.Kind == WrongOwner {
		// A record to drop (a leaf's item, or an interior node's pointer
		// with the subtree below it) or whose owner to change.
		cands = slices.DeleteFunc(cands, func(c cand) bool { return c.items == 0 })
	}
	if opts.Level != nil {
		cands = slices.DeleteFunc(cands, func(c cand) bool { return c.level != *opts.Level })
	}
	if len(cands) == 0 {
		at := ""
		if opts.Level != nil {
			at = fmt.Sprintf(" at level %d (its root is at level %d)", *opts.Level, tr.Level)
		}
		return nil, nil, fmt.Errorf("%w: tree %s has no block%s that %s can damage", ErrRefused, opts.Tree, at, opts.Kind)
	}
	r := rng(opts.Seed)
	c := cands[r.IntN(len(cands))]
	blk := make([]byte, format.BlockSize)
	if _, err := dev.ReadAt(blk, int64(c.b)*format.BlockSize); err != nil {
		return nil, nil, err
	}
	n := format.Node(blk)
	// wrong-owner changes a record's owner in a leaf of a tree whose
	// records name owners, the block header's owner anywhere else.
	recordOwner := opts.Kind == WrongOwner && c.level == 0 && hasRecordOwners(opts.Tree)
	res := &Result{Version: 1, Tree: opts.Tree.String(), Kind: opts.Kind, Block: uint64(c.b), Level: c.level, Generation: uint64(n.Gen())}
	switch opts.Kind {
	case Bitflip:
		for i := 0; i < 1+r.IntN(3); i++ {
			off := format.HeaderSize + r.IntN(format.BlockSize-format.HeaderSize)
			bit := byte(1) << r.IntN(8)
			blk[off] ^= bit
			res.Detail += fmt.Sprintf("flipped bit %#02x at offset %d; ", bit, off)
		}
		res.Detail = res.Detail[:len(res.Detail)-2]
	case Zero:
		clear(blk)
		res.Detail = "zeroed the block"
	case DropRecord:
		i := r.IntN(n.NrItems())
		if n.IsLeaf() {
			res.Detail = fmt.Sprintf("removed record %d, key %s", i, n.Key(i))
			n.DeleteItem(i)
		} else {
			res.Detail = fmt.Sprintf("removed pointer %d, key %s, and with it the subtree below", i, n.Key(i))
			n.DeletePtr(i)
		}
		n.Seal()
	case WrongOwner:
		if !recordOwner {
			// The block claims another tree in its header, checksum kept
			// valid: the check names it a wrong-owner block.
			other := format.TreeCsum
			if opts.Tree == format.TreeCsum {
				other = format.TreeDir
			}
			n.SetOwner(other)
			n.Seal()
			res.Detail = fmt.Sprintf("header owner %s rewritten as %s", opts.Tree, other)
			break
		}
		if opts.Tree == format.TreeExtent {
			if err := moveExtentOwner(n, c.b, r); err != nil {
				return nil, nil, err
			}
			res.Detail = "one file extent record moved to another file offset"
			n.Seal()
			break
		}
		done := false
		for _, i := range r.Perm(n.NrItems()) {
			k := n.Key(i)
			o, ok := format.RmapOwner(k)
			if !ok {
				continue
			}
			nk := k
			if o.IsData() {
				nk.Off = o.Inode + 1
			} else if o.Tree == format.TreeCsum {
				nk.Off = uint64(format.TreeDir)
			} else {
				nk.Off = uint64(format.TreeCsum)
			}
			n.SetKey(i, nk)
			if format.VerifyLayout(n, opts.Tree, c.b) == nil {
				res.Detail = fmt.Sprintf("record %d: owner of %s changed to %s", i, k, nk)
				done = true
				break
			}
			n.SetKey(i, k)
		}
		if !done {
			return nil, nil, fmt.Errorf("%w: no record of block %d can take another owner in key order", ErrRefused, c.b)
		}
		n.Seal()
	case StaleGen:
		if n.Gen() <= 1 {
			return nil, nil, fmt.Errorf("%w: block %d is from generation %d; nothing older exists", ErrRefused, c.b, n.Gen())
		}
		n.SetGen(n.Gen() - 1)
		n.Seal()
		res.Detail = fmt.Sprintf("generation %d rewritten as %d", res.Generation, n.Gen())
	}
	return res, blk, nil
}

// hasRecordOwners says whether wrong-owner changes a record's owner in the
// tree (the rmap records' owners, the file extent records' inode and file
// offset) rather than the block header's owner.
func hasRecordOwners(t format.TreeID) bool {
	return t == format.TreeRmap || t == format.TreeExtent
}

// moveExtentOwner gives one file extent record of leaf n another file offset
// that keeps the leaf in key order: its extent is then mapped at an offset
// the reverse mapping does not name.
func moveExtentOwner(n format.Node, b format.BlockNr, r *rand.Rand) error {
	for _, i := range r.Perm(n.NrItems()) {
		k := n.Key(i)
		if k.Type != format.TypeFileExtent {
			continue
		}
		nk := k
		nk.Off = k.Off + 1 + uint64(r.IntN(3))
		if i+1 < n.NrItems() && n.Key(i+1).Compare(nk) <= 0 {
			continue
		}
		n.SetKey(i, nk)
		if format.VerifyLayout(n, format.TreeExtent, b) == nil {
			return nil
		}
		n.SetKey(i, k)
	}
	return fmt.Errorf("%w: no file extent record of block %d can move in key order", ErrRefused, b)
}

// FlipRoot flips one bit in the root block of tree id of an unmounted
// image (its checksum then fails) and returns the block.
func FlipRoot(path string, id format.TreeID) (format.BlockNr, error) {
	e, err := engine.OpenPath(path, engine.Options{ReadOnly: true})
	if err != nil {
		return 0, err
	}
	s := e.Pin()
	ri, ok := s.Root(id)
	s.Release()
	e.Close()
	if !ok {
		return 0, fmt.Errorf("image has no %s tree", id)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	off := int64(ri.Root.Block)*format.BlockSize + 1000
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		return 0, err
	}
	b[0] ^= 0x20
	if _, err := f.WriteAt(b, off); err != nil {
		return 0, err
	}
	return ri.Root.Block, f.Sync()
}
