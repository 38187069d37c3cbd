package repair

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// Fault injection: exact damage to one metadata block, so tests, the demo
// and operators rehearsing a recovery can see what scrub finds and what
// repair fixes. Quarantined here: the engine itself never damages blocks.

// Injection kinds.
const (
	KindBitflip    = "bitflip"     // flip bits in a block (checksum mismatch)
	KindZero       = "zero"        // zero a whole block
	KindDropRecord = "drop-record" // remove one record, checksum kept valid
	KindWrongOwner = "wrong-owner" // give one rmap record another owner
	KindStaleGen   = "stale-gen"   // a block claiming an older generation
)

// InjectKinds lists the kinds in a stable order.
var InjectKinds = []string{KindBitflip, KindZero, KindDropRecord, KindWrongOwner, KindStaleGen}

// InjectOptions say what damage to do.
type InjectOptions struct {
	Tree format.TreeID
	Kind string
	Seed uint64
}

// InjectResult says what was done.
type InjectResult struct {
	Tree       string `json:"tree"`
	Kind       string `json:"kind"`
	Block      uint64 `json:"block"`
	Level      int    `json:"level"`
	Generation uint64 `json:"generation"`
	Detail     string `json:"detail"`
}

// ErrInject is wrapped by errors for requests that cannot be carried out.
var ErrInject = errors.New("cannot inject")

// InjectOffline damages an unmounted image.
func InjectOffline(path string, opts InjectOptions) (*InjectResult, error) {
	e, err := engine.OpenPath(path, engine.Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	s := e.Pin()
	res, blk, err := planInjection(s, e.Device(), opts)
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

// InjectOnline damages committed metadata of a mounted engine: with the
// writers frozen right after a commit (so the block it damages is one the
// filesystem goes on using, not one a running transaction has already
// replaced), it writes the device directly and drops the engine's cached
// copy.
func InjectOnline(e *engine.Engine, opts InjectOptions) (*InjectResult, error) {
	var res *InjectResult
	err := e.Freeze(func(s *engine.Snapshot) error {
		r, blk, err := planInjection(s, e.Device(), opts)
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
		res = r
		return nil
	})
	return res, err
}

// planInjection picks a block of the tree in snapshot s and returns it
// damaged as asked.
func planInjection(s *engine.Snapshot, dev disk.Device, opts InjectOptions) (*InjectResult, []byte, error) {
	if !slices.Contains(InjectKinds, opts.Kind) {
		return nil, nil, fmt.Errorf("%w: unknown kind %q (kinds: %v)", ErrInject, opts.Kind, InjectKinds)
	}
	if opts.Kind == KindWrongOwner && opts.Tree != format.TreeRmap {
		return nil, nil, fmt.Errorf("%w: kind %s applies to the rmap tree only", ErrInject, opts.Kind)
	}
	tr, ok := s.Tree(opts.Tree)
	if !ok {
		return nil, nil, fmt.Errorf("%w: no tree %s", ErrInject, opts.Tree)
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
		return nil, nil, fmt.Errorf("%w: tree %s is already damaged: %v", ErrInject, opts.Tree, perr)
	}
	if opts.Kind == KindDropRecord || opts.Kind == KindWrongOwner {
		cands = slices.DeleteFunc(cands, func(c cand) bool { return c.level != 0 || c.items == 0 })
	}
	if len(cands) == 0 {
		return nil, nil, fmt.Errorf("%w: tree %s has no block that %s can damage", ErrInject, opts.Tree, opts.Kind)
	}
	r := rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x5eed))
	c := cands[r.IntN(len(cands))]
	blk := make([]byte, format.BlockSize)
	if _, err := dev.ReadAt(blk, int64(c.b)*format.BlockSize); err != nil {
		return nil, nil, err
	}
	n := format.Node(blk)
	res := &InjectResult{Tree: opts.Tree.String(), Kind: opts.Kind, Block: uint64(c.b), Level: c.level, Generation: uint64(n.Gen())}
	switch opts.Kind {
	case KindBitflip:
		for i := 0; i < 1+r.IntN(3); i++ {
			off := format.HeaderSize + r.IntN(format.BlockSize-format.HeaderSize)
			bit := byte(1) << r.IntN(8)
			blk[off] ^= bit
			res.Detail += fmt.Sprintf("flipped bit %#02x at offset %d; ", bit, off)
		}
		res.Detail = res.Detail[:len(res.Detail)-2]
	case KindZero:
		clear(blk)
		res.Detail = "zeroed the block"
	case KindDropRecord:
		i := r.IntN(n.NrItems())
		res.Detail = fmt.Sprintf("removed record %d, key %s", i, n.Key(i))
		n.DeleteItem(i)
		n.Seal()
	case KindWrongOwner:
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
			return nil, nil, fmt.Errorf("%w: no record of block %d can take another owner in key order", ErrInject, c.b)
		}
		n.Seal()
	case KindStaleGen:
		if n.Gen() <= 1 {
			return nil, nil, fmt.Errorf("%w: block %d is from generation %d; nothing older exists", ErrInject, c.b, n.Gen())
		}
		n.SetGen(n.Gen() - 1)
		n.Seal()
		res.Detail = fmt.Sprintf("generation %d rewritten as %d", res.Generation, n.Gen())
	}
	return res, blk, nil
}
