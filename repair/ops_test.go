package repair

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// TestOpsTableOrder: every structure the issue names has a row, names are
// unique, every input names a row, and a row's inputs come before it except
// for the pairs that read each other.
func TestOpsTableOrder(t *testing.T) {
	want := []string{"superblock", "root", "alloc", "rmap", "free", "inode", "dir", "extent", "csum",
		"subvol", "snapshot", "uuid", "deleted", "logged_ops", "data"}
	pos := map[string]int{}
	for i, op := range opsTable {
		if _, dup := pos[op.Name]; dup {
			t.Fatalf("row %s twice", op.Name)
		}
		pos[op.Name] = i
	}
	for _, n := range want {
		if _, ok := pos[n]; !ok {
			t.Errorf("no row for %s", n)
		}
	}
	// Every structure the engine keeps health for has its row, under the
	// same name (the fsync log's row is the one extra).
	for _, s := range engine.Structures() {
		if _, ok := pos[s.Name()]; !ok {
			t.Errorf("structure %s has no row", s.Name())
		}
	}
	if len(opsTable) != len(engine.Structures())+1 {
		t.Errorf("%d rows for %d structures and the log", len(opsTable), len(engine.Structures()))
	}
	for _, op := range opsTable {
		for _, in := range op.Inputs {
			p, ok := pos[in]
			if !ok {
				t.Errorf("%s reads %s, which has no row", op.Name, in)
				continue
			}
			mutual := slices.Contains(opByName(in).Inputs, op.Name)
			if p > pos[op.Name] && !mutual {
				t.Errorf("%s reads %s, which comes after it", op.Name, in)
			}
		}
		if op.Repair == nil && len(op.Answers) > 0 {
			t.Errorf("%s answers findings but has no repairer", op.Name)
		}
	}
	for _, id := range []format.TreeID{format.TreeRoot, format.TreeAlloc, format.TreeRmap, format.TreeFree, format.TreeInode,
		format.TreeDir, format.TreeExtent, format.TreeCsum, format.OwnerSuper} {
		if opOfTree(id) == nil {
			t.Errorf("tree %s belongs to no row", id)
		}
	}
}

// TestCheckersOwnTheirTrees: a row's checker reads only its own trees'
// items, and every tree with items to check has a row with a checker.
func TestCheckersOwnTheirTrees(t *testing.T) {
	checked := map[format.TreeID]string{}
	for _, op := range opsTable {
		if op.Check == nil {
			continue
		}
		for id := range op.Check.items {
			if !slices.Contains(op.Trees, id) {
				t.Errorf("%s's checker reads the items of tree %s, not one of its own", op.Name, id)
			}
			if other, ok := checked[id]; ok {
				t.Errorf("tree %s has two checkers: %s and %s", id, other, op.Name)
			}
			checked[id] = op.Name
		}
	}
	for _, id := range []format.TreeID{format.TreeRoot, format.TreeAlloc, format.TreeRmap, format.TreeFree, format.TreeInode,
		format.TreeDir, format.TreeExtent, format.TreeCsum, format.TreeDeleted} {
		if _, ok := checked[id]; !ok {
			t.Errorf("no checker reads the items of tree %s", id)
		}
	}
}

// TestRepairOrderAndRefusal drives the dispatcher with scripted findings and
// repairers: rows run in dependency order, wait for damaged inputs that can
// be repaired, refuse when an input cannot be, and refuse both of two rows
// that wait for each other.
func TestRepairOrderAndRefusal(t *testing.T) {
	saved := slices.Clone(opsTable)
	defer func() { opsTable = saved }()
	bad := func(tree format.TreeID) engine.Finding {
		return engine.Finding{ID: engine.ErrNodeBadChecksum, Tree: tree}
	}
	type script struct {
		name    string
		found   []engine.Finding
		repairs map[string]bool // rows with a repairer in this script
		want    []string        // rows run, in order
		refused []string
	}
	for _, sc := range []script{
		{name: "alloc then free", found: []engine.Finding{bad(format.TreeFree), bad(format.TreeAlloc)},
			repairs: map[string]bool{"alloc": true, "free": true, "rmap": true}, want: []string{"alloc", "free"}},
		{name: "free waits for alloc, which cannot be repaired", found: []engine.Finding{bad(format.TreeFree), bad(format.TreeAlloc)},
			repairs: map[string]bool{"free": true}, refused: []string{"free"}},
		{name: "rmap and alloc wait for each other", found: []engine.Finding{bad(format.TreeRmap), bad(format.TreeAlloc)},
			repairs: map[string]bool{"alloc": true, "rmap": true}, refused: []string{"alloc", "rmap"}},
		{name: "a cross-reference finding goes to the first row answering it",
			found:   []engine.Finding{{ID: engine.ErrAllocRefcount, Tree: format.TreeAlloc}},
			repairs: map[string]bool{"rmap": true, "alloc": true}, want: []string{"rmap"}},
	} {
		t.Run(sc.name, func(t *testing.T) {
			opsTable = slices.Clone(saved)
			var ran []string
			left := slices.Clone(sc.found)
			for i := range opsTable {
				op := &opsTable[i]
				op.Repair = nil
				if !sc.repairs[op.Name] {
					op.Answers = nil
					continue
				}
				op.Repair = func(_ context.Context, _ *engine.Engine, _ ScrubOptions) (*RebuildReport, error) {
					ran = append(ran, op.Name)
					left = slices.DeleteFunc(left, func(f engine.Finding) bool {
						return slices.Contains(op.Trees, f.Tree) || slices.Contains(op.Answers, f.ID)
					})
					return &RebuildReport{Structure: op.Name}, nil
				}
			}
			rep := &Report{}
			r := &repairRun{rep: rep, recheck: func() ([]engine.Finding, error) { return slices.Clone(left), nil }}
			if _, err := r.repairAll(context.Background(), sc.found); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ran, sc.want) {
				t.Errorf("ran %v, want %v (notes %v)", ran, sc.want, rep.Notes)
			}
			for _, name := range sc.refused {
				found := false
				for _, n := range rep.Notes {
					found = found || strings.HasPrefix(n, name+" not repaired: ")
				}
				if !found {
					t.Errorf("%s not refused; notes %v", name, rep.Notes)
				}
			}
		})
	}
}
