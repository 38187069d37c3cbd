package repair

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The ops table (the XFS meta_scrub_ops design): one row per structure,
// naming the trees whose damage is the structure's, its repairer (nil while
// there is none), the cross-reference findings that repairer answers for,
// and the structures it reads. Scrub, fsck and the mount's control socket
// reach repair only through it.
//
// The flow of one run: check everything; then repair in dependency order;
// then check again, and the second check is what the report shows. The
// order comes from the rows' inputs:
//
//   - A row runs when the check found damage in one of its trees, or a
//     cross-reference finding it answers for. Cross-reference findings are
//     ambiguous (an allocation record without its reverse mapping may be
//     either tree's fault), so several rows may answer the same id; the
//     first in dependency order runs, everything is checked again, and
//     only what is still found reaches the next row. Rebuilding a tree
//     that was right costs time, never data: a repairer derives its tree
//     from inputs verified to be intact.
//   - Damage proven by the walk of an input's own tree (a bad block, a
//     wrong item count: findings only a damaged tree produces) makes the
//     row wait until that input is repaired; if the input has no repairer,
//     or its repair failed or left damage, the row refuses and the report
//     says why. Two rows waiting for each other (the rmap tree is derived
//     from every tree's blocks, the allocation tree from the rmap) both
//     refuse: the information to rebuild either may be gone.
//   - Every repair is followed by a full check; a repairer runs at most
//     once per run.
type Op struct {
	// Name is the structure's name in reports, health and the ops table.
	Name string
	// Trees are the trees (or owners) whose findings are the structure's.
	Trees []format.TreeID
	// Check is the structure's checker (repair/<structure>.go): nil when
	// the engine's generic walk of its trees is all there is to check
	// (trees nothing fills yet), or, for the data, the data scrub.
	Check *checker
	// Repair rebuilds the structure online; nil while no repairer exists.
	Repair repairFunc
	// Answers are the cross-reference findings the repairer fixes, besides
	// any finding in the structure's own trees.
	Answers []engine.ErrorID
	// Inputs are the structures the repairer reads: damage proven in one
	// of their trees makes it wait or refuse.
	Inputs []string
	// OnlyAnswers: the repairer fixes only the findings it answers, not
	// damage in its trees' own blocks (the inode row fixes link counts,
	// not lost inode items).
	OnlyAnswers bool
}

// repairFunc rebuilds one structure of e and describes the rebuild.
type repairFunc func(ctx context.Context, e *engine.Engine, opts ScrubOptions) (*RebuildReport, error)

// every tree whose blocks the rmap maps: the rmap rebuild reads them all.
var allTrees = []string{"root", "alloc", "free", "inode", "dir", "extent", "csum", "subvol", "snapshot", "uuid", "deleted", "logged_ops", "xattr"}

// opsTable lists the structures in dependency order: a row's inputs come
// before it, except where two rows read each other (rmap and alloc).
var opsTable = []Op{
	{Name: "superblock", Trees: []format.TreeID{format.OwnerSuper}, Check: superblockCheck, Repair: repairSupers,
		Answers: []engine.ErrorID{engine.ErrSuperCopyBad, engine.ErrSuperCopyStale, engine.ErrSuperCopyField}},
	{Name: "root", Trees: []format.TreeID{format.TreeRoot}, Check: rootCheck, Repair: repairRoot},
	{Name: "dir", Trees: []format.TreeID{format.TreeDir}, Check: dirCheck, Repair: repairDir, Inputs: []string{"inode"}},
	// The extent row answers only damage proven in its own tree: an item
	// and a record that disagree may be either one's fault, and the rmap
	// row, rebuilding from the items, loses nothing either way — a file
	// extent tree rebuilt from a wrong rmap would lose file data.
	{Name: "extent", Trees: []format.TreeID{format.TreeExtent}, Check: extentCheck, Repair: repairExtent, Inputs: []string{"rmap"}},
	// The inode row rebuilds the inode tree when its blocks are damaged
	// (inode items lost with a leaf reconstructed from the directory
	// entries, file extents and rmap), then sets files' block counts
	// from their extent items and fixes link counts from the directory
	// entries. It comes after the extent row, whose items it reads.
	{Name: "inode", Trees: []format.TreeID{format.TreeInode}, Check: inodeCheck, Repair: repairInode,
		Answers: []engine.ErrorID{engine.ErrNlink, engine.ErrInodeBlocks}, Inputs: []string{"dir", "extent", "rmap"}},
	// The subvolume row rebuilds the subvolume tree from its readable
	// items, the inodes (a subvolume for every id that has some) and the
	// uuid tree (their UUIDs) when its blocks are damaged or a subvolume's
	// item is missing; it answers subvol_root where that is a deletion
	// whose flag the damage lost (subvol_repair.go). The uuid tree is not
	// among its inputs: damage there costs UUIDs, not subvolumes.
	{Name: "subvol", Trees: []format.TreeID{format.TreeSubvol}, Check: subvolCheck, Repair: repairSubvol,
		Answers: []engine.ErrorID{engine.ErrSubvolOrphan, engine.ErrSubvolRoot}, Inputs: []string{"inode", "dir"}},
	// The fills of snapshots under way: rebuilt from the readable items
	// that belong to a live snapshot of a live source (snapshot.go).
	{Name: "snapshot", Trees: []format.TreeID{format.TreeSnapshot}, Check: snapshotCheck, Repair: repairSnapshot,
		Answers: []engine.ErrorID{engine.ErrSnapFill, engine.ErrSnapWhiteout}, Inputs: []string{"subvol"}},
	// The uuid tree holds nothing the subvolume items do not: rebuilt
	// from them (subvol_repair.go).
	{Name: "uuid", Trees: []format.TreeID{format.TreeUUID}, Check: uuidCheck, Repair: repairUUID,
		Answers: []engine.ErrorID{engine.ErrUUIDMissing, engine.ErrUUIDOrphan}, Inputs: []string{"subvol"}},
	{Name: "deleted", Trees: []format.TreeID{format.TreeDeleted}, Check: deletedCheck, Repair: repairDeleted, Inputs: []string{"inode"}},
	{Name: "xattr", Trees: []format.TreeID{format.TreeXattr}, Check: xattrCheck, Repair: repairXattr,
		Answers: []engine.ErrorID{engine.ErrXattrOrphan, engine.ErrXattrKey, engine.ErrXattrChunk}, Inputs: []string{"inode"}},
	{Name: "logged_ops", Trees: []format.TreeID{format.TreeLoggedOps}, Repair: repairLoggedOps},
	{Name: "log", Trees: []format.TreeID{format.TreeLog}, Check: logCheck},
	{
		Name:   "rmap",
		Trees:  []format.TreeID{format.TreeRmap},
		Check:  rmapCheck,
		Repair: repairRmap,
		Answers: []engine.ErrorID{engine.ErrRmapMissing, engine.ErrRmapOrphan, engine.ErrRmapLength,
			engine.ErrAllocRefcount, engine.ErrRmapDataOwner, engine.ErrRmapMapping, engine.ErrExtentNoRmap, engine.ErrRmapSick},
		Inputs: allTrees,
	},
	{
		Name:   "alloc",
		Trees:  []format.TreeID{format.TreeAlloc},
		Check:  allocCheck,
		Repair: repairAlloc,
		Answers: []engine.ErrorID{engine.ErrAllocMissing, engine.ErrAllocLeaked, engine.ErrAllocRefcount,
			engine.ErrAllocOverlap, engine.ErrAllocKind, engine.ErrExtentNoAlloc, engine.ErrCsumOrphan},
		Inputs: []string{"rmap", "extent"},
	},
	{
		Name:   "free",
		Trees:  []format.TreeID{format.TreeFree},
		Check:  freeCheck,
		Repair: repairFree,
		Answers: []engine.ErrorID{engine.ErrSpaceLost, engine.ErrFreeOverlap, engine.ErrFreeNotMerged,
			engine.ErrSuperFreeCount},
		Inputs: []string{"alloc", "rmap"},
	},
	// The csum row keeps every record it can read and computes the lost
	// ones from the data, listing them as unverified; it reads the rmap
	// (the data extents and their owners), so it comes after the rmap
	// and alloc rows, which answer an orphan record first when it is
	// theirs.
	{Name: "csum", Trees: []format.TreeID{format.TreeCsum}, Check: csumCheck, Repair: repairCsum,
		Answers: []engine.ErrorID{engine.ErrCsumMissing, engine.ErrCsumOrphan}, Inputs: []string{"rmap"}},
	{Name: "data", Trees: []format.TreeID{format.OwnerData}},
}

// OpsTable returns a copy of the ops table, in dependency order.
func OpsTable() []Op { return slices.Clone(opsTable) }

// opByName returns the row of the structure.
func opByName(name string) *Op {
	for i := range opsTable {
		if opsTable[i].Name == name {
			return &opsTable[i]
		}
	}
	return nil
}

// opOfTree returns the row whose trees include t.
func opOfTree(t format.TreeID) *Op {
	for i := range opsTable {
		if slices.Contains(opsTable[i].Trees, t) {
			return &opsTable[i]
		}
	}
	return nil
}

// walkDamage says whether a finding proves its tree damaged: only a tree
// whose own blocks or items are bad produces it (cross-reference findings
// may blame the wrong tree).
func walkDamage(id engine.ErrorID) bool {
	switch id {
	case engine.ErrNodeBadMagic, engine.ErrNodeBadChecksum, engine.ErrNodeWrongFS, engine.ErrNodeMisdirected,
		engine.ErrNodeWrongOwner, engine.ErrNodeStale, engine.ErrNodeBadLevel, engine.ErrNodeBadLayout,
		engine.ErrNodeKeyOrder, engine.ErrNodeUnreadable, engine.ErrItemBad, engine.ErrTreeItemCount,
		engine.ErrTreeMissing, engine.ErrExtentOverlap, engine.ErrExtentPastEOF:
		return true
	}
	return false
}

// wants says whether the row has something to repair among fs: a finding
// it answers, or one in its own trees — unless that one is a
// cross-reference finding another row answers (an extent_no_rmap is
// reported in the extent tree, but the rmap row answers it: the extent
// row rebuilding from the rmap would lose file data if the rmap were the
// tree that is wrong).
func (op *Op) wants(fs []engine.Finding) bool {
	for _, f := range fs {
		if slices.Contains(op.Answers, f.ID) {
			return true
		}
		if !op.OnlyAnswers && slices.Contains(op.Trees, f.Tree) && (walkDamage(f.ID) || !answeredElsewhere(op, f.ID)) {
			return true
		}
	}
	return false
}

// answeredElsewhere says whether a row other than op answers id.
func answeredElsewhere(op *Op, id engine.ErrorID) bool {
	for i := range opsTable {
		if o := &opsTable[i]; o.Name != op.Name && o.Repair != nil && slices.Contains(o.Answers, id) {
			return true
		}
	}
	return false
}

// provenDamaged says whether fs prove the structure damaged.
func (op *Op) provenDamaged(fs []engine.Finding) bool {
	for _, f := range fs {
		if walkDamage(f.ID) && slices.Contains(op.Trees, f.Tree) {
			return true
		}
	}
	return false
}

// repairRun is one pass of repairs over a filesystem's findings.
type repairRun struct {
	e       *engine.Engine
	opts    ScrubOptions
	recheck func() ([]engine.Finding, error)
	done    map[string]bool // rows that ran or refused
	rep     *Report
}

// repairAll repairs what the ops table can, in dependency order, and
// returns what the last check still finds.
func (r *repairRun) repairAll(ctx context.Context, found []engine.Finding) ([]engine.Finding, error) {
	r.done = map[string]bool{}
	cur := found
	if countersOnly(cur) {
		if err := r.repairCounters(ctx, cur); err != nil {
			return nil, err
		}
		var err error
		if cur, err = r.recheck(); err != nil {
			return nil, err
		}
	}
	for {
		ran := false
		waiting := map[string][]string{} // row → the inputs it waits for
		for i := range opsTable {
			op := &opsTable[i]
			if op.Repair == nil || r.done[op.Name] || !op.wants(cur) {
				continue
			}
			var wait, refuse []string
			for _, in := range op.Inputs {
				if in == op.Name {
					// It reads its own tree (OnlyAnswers rows): damage
					// there is not its to repair.
					if op.provenDamaged(cur) {
						refuse = append(refuse, in)
					}
					continue
				}
				iop := opByName(in)
				if iop == nil || !iop.provenDamaged(cur) {
					continue
				}
				if iop.Repair != nil && !r.done[in] {
					wait = append(wait, in)
				} else {
					refuse = append(refuse, in)
				}
			}
			if len(refuse) > 0 {
				r.refuse(op, fmt.Sprintf("it is rebuilt from %s, which %s damaged and cannot be repaired",
					strings.Join(refuse, ", "), isAre(len(refuse))))
				continue
			}
			if len(wait) > 0 {
				waiting[op.Name] = wait
				continue
			}
			if err := r.repairOne(ctx, op); err != nil {
				return nil, err
			}
			var err error
			if cur, err = r.recheck(); err != nil {
				return nil, err
			}
			ran = true
			break // start again from the top of the order
		}
		if ran {
			continue
		}
		// Nothing could run: the rows still waiting wait for each other.
		for name, wait := range waiting {
			r.refuse(opByName(name), fmt.Sprintf("it is rebuilt from %s, which %s damaged too and %s rebuilt from it in turn",
				strings.Join(wait, ", "), isAre(len(wait)), isAre(len(wait))))
		}
		return cur, nil
	}
}

func isAre(n int) string {
	if n == 1 {
		return "is"
	}
	return "are"
}

// refuse records that a row will not run, and why.
func (r *repairRun) refuse(op *Op, why string) {
	r.done[op.Name] = true
	r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("%s not repaired: %s", op.Name, why))
}

// repairOne runs a row's repairer and records the outcome.
func (r *repairRun) repairOne(ctx context.Context, op *Op) error {
	r.done[op.Name] = true
	r.opts.Control.phaseStart("repair "+op.Name, 0)
	rb, err := op.Repair(ctx, r.e, r.opts)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("%s rebuild failed: %v", op.Name, err))
		return nil
	}
	if r.opts.fsys != nil {
		r.opts.fsys.ExternalChange(op.Name) // the mount drops its caches
	}
	r.rep.Rebuilds = append(r.rep.Rebuilds, *rb)
	for _, c := range rb.Changes {
		r.rep.Notes = append(r.rep.Notes, op.Name+": "+c)
	}
	if rb.Action != "" {
		r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("%s: %s: %d changed, %d live updates followed, writers paused %.1f ms",
			op.Name, rb.Action, rb.Records, rb.Events, rb.PauseMs))
	} else if r.opts.Mode == "offline" {
		r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("rebuilt the %s tree: %d records", op.Name, rb.Records))
	} else {
		r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("rebuilt the %s tree online: %d records, %d live updates followed, writers paused %.1f ms",
			op.Name, rb.Records, rb.Events, rb.PauseMs))
	}
	return nil
}

// repairRmap is the rmap row's repairer.
func repairRmap(ctx context.Context, e *engine.Engine, opts ScrubOptions) (*RebuildReport, error) {
	e.SetRmapSick(true)
	return rebuildReport("rmap")(RebuildRmap(ctx, e, RebuildOptions{TempDir: opts.TempDir}))
}

// repairCsum is the csum row's repairer.
func repairCsum(ctx context.Context, e *engine.Engine, opts ScrubOptions) (*RebuildReport, error) {
	rb, err := rebuildReport("csum")(RebuildCsum(ctx, e, RebuildOptions{TempDir: opts.TempDir}))
	if err == nil {
		rb.Changes = append(rb.Changes, unverifiedChanges(e, rb.Unverified)...)
	}
	return rb, err
}

// repairExtent is the extent row's repairer.
func repairExtent(ctx context.Context, e *engine.Engine, opts ScrubOptions) (*RebuildReport, error) {
	return rebuildReport("extent")(RebuildExtent(ctx, e, RebuildOptions{TempDir: opts.TempDir}))
}

// repairAlloc is the alloc row's repairer.
func repairAlloc(ctx context.Context, e *engine.Engine, opts ScrubOptions) (*RebuildReport, error) {
	return rebuildReport("alloc")(RebuildAlloc(ctx, e, RebuildOptions{TempDir: opts.TempDir}))
}

// repairFree is the free row's repairer.
func repairFree(ctx context.Context, e *engine.Engine, opts ScrubOptions) (*RebuildReport, error) {
	return rebuildReport("free")(RebuildFree(ctx, e, RebuildOptions{TempDir: opts.TempDir}))
}

// rebuildReport turns a rebuild's result into the report's record of it.
func rebuildReport(name string) func(*RebuildResult, error) (*RebuildReport, error) {
	return func(rr *RebuildResult, err error) (*RebuildReport, error) {
		if err != nil {
			return nil, err
		}
		return &RebuildReport{Structure: name, Records: rr.Records, Events: rr.Events,
			NewBlocks: rr.NewBlocks, OldBlocks: rr.OldBlocks, DurationS: rr.Duration.Seconds(),
			PauseMs: float64(rr.ExclusivePause.Microseconds()) / 1000, XfileBytes: rr.XfileBytes, Gen: uint64(rr.Gen),
			Unverified: rr.Unverified, Changes: salvagedChanges(rr.Salvaged)}, nil
	}
}
