package fs

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// offlineFindings runs the offline check on a copy of img and returns the
// finding names.
func offlineFindings(t *testing.T, img []byte) []string {
	t.Helper()
	_, fs, err := engine.CheckImage(disk.NewMemFrom(bytes.Clone(img)), engine.CheckOptions{Context: context.Background()})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range fs {
		names = append(names, f.Name)
	}
	return names
}

// TestCheckFindsDamagedLogBlocks: the offline check walks the fsync log's
// chain as replay would. An image with fsync'd records in its log (a crash
// after the fsyncs) checks clean; a flipped byte in any block of the chain,
// the head included, is the finding log_block_bad and nothing else.
func TestCheckFindsDamagedLogBlocks(t *testing.T) {
	if testing.Short() {
		t.Skip("single-goroutine and slow under the race detector: runs in the full pass")
	}
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	var chainBlocks int
	var inos []uint64
	for i := 0; i < 40; i++ {
		a, err := f.Create(RootIno, "f"+string(rune('a'+i%26))+string(rune('a'+i/26)), NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		inos = append(inos, a.Ino)
	}
	// Committed files, then writes to them: each fsync logs its write.
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	for i, ino := range inos {
		if _, err := f.Write(ino, bytes.Repeat([]byte{byte(i)}, 3000), 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Fsync(ino); err != nil {
			t.Fatal(err)
		}
	}
	if f.Stats().FsyncLogged == 0 {
		t.Fatal("no fsync went to the log")
	}
	img := bytes.Clone(dev.Bytes()) // as a crash would leave it
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := offlineFindings(t, img); len(got) != 0 {
		t.Fatalf("a crashed image with a log checks %v", got)
	}
	sb, err := format.DecodeSuper(img[:format.BlockSize], 0)
	if err != nil {
		t.Fatal(err)
	}
	start, seq, tag := sb.LogChain()
	var chain []format.BlockNr
	for at := start; ; {
		blk := img[int(at)*format.BlockSize : int(at+1)*format.BlockSize]
		if format.VerifyLogBlock(blk, sb.FSID, at, tag, seq, sb.TotalBlocks) != nil {
			break
		}
		chain = append(chain, at)
		at, seq = format.Node(blk).LogNext(), seq+1
	}
	chainBlocks = len(chain)
	if chainBlocks == 0 {
		t.Fatal("the fsyncs left no log chain to damage")
	}
	targets := slices.Clone(chain)
	head := sb.Log.Block
	if hb := img[int(head)*format.BlockSize : int(head+1)*format.BlockSize]; format.IsLogBlock(hb) && !slices.Contains(targets, head) {
		targets = append(targets, head)
	}
	for _, b := range targets {
		damaged := bytes.Clone(img)
		damaged[int(b)*format.BlockSize+format.HeaderSize+40] ^= 0x10
		got := offlineFindings(t, damaged)
		if !slices.Equal(got, []string{"log_block_bad"}) {
			t.Errorf("flip in log block %d (chain %v, head %d): findings %v, want [log_block_bad]", b, chain, head, got)
		}
	}
}
