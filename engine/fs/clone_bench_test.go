package fs

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
)

// BenchmarkDelayedRefsShared: random 4 KiB overwrites of files whose
// extents are shared five ways (each file cloned five times), 1,000 per
// commit, across the originals and the clones. Every overwrite of a shared
// block drops one of its references (the block stays) and allocates a new
// extent; overwriting the same block again before the commit frees that
// one. Reported: alloc, rmap and free-tree modifications per commit with
// the delayed-ref queue and with every update applied at once.
func BenchmarkDelayedRefsShared(b *testing.B) {
	for _, immediate := range []bool{false, true} {
		name := "delayed"
		if immediate {
			name = "immediate"
		}
		b.Run(name, func(b *testing.B) { sharedOverwriteBench(b, immediate) })
	}
}

func sharedOverwriteBench(b *testing.B, immediate bool) {
	// Each write its own transaction (no delayed allocation), as when
	// this was first measured: with it, both modes apply the queue once
	// per commit.
	f, _ := benchFS(b, 512<<20, Options{NoDelayedAlloc: true, Engine: engine.Options{NoDelayedRefs: immediate}})
	defer f.Close()
	const files, clones, blocks = 32, 5, 64 // 256 KiB each
	var inos []uint64
	data := make([]byte, blocks*4096)
	for i := range files {
		a, err := f.Create(RootIno, fmt.Sprint("f", i), NewInode{Mode: 0o644})
		if err != nil {
			b.Fatal(err)
		}
		// One extent per 16 KiB, as small writes leave a file.
		for off := 0; off < len(data); off += 16 << 10 {
			if _, err := f.Write(a.Ino, data[off:off+16<<10], int64(off)); err != nil {
				b.Fatal(err)
			}
		}
		inos = append(inos, a.Ino)
		for j := range clones {
			c, err := f.Create(RootIno, fmt.Sprintf("f%d.%d", i, j), NewInode{Mode: 0o644})
			if err != nil {
				b.Fatal(err)
			}
			if err := f.Clone(a.Ino, c.Ino); err != nil {
				b.Fatal(err)
			}
			inos = append(inos, c.Ino)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	overwriteRounds(b, f, inos, blocks)
}

// overwriteRounds times b.N rounds of 1,000 random 4 KiB overwrites of
// the first blocks blocks of inos and a commit, reporting the space-tree
// modifications and the delayed-ref updates merged per commit; the image
// is checked after.
func overwriteRounds(b *testing.B, f *FS, inos []uint64, blocks int) {
	r := rand.New(rand.NewPCG(3, 3))
	block := make([]byte, 4096)
	before := f.Engine().Stats().Refs
	var elapsed time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		for j := 0; j < 1000; j++ {
			if _, err := f.Write(inos[r.IntN(len(inos))], block, int64(r.IntN(blocks))*4096); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		elapsed += time.Since(t0)
	}
	after := f.Engine().Stats().Refs
	b.ReportMetric(float64(after.TreeMods-before.TreeMods)/float64(b.N), "treemods/commit")
	b.ReportMetric(float64(after.Merged-before.Merged)/float64(b.N), "merged/commit")
	b.ReportMetric(elapsed.Seconds()*1000/float64(b.N), "ms/1000writes+commit")
	b.StopTimer()
	s := f.Engine().Pin()
	defer s.Release()
	if _, err := s.Check(b.Context(), func(x engine.Finding) { b.Errorf("self-check: %s", x) }); err != nil {
		b.Fatal(err)
	}
}
