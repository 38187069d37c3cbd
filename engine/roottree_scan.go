package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// Finding the trees without the root tree: the header scan.
//
// Every metadata block names itself: filesystem id, own block number,
// owning tree, level and the generation that wrote it, under a checksum
// (engine/format/node.go). When neither the root tree nor a root backup
// of the superblock's generation can be read, ScanRoots reads the whole
// image in large sequential chunks, keeps an index of every block that
// verifies as a node of this filesystem (the header matches its place,
// the checksum and layout are sound, the owner is a tree the root tree
// lists, the generation is at most the superblock's), and picks each
// tree's root from that index by this rule:
//
//   - Candidates are the tree's indexed blocks, newest generation first,
//     then highest level. Copy-on-write makes the committed root the
//     newest block of its tree: every change to a tree writes a new root
//     in that generation, a block freed since was freed by such a change
//     (a newer root), and blocks written after the superblock's
//     generation (an uncommitted transaction) are excluded. Within its
//     generation the root is the one block at the top level.
//   - A candidate is refused when a root backup in the superblock, of a
//     generation at or after the candidate's, names another root for the
//     tree: the tree's root did not change between the candidate's
//     generation and the backup's if the candidate were the committed
//     one. This is how the backups take precedence when they still name a
//     root (even a stale backup tells which roots are not the current
//     ones), and what keeps a tree staged by an unfinished rebuild from
//     being taken for the committed one.
//   - A candidate is taken only when its whole subtree verifies from the
//     index: every child indexed, of the tree, of the level below and of
//     the generation its pointer names, within its parent's key range, no
//     block reached twice (loops, shared blocks). The leaves' items are
//     counted for the root item.
//
// Older candidates are tried when a newer one fails (at most
// maxScanAttempts per tree, so a hostile image cannot make the choice
// quadratic); a tree taken that way is reported as older than the newest
// block seen for it. A tree with no verifying candidate is missing: the
// open refuses the image (or, with IgnoreBadRoots, serves it without
// that tree), because every tree this build creates has a root block
// even when empty, and recreating one empty would silently drop what it
// held.
//
// What the scan cannot tell: a tree whose newest root block is itself
// damaged, with no backup to contradict a child, yields a verifying
// child subtree — part of the tree. A block of file data that happens to
// hold a verifying node of this filesystem at its own block number is
// indexed like metadata. Both take more than the one damaged block this
// scan is for; the check after the rebuild sees the first (blocks the
// tree no longer reaches), the rule's generation ordering the second
// unless the copy is the newest of its tree.

const (
	defaultScanChunk = 1024 // blocks a read covers: 4 MiB
	maxScanAttempts  = 64
)

// RootScanOptions configure ScanRoots.
type RootScanOptions struct {
	// ChunkBlocks is how many blocks one read covers; 0 means 1024.
	ChunkBlocks int
	// MaxGen bounds the generation of the blocks considered; 0 means the
	// superblock's.
	MaxGen format.Gen
}

// ScannedRoot is one tree's root found by the scan.
type ScannedRoot struct {
	Tree  format.TreeID
	Root  format.RootItem
	Nodes uint64 // blocks of the tree
	// Newest is the newest generation of a block of the tree seen; it is
	// above Root.Root.Gen when newer candidates failed to verify.
	Newest format.Gen
	// Refused counts the candidates refused before this one.
	Refused int
	// Backup is the generation of a root backup naming the same root, 0
	// if none does.
	Backup format.Gen
}

// RootScan is what ScanRoots found.
type RootScan struct {
	Gen      format.Gen // newest generation considered
	Blocks   uint64     // blocks read
	Bytes    uint64     // bytes read
	Nodes    uint64     // blocks that verify as nodes of this filesystem
	Found    []ScannedRoot
	Missing  []string // "tree: why", one per tree not found
	Duration time.Duration
}

// Roots returns the found roots by tree.
func (r *RootScan) Roots() map[format.TreeID]format.RootItem {
	m := make(map[format.TreeID]format.RootItem, len(r.Found))
	for _, f := range r.Found {
		m[f.Tree] = f.Root
	}
	return m
}

// String summarizes the scan in one line.
func (r *RootScan) String() string {
	var found []string
	for _, f := range r.Found {
		s := fmt.Sprintf("%s@%d (block %d, level %d, %d items", f.Tree, f.Root.Root.Gen, f.Root.Root.Block, f.Root.Root.Level, f.Root.Items)
		if f.Newest > f.Root.Root.Gen {
			s += fmt.Sprintf(", newest block seen of generation %d did not verify", f.Newest)
		}
		found = append(found, s+")")
	}
	out := fmt.Sprintf("header scan of %d blocks up to generation %d: %d nodes; found %s", r.Blocks, r.Gen, r.Nodes, strings.Join(found, ", "))
	if len(r.Missing) > 0 {
		out += "; missing " + strings.Join(r.Missing, ", ")
	}
	return out
}

// scanKid is a child pointer of an indexed interior node.
type scanKid struct {
	key   format.Key
	block format.BlockNr
	gen   format.Gen
}

// scanNode is what the index keeps of a block that verified: about 100
// bytes, so the index of an image full of node-looking blocks stays a
// few percent of the image. Interior nodes' pointers are read again when
// a candidate's subtree is walked (scanIndex.children).
type scanNode struct {
	owner       format.TreeID
	gen         format.Gen
	level       uint8
	items       uint16
	first, last format.Key
}

// scanIndex is the scan's index of verified blocks.
type scanIndex struct {
	dev   disk.Device
	fsid  format.FSID
	nodes map[format.BlockNr]scanNode
	kids  map[format.BlockNr][]scanKid // interior nodes read again
	buf   []byte
}

// children returns the child pointers of indexed block b, reading it
// again (once) and checking it is still the block indexed.
func (x *scanIndex) children(b format.BlockNr, n scanNode) ([]scanKid, error) {
	if n.level == 0 {
		return nil, nil
	}
	if k, ok := x.kids[b]; ok {
		return k, nil
	}
	if _, err := x.dev.ReadAt(x.buf, int64(b)*format.BlockSize); err != nil {
		return nil, err
	}
	if err := format.VerifyNode(x.buf, format.Expect{FSID: x.fsid, Block: b, Tree: n.owner, Gen: n.gen, Level: int(n.level)}); err != nil {
		return nil, err
	}
	nd := format.Node(x.buf)
	kids := make([]scanKid, nd.NrItems())
	for i := range kids {
		cb, cg := nd.Child(i)
		kids[i] = scanKid{key: nd.Key(i), block: cb, gen: cg}
	}
	x.kids[b] = kids
	return kids, nil
}

// scanTrees are the owners the scan looks for: the trees the root tree
// lists (not the root tree itself, nor the fsync log).
func scanTree(id format.TreeID) (int, bool) {
	for j, t := range format.KnownTrees {
		if t == id && t != format.TreeRoot {
			return j, true
		}
	}
	return 0, false
}

// ScanRoots finds every tree's root by reading the header of every block
// of the image (see the essay above). It reads dev only. The error is for
// cancellation; unreadable chunks are read block by block and the
// unreadable blocks skipped.
func ScanRoots(ctx context.Context, dev disk.Device, sb *format.Super, opts RootScanOptions) (*RootScan, error) {
	start := time.Now()
	maxGen := sb.Gen
	if opts.MaxGen != 0 && opts.MaxGen < maxGen {
		maxGen = opts.MaxGen
	}
	total := sb.TotalBlocks
	if dn := uint64(dev.Size()) / format.BlockSize; dn < total {
		total = dn
	}
	chunk := opts.ChunkBlocks
	if chunk <= 0 {
		chunk = defaultScanChunk
	}
	res := &RootScan{Gen: maxGen}
	index := map[format.BlockNr]scanNode{}
	x := &scanIndex{dev: dev, fsid: sb.FSID, nodes: index, kids: map[format.BlockNr][]scanKid{}, buf: make([]byte, format.BlockSize)}
	buf := make([]byte, chunk*format.BlockSize)
	consider := func(b []byte, at format.BlockNr) {
		n := format.Node(b)
		if n[0] != 'S' || n[1] != 'C' || n[2] != 'R' || n[3] != 'N' || n.Block() != at || n.FSID() != sb.FSID {
			return
		}
		if _, ok := scanTree(n.Owner()); !ok || n.Gen() == 0 || n.Gen() > maxGen || n.Level() > format.MaxLevel {
			return
		}
		if format.VerifyNode(b, format.Expect{FSID: sb.FSID, Block: at, Tree: n.Owner(), Level: -1}) != nil {
			return
		}
		sn := scanNode{owner: n.Owner(), gen: n.Gen(), level: uint8(n.Level()), items: uint16(n.NrItems())}
		if c := n.NrItems(); c > 0 {
			sn.first, sn.last = n.Key(0), n.Key(c-1)
		}
		index[at] = sn
	}
	for at := uint64(0); at < total; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := min(uint64(chunk), total-at)
		p := buf[:n*format.BlockSize]
		if _, err := dev.ReadAt(p, int64(at)*format.BlockSize); err != nil {
			// Block by block: one bad sector costs one block.
			for i := uint64(0); i < n; i++ {
				q := p[i*format.BlockSize : (i+1)*format.BlockSize]
				if _, err := dev.ReadAt(q, int64(at+i)*format.BlockSize); err != nil {
					clear(q)
				}
			}
		}
		for i := uint64(0); i < n; i++ {
			consider(p[i*format.BlockSize:(i+1)*format.BlockSize], format.BlockNr(at+i))
		}
		res.Blocks += n
		res.Bytes += n * format.BlockSize
		at += n
	}
	res.Nodes = uint64(len(index))

	byOwner := map[format.TreeID][]format.BlockNr{}
	for b, sn := range index {
		byOwner[sn.owner] = append(byOwner[sn.owner], b)
	}
	var backups []format.RootBackup
	if sb.Incompat&format.IncompatRootBackups != 0 {
		for _, rb := range sb.Backups {
			if rb.Gen != 0 && rb.Gen <= maxGen {
				backups = append(backups, rb)
			}
		}
	}
	for _, id := range format.KnownTrees {
		j, ok := scanTree(id)
		if !ok {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		cands := byOwner[id]
		slices.SortFunc(cands, func(a, b format.BlockNr) int {
			x, y := index[a], index[b]
			if c := cmp.Compare(y.gen, x.gen); c != 0 {
				return c
			}
			if c := cmp.Compare(y.level, x.level); c != 0 {
				return c
			}
			return cmp.Compare(a, b)
		})
		var why error = errors.New("no block of the tree verifies")
		found := false
		refused := 0
		for _, b := range cands {
			if refused >= maxScanAttempts {
				why = fmt.Errorf("%d candidates refused (%w)", refused, why)
				break
			}
			c := index[b]
			if bg, err := backupContradicts(backups, j, b, c); err != nil {
				why = err
				refused++
				continue
			} else if err := verifyScanned(x, id, b); err != nil {
				why = fmt.Errorf("block %d of generation %d: %w", b, c.gen, err)
				refused++
				continue
			} else {
				items, nodes := countScanned(x, b)
				sr := ScannedRoot{Tree: id, Nodes: nodes, Newest: index[cands[0]].gen, Refused: refused, Backup: bg,
					Root: format.RootItem{Root: format.RootPtr{Block: b, Gen: c.gen, Level: c.level}, Items: items}}
				for _, rb := range backups {
					if rb.Gen == bg {
						sr.Root.Flags = rb.Roots[j].Flags
					}
				}
				res.Found = append(res.Found, sr)
				found = true
				break
			}
		}
		if !found {
			res.Missing = append(res.Missing, fmt.Sprintf("%s: %v", id, why))
		}
	}
	if sb.RecoveryPasses&(1<<PassRmapUntrusted) == 0 {
		rmapCrossCheck(x, res)
	}
	res.Duration = time.Since(start)
	return res, nil
}

// rmapCrossCheck refuses a found root that does not reach every block the
// found rmap tree names as its tree's: that root is a child of the tree's
// lost root (or an older root), not the whole tree. The rmap is read only
// to refuse, never to choose: an rmap found short (its own root lost)
// names fewer blocks and refuses less. Skipped while the image marks the
// rmap untrusted.
func rmapCrossCheck(x *scanIndex, res *RootScan) {
	var rmapRoot format.BlockNr
	reach := map[format.TreeID]map[format.BlockNr]bool{}
	for _, f := range res.Found {
		if f.Tree == format.TreeRmap {
			rmapRoot = f.Root.Root.Block
		}
		set := map[format.BlockNr]bool{}
		walkScanned(x, f.Root.Root.Block, func(b format.BlockNr, _ scanNode) { set[b] = true })
		reach[f.Tree] = set
	}
	if rmapRoot == 0 {
		return
	}
	short := map[format.TreeID]format.BlockNr{}
	buf := make([]byte, format.BlockSize)
	walkScanned(x, rmapRoot, func(b format.BlockNr, sn scanNode) {
		if sn.level != 0 {
			return
		}
		if _, err := x.dev.ReadAt(buf, int64(b)*format.BlockSize); err != nil {
			return
		}
		if format.VerifyNode(buf, format.Expect{FSID: x.fsid, Block: b, Tree: format.TreeRmap, Gen: sn.gen, Level: 0}) != nil {
			return
		}
		n := format.Node(buf)
		for i := 0; i < n.NrItems(); i++ {
			k := n.Key(i)
			if k.Type != format.TypeRmapTree {
				continue
			}
			o, ok := format.RmapOwner(k)
			set, found := reach[o.Tree]
			if !ok || !found {
				continue
			}
			ri, err := format.DecodeRmapItem(n.Value(i))
			if err != nil {
				continue
			}
			for x := uint64(0); x < ri.Len && x < 1<<20; x++ {
				if blk := format.BlockNr(k.Obj + x); !set[blk] {
					if _, seen := short[o.Tree]; !seen {
						short[o.Tree] = blk
					}
					break
				}
			}
		}
	})
	if len(short) == 0 {
		return
	}
	kept := res.Found[:0]
	for _, f := range res.Found {
		if b, ok := short[f.Tree]; ok {
			res.Missing = append(res.Missing, fmt.Sprintf("%s: the root found (block %d of generation %d) does not reach block %d, which the rmap tree names as the tree's: the tree's root is lost", f.Tree, f.Root.Root.Block, f.Root.Root.Gen, b))
			continue
		}
		kept = append(kept, f)
	}
	res.Found = kept
}

// walkScanned visits the subtree of b in the index (one verifyScanned
// accepted).
func walkScanned(x *scanIndex, b format.BlockNr, visit func(format.BlockNr, scanNode)) {
	stack := []format.BlockNr{b}
	for len(stack) > 0 {
		at := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n := x.nodes[at]
		visit(at, n)
		kids, _ := x.children(at, n) // read and kept by verifyScanned
		for _, k := range kids {
			stack = append(stack, k.block)
		}
	}
}

// backupContradicts refuses candidate b when a backup of a generation at
// or after its own names another root for tree slot j; otherwise it
// returns the newest backup's generation that names b (0 for none).
func backupContradicts(backups []format.RootBackup, j int, b format.BlockNr, c scanNode) (format.Gen, error) {
	var agree format.Gen
	for _, rb := range backups {
		r := rb.Roots[j].Root
		if rb.Gen < c.gen || r.Block == 0 {
			continue
		}
		if r.Block != b || r.Gen != c.gen || r.Level != c.level {
			return 0, fmt.Errorf("block %d of generation %d: the root backup of generation %d names block %d of generation %d", b, c.gen, rb.Gen, r.Block, r.Gen)
		}
		agree = max(agree, rb.Gen)
	}
	return agree, nil
}

// verifyScanned checks the subtree of candidate root b from the index:
// every child indexed, of the tree, of the level below, of the generation
// its pointer names, its keys within the parent's range, no block twice.
func verifyScanned(x *scanIndex, tree format.TreeID, b format.BlockNr) error {
	type frame struct {
		block  format.BlockNr
		lo, hi format.Key
		hasHi  bool
	}
	seen := map[format.BlockNr]bool{b: true}
	stack := []frame{{block: b}}
	for len(stack) > 0 {
		f := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n := x.nodes[f.block]
		if n.items > 0 && (n.first.Less(f.lo) || (f.hasHi && !n.last.Less(f.hi))) {
			return fmt.Errorf("block %d: keys [%s, %s] outside its parent's range", f.block, n.first, n.last)
		}
		kids, err := x.children(f.block, n)
		if err != nil {
			return fmt.Errorf("block %d read again: %w", f.block, err)
		}
		for i, k := range kids {
			ch, ok := x.nodes[k.block]
			switch {
			case !ok:
				return fmt.Errorf("block %d: child %d (block %d) does not verify", f.block, i, k.block)
			case ch.owner != tree || ch.gen != k.gen || int(ch.level) != int(n.level)-1 || ch.gen > n.gen:
				return fmt.Errorf("block %d: child %d (block %d) is of tree %s, level %d, generation %d", f.block, i, k.block, ch.owner, ch.level, ch.gen)
			case seen[k.block]:
				return fmt.Errorf("block %d: child %d (block %d) reached twice", f.block, i, k.block)
			}
			seen[k.block] = true
			nf := frame{block: k.block, lo: k.key, hi: f.hi, hasHi: f.hasHi}
			if i+1 < len(kids) {
				nf.hi, nf.hasHi = kids[i+1].key, true
			}
			stack = append(stack, nf)
		}
	}
	return nil
}

// countScanned returns the items of the leaves and the blocks of a
// subtree verifyScanned accepted.
func countScanned(x *scanIndex, b format.BlockNr) (items, nodes uint64) {
	walkScanned(x, b, func(_ format.BlockNr, n scanNode) {
		nodes++
		if n.level == 0 {
			items += uint64(n.items)
		}
	})
	return items, nodes
}

// rootFromScan finds the roots the root tree could not give (read holds
// those it did) by a header scan: the read ones win, the scan adds the
// others. It returns the merged roots, the scan, and an error naming the
// trees still missing (the merged roots are then partial).
func (e *Engine) rootFromScan(sb *format.Super, read map[format.TreeID]format.RootItem) (map[format.TreeID]format.RootItem, *RootScan, error) {
	scan, err := ScanRoots(context.Background(), e.dev, sb, RootScanOptions{})
	if err != nil {
		return read, nil, err
	}
	roots := make(map[format.TreeID]format.RootItem, len(read)+len(scan.Found))
	for _, f := range scan.Found {
		roots[f.Tree] = f.Root
	}
	for id, ri := range read {
		roots[id] = ri
	}
	var missing []string
	for _, id := range format.KnownTrees {
		if _, ok := roots[id]; !ok {
			missing = append(missing, id.String())
		}
	}
	e.log.Warn("root tree rebuilt by a header scan", "scan", scan.String(), "missing", missing)
	if len(missing) > 0 {
		return roots, scan, fmt.Errorf("header scan: trees %v not found (%s): %w", missing, strings.Join(scan.Missing, "; "), format.ErrCorrupt)
	}
	return roots, scan, nil
}

// RootScanCheck is the online header scan: it reads the whole device for
// the roots of the committed generation (pinned while it runs, so no
// block of it is reused) and compares them with the roots the engine
// holds. It returns the scan and the trees whose scanned root differs
// from the engine's (the engine's are the ones in use: a difference means
// the scan would not have found that tree's committed root).
func (e *Engine) RootScanCheck(ctx context.Context) (*RootScan, []string, error) {
	s := e.Pin()
	defer s.Release()
	sb := s.v.super
	scan, err := ScanRoots(ctx, e.dev, &sb, RootScanOptions{MaxGen: sb.Gen})
	if err != nil {
		return nil, nil, err
	}
	found := scan.Roots()
	var differ []string
	for _, id := range format.KnownTrees {
		if id == format.TreeRoot {
			continue
		}
		want, got := s.v.roots[id], found[id]
		if want.Root != got.Root || want.Items != got.Items {
			differ = append(differ, fmt.Sprintf("%s: scan found block %d gen %d (%d items), in use block %d gen %d (%d items)",
				id, got.Root.Block, got.Root.Gen, got.Items, want.Root.Block, want.Root.Gen, want.Items))
		}
	}
	return scan, differ, nil
}
