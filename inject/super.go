package inject

import (
	"fmt"
	"slices"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// Damage to one superblock copy. The other copies must be valid copies
// of the generation in use (one at least; two, to outvote a copy of
// another filesystem), so the image still opens on the generation it had
// and the check names exactly the copy damaged:
//
//	bitflip      bits flipped outside the checksum field, which goes
//	             stale: super_copy_bad
//	zero         the copy zeroed: super_copy_bad
//	wrong-owner  a valid copy, checksum and all, of another filesystem
//	             (another UUID): super_copy_bad
//	stale-gen    a valid copy of the previous generation, as a crash
//	             between superblock writes leaves one: super_copy_stale
//
// A read-write open rewrites such a copy (and the next scrub reports it
// found and repaired); so does the superblock row's repair.

// superChecksumOff and superChecksumLen locate a superblock's checksum
// field (see format/super.go).
const superChecksumOff, superChecksumLen = 8, 4

func planSuper(s *engine.Snapshot, dev disk.Device, opts Options) (*Result, []byte, error) {
	if !slices.Contains(SuperKinds, opts.Kind) {
		return nil, nil, fmt.Errorf("%w: %s does not apply to a superblock copy, which has no records (superblock kinds: %v)", ErrRefused, opts.Kind, SuperKinds)
	}
	if opts.Level != nil {
		return nil, nil, fmt.Errorf("%w: a superblock copy is one block, not a tree: it has no levels", ErrRefused)
	}
	use := s.Super()
	type superCopy struct {
		at  format.BlockNr
		raw []byte
		sb  *format.Super
		bad string // why it is not a valid copy of the generation in use
	}
	var copies []superCopy
	for _, at := range format.SuperBlocks(use.TotalBlocks) {
		c := superCopy{at: at, raw: make([]byte, format.BlockSize)}
		if _, err := dev.ReadAt(c.raw, int64(at)*format.BlockSize); err != nil {
			return nil, nil, fmt.Errorf("read superblock copy %d: %w", at, err)
		}
		sb, err := format.DecodeSuper(c.raw, at)
		switch {
		case err != nil:
			c.bad = err.Error()
		case sb.FSID != use.FSID:
			c.bad = fmt.Sprintf("it belongs to filesystem %s", sb.FSID)
		case sb.Gen != use.Gen:
			c.bad = fmt.Sprintf("it has generation %d, the filesystem is at %d", sb.Gen, use.Gen)
		case use.Differs(sb) != "":
			c.bad = fmt.Sprintf("its %s differs from the copy in use", use.Differs(sb))
		}
		c.sb = sb
		copies = append(copies, c)
	}
	r := rng(opts.Seed)
	var c superCopy
	if opts.Copy != nil {
		i := slices.IndexFunc(copies, func(c superCopy) bool { return c.at == *opts.Copy })
		if i < 0 {
			return nil, nil, fmt.Errorf("%w: no superblock copy at block %d (copies: %v)", ErrRefused, *opts.Copy, format.SuperBlocks(use.TotalBlocks))
		}
		c = copies[i]
		if c.bad != "" {
			return nil, nil, fmt.Errorf("%w: superblock copy %d is already damaged: %s", ErrRefused, c.at, c.bad)
		}
	} else {
		valid := slices.DeleteFunc(slices.Clone(copies), func(c superCopy) bool { return c.bad != "" })
		if len(valid) == 0 {
			return nil, nil, fmt.Errorf("%w: every superblock copy is already damaged", ErrRefused)
		}
		c = valid[r.IntN(len(valid))]
	}
	others := 0
	for _, o := range copies {
		if o.at != c.at && o.bad == "" {
			others++
		}
	}
	if need := map[bool]int{false: 1, true: 2}[opts.Kind == WrongOwner]; others < need {
		return nil, nil, fmt.Errorf("%w: %s on superblock copy %d needs %d other valid copies of generation %d, and %d are (the image would no longer open as it is)",
			ErrRefused, opts.Kind, c.at, need, use.Gen, others)
	}
	blk, sb := c.raw, c.sb
	res := &Result{Version: 1, Tree: Superblock, Kind: opts.Kind, Block: uint64(c.at), Generation: uint64(sb.Gen)}
	switch opts.Kind {
	case Bitflip:
		// Distinct bits, so that no flip undoes another; a CRC32C detects
		// any three flipped bits in a block.
		type bitAt struct {
			off int
			bit byte
		}
		var flips []bitAt
		for n := 1 + r.IntN(3); len(flips) < n; {
			f := bitAt{r.IntN(format.BlockSize - superChecksumLen), byte(1) << r.IntN(8)}
			if f.off >= superChecksumOff {
				f.off += superChecksumLen
			}
			if !slices.Contains(flips, f) {
				flips = append(flips, f)
			}
		}
		for _, f := range flips {
			blk[f.off] ^= f.bit
			res.Detail += fmt.Sprintf("flipped bit %#02x at offset %d; ", f.bit, f.off)
		}
		res.Detail += "checksum left stale"
	case Zero:
		clear(blk)
		res.Detail = "zeroed the copy"
	case WrongOwner:
		old := sb.FSID
		for sb.FSID == old {
			for i := range sb.FSID {
				sb.FSID[i] = byte(r.Uint32())
			}
		}
		sb.Encode(blk)
		res.Detail = fmt.Sprintf("filesystem UUID %s rewritten as %s, checksum valid", old, sb.FSID)
	case StaleGen:
		if sb.Gen <= 1 {
			return nil, nil, fmt.Errorf("%w: superblock copy %d is of generation %d; nothing older exists", ErrRefused, c.at, sb.Gen)
		}
		staleSuper(sb)
		sb.Encode(blk)
		res.Detail = fmt.Sprintf("rewritten as a valid copy of generation %d", sb.Gen)
	}
	if _, err := format.DecodeSuper(blk, c.at); (err == nil) != (opts.Kind == WrongOwner || opts.Kind == StaleGen) {
		return nil, nil, fmt.Errorf("%s of superblock copy %d did not do what it should (decoding it gives %v): not written", opts.Kind, c.at, err)
	}
	return res, blk, nil
}

// staleSuper turns sb into a copy of the generation before it, as valid
// as one a crash between superblock writes leaves: its generation's root
// backup slot is dropped (no copy holds a backup newer than itself), and
// it points at the root tree the previous generation's backup names, when
// there is one.
func staleSuper(sb *format.Super) {
	cur := sb.Gen
	sb.Gen--
	if sb.Incompat&format.IncompatRootBackups != 0 {
		sb.Backups[cur%format.NumRootBackups] = format.RootBackup{}
	}
	if b, ok := sb.Backup(sb.Gen); ok {
		sb.Root = b.Roots[0].Root // KnownTrees[0], the root tree
	}
	sb.Root.Gen = min(sb.Root.Gen, sb.Gen)
	if sb.Log.Block != 0 {
		sb.Log.Gen = min(sb.Log.Gen, sb.Gen)
	}
}
