package fuse

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// freeBlocks commits (twice: freed blocks come back once their commit is
// durable) and returns statfs's free blocks of the mount.
func (m *testMount) freeBlocks() uint64 {
	m.t.Helper()
	for range 2 {
		if err := m.fsys.Sync(); err != nil {
			m.t.Fatal(err)
		}
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(m.dir, &sfs); err != nil {
		m.t.Fatal(err)
	}
	return sfs.Bfree
}

// freeBlocksReach waits up to ten seconds for the mount's free blocks to
// reach want and returns the last count. The kernel sends RELEASE after
// close returns, so an unlinked file's blocks stay held by its open handle
// until the server has seen that RELEASE.
func (m *testMount) freeBlocksReach(want uint64) uint64 {
	m.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		free := m.freeBlocks()
		if free >= want || time.Now().After(deadline) {
			return free
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCopyFileRangeShares: copy_file_range and cp of a 16 MiB file inside
// the mount take no data blocks and read back identical; overwriting the
// copy leaves the original intact.
func TestCopyFileRangeShares(t *testing.T) {
	m := mount(t, newImage(t))
	data := randBytes(rand.New(rand.NewPCG(7, 7)), 16<<20+300)
	mustWrite(t, m.path("orig"), data)
	before := m.freeBlocks()
	in, err := os.Open(m.path("orig"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(m.path("copy"))
	if err != nil {
		t.Fatal(err)
	}
	var done int
	for done < len(data) {
		n, err := unix.CopyFileRange(int(in.Fd()), nil, int(out.Fd()), nil, len(data)-done, 0)
		if err != nil {
			t.Fatalf("copy_file_range after %d bytes: %v", done, err)
		}
		if n == 0 {
			break
		}
		done += n
	}
	in.Close()
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if done != len(data) {
		t.Fatalf("copied %d bytes of %d", done, len(data))
	}
	after := m.freeBlocks()
	if used := before - after; used > 64 {
		t.Errorf("copy_file_range of %d blocks took %d blocks", len(data)/4096, used)
	}
	got, err := os.ReadFile(m.path("copy"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the copy reads differently (%d bytes, %v)", len(got), err)
	}
	// cp: coreutils 9 copies with copy_file_range.
	if cp, err := exec.LookPath("cp"); err == nil {
		if out, err := exec.Command(cp, m.path("orig"), m.path("cp")).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v: %s", err, out)
		}
		if used := after - m.freeBlocks(); used > 64 {
			t.Logf("cp took %d blocks: this cp does not use copy_file_range", used)
		} else if got, err := os.ReadFile(m.path("cp")); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("cp's copy reads differently (%d bytes, %v)", len(got), err)
		}
	}
	// Unaligned: the ends copied, the middle shared.
	in, _ = os.Open(m.path("orig"))
	out, _ = os.Create(m.path("part"))
	offIn, offOut := int64(4096*3+100), int64(100)
	if n, err := unix.CopyFileRange(int(in.Fd()), &offIn, int(out.Fd()), &offOut, 1<<20, 0); err != nil || n != 1<<20 {
		t.Fatalf("unaligned copy_file_range: %d, %v", n, err)
	}
	in.Close()
	out.Close()
	got, _ = os.ReadFile(m.path("part"))
	if want := append(make([]byte, 100), data[4096*3+100:4096*3+100+1<<20]...); !bytes.Equal(got, want) {
		t.Fatal("the unaligned copy reads differently")
	}
	// Overwrite the copy: copy on write, the original stays.
	f, err := os.OpenFile(m.path("copy"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xEE}, 8192), 4096*100+7); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, _ = os.ReadFile(m.path("orig"))
	if !bytes.Equal(got, data) {
		t.Fatal("overwriting the copy changed the original")
	}
	got, _ = os.ReadFile(m.path("copy"))
	want := bytes.Clone(data)
	copy(want[4096*100+7:], bytes.Repeat([]byte{0xEE}, 8192))
	if !bytes.Equal(got, want) {
		t.Fatal("the overwritten copy reads wrong")
	}
	m.remount()
	got, _ = os.ReadFile(m.path("copy"))
	if !bytes.Equal(got, want) {
		t.Fatal("the copy reads wrong after a remount")
	}
	// Removing the original keeps the copy; both gone frees everything.
	if err := os.Remove(m.path("orig")); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(m.path("copy"))
	if !bytes.Equal(got, want) {
		t.Fatal("removing the original changed the copy")
	}
	for _, n := range []string{"copy", "cp", "part"} {
		os.Remove(m.path(n))
	}
	floor := before + uint64(len(data)/4096) - 16
	if free := m.freeBlocksReach(floor); free < floor {
		t.Errorf("%d blocks free with every file gone, %d with the original alone", free, before)
	}
}
