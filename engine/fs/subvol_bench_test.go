package fs

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// manySubvols makes an image with n subvolumes (every tenth with a
// received UUID) in 100 directories and returns it unmounted, with the
// UUIDs by id.
func manySubvols(tb testing.TB, n int) (*disk.Mem, map[uint64]format.UUID) {
	tb.Helper()
	dev := disk.NewMem(64 << 20)
	if err := engine.Mkfs(dev, engine.MkfsOptions{}); err != nil {
		tb.Fatal(err)
	}
	f := mount(tb, nopClose{dev}, Options{})
	var dirs []uint64
	for i := 0; i < 100; i++ {
		a, err := f.Mkdir(RootIno, fmt.Sprint("d", i), NewInode{Mode: 0o40755})
		if err != nil {
			tb.Fatal(err)
		}
		dirs = append(dirs, a.Ino)
	}
	uuids := map[uint64]format.UUID{}
	for i := 0; i < n; i++ {
		sv, err := f.CreateSubvol(dirs[i%len(dirs)], "v"+strconv.Itoa(i))
		if err != nil {
			tb.Fatal(err)
		}
		u, _ := format.ParseUUID(sv.UUID)
		uuids[sv.ID] = u
		if i%10 == 0 {
			if err := f.SetReceivedUUID(sv.ID, u); err != nil {
				tb.Fatal(err)
			}
		}
		if i%1000 == 999 {
			if err := f.Sync(); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return dev, uuids
}

// TestSubvolTenThousand: with 10,000 subvolumes every UUID is found by
// the uuid tree (the same answer as the scan of the subvolume items), the
// list names them all, and the image mounts and checks clean.
func TestSubvolTenThousand(t *testing.T) {
	n := 10000
	if testing.Short() || raceEnabled {
		n = 1000
	}
	dev, uuids := manySubvols(t, n)
	start := time.Now()
	f := mount(t, nopClose{dev}, Options{})
	t.Logf("%d subvolumes: mount took %v", n, time.Since(start))
	defer f.Close()
	list, err := f.Subvols()
	if err != nil || len(list) != n {
		t.Fatalf("list: %d subvolumes, %v", len(list), err)
	}
	for i, s := range list {
		if want := fmt.Sprintf("/d%d/v%d", i%100, i); s.Path != want || s.ID != uint64(i+1) {
			t.Fatalf("subvolume %d: %+v, want path %s", i, s, want)
		}
	}
	ids := slices.Sorted(func(yield func(uint64) bool) {
		for id := range uuids {
			if !yield(id) {
				return
			}
		}
	})
	for i, id := range ids {
		if i%7 != 0 && id%10 != 1 {
			continue // a sample, and every one with a received UUID
		}
		own, recv, err := f.FindSubvols(uuids[id])
		if err != nil || !slices.Equal(own, []uint64{id}) {
			t.Fatalf("find %d: %v %v %v", id, own, recv, err)
		}
		if wantRecv := id%10 == 1; wantRecv != slices.Equal(recv, []uint64{id}) || !wantRecv && len(recv) != 0 {
			t.Fatalf("find %d: received %v", id, recv)
		}
		sown, srecv, err := f.ScanSubvols(uuids[id])
		if err != nil || !slices.Equal(own, sown) || !slices.Equal(recv, srecv) {
			t.Fatalf("scan %d: %v %v, tree %v %v (%v)", id, sown, srecv, own, recv, err)
		}
	}
	if own, recv, err := f.FindSubvols(format.UUID{1}); err != nil || len(own)+len(recv) != 0 {
		t.Fatalf("an unknown UUID: %v %v %v", own, recv, err)
	}
	mustClean(t, f)
}

// BenchmarkSubvolUUIDLookup: a lookup by UUID among 10,000 subvolumes
// (SCRUBD_BENCH_SUBVOLS to change), from the uuid tree and by a scan of
// the subvolume items; and a read-write mount of the image, beside one
// of the same directories without subvolumes.
func BenchmarkSubvolUUIDLookup(b *testing.B) {
	n := 10000
	if s := os.Getenv("SCRUBD_BENCH_SUBVOLS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	dev, uuids := manySubvols(b, n)
	var us []format.UUID
	for _, u := range uuids {
		us = append(us, u)
	}
	empty, _ := manySubvols(b, 0)
	for _, c := range []struct {
		name string
		dev  *disk.Mem
	}{{"mount-none", empty}, {"mount", dev}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				f := mount(b, nopClose{c.dev}, Options{})
				f.Close()
			}
		})
	}
	f := mount(b, nopClose{dev}, Options{ReadOnly: true})
	defer f.Close()
	for _, c := range []struct {
		name string
		find func(format.UUID) ([]uint64, []uint64, error)
	}{{"uuid-tree", f.FindSubvols}, {"scan", f.ScanSubvols}} {
		b.Run(c.name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				own, _, err := c.find(us[i%len(us)])
				if err != nil || len(own) != 1 {
					b.Fatal(own, err)
				}
				i++
			}
		})
	}
}
