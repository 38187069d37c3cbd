package fs

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestRandomOverwriteFsyncStress: random 4 KiB overwrites with fsync after
// each, across commits (the fio workload), then a full self-check.
func TestRandomOverwriteFsyncStress(t *testing.T) {
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{CommitInterval: 20 * time.Millisecond})
	a, _ := f.Create(RootIno, "x", NewInode{Mode: 0o644})
	r := rand.New(rand.NewPCG(1, 2))
	block := make([]byte, 4096)
	n := 20000
	if raceEnabled || testing.Short() {
		n = 3000
	}
	for i := 0; i < n; i++ {
		block[0] = byte(i)
		if _, err := f.Write(a.Ino, block, int64(r.IntN(2560))*4096); err != nil {
			t.Fatal(err)
		}
		if err := f.Fsync(a.Ino); err != nil {
			t.Fatal(err)
		}
	}
	mustClean(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
