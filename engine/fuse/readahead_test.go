package fuse

import (
	"bytes"
	"math/rand/v2"
	"os"
	"testing"
)

// The mount sets its read-ahead window (0: DefaultReadAheadKiB, a value:
// that value, negative: the kernel's own), and files larger than the
// window read back whole through it, sequentially and from the middle.
func TestReadAheadWindow(t *testing.T) {
	needFuse(t)
	if _, err := os.Stat(bdiRoot); err != nil {
		t.Skipf("no %s: %v", bdiRoot, err)
	}
	data := randBytes(rand.New(rand.NewPCG(7, 7)), 5<<20+1234)
	for _, tc := range []struct {
		name string
		opt  int
		want int // 0: not one the mount would set
	}{
		{"default", 0, DefaultReadAheadKiB},
		{"256K", 256, 256},
		{"kernel", -1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := mountWith(t, newImage(t), Options{ReadAheadKiB: tc.opt})
			srv := m.srv
			got, err := srv.ReadAheadKiB()
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.want != 0 && got != tc.want:
				t.Fatalf("read-ahead %d KiB, want %d", got, tc.want)
			case tc.want == 0 && (got == DefaultReadAheadKiB || got == 256):
				t.Fatalf("read-ahead %d KiB: the mount changed the kernel's window", got)
			}
			mustWrite(t, m.path("f"), data)
			m.remount() // nothing cached: every byte comes through READs
			if got, err := m.srv.ReadAheadKiB(); err != nil || (tc.want != 0 && got != tc.want) {
				t.Fatalf("after a remount: read-ahead %d KiB, %v", got, err)
			}
			mustRead(t, m.path("f"), data)
			fh, err := os.Open(m.path("f"))
			if err != nil {
				t.Fatal(err)
			}
			defer fh.Close()
			p := make([]byte, 3<<20)
			n, err := fh.ReadAt(p, 1<<20+77)
			if err != nil || n != len(p) || !bytes.Equal(p, data[1<<20+77:1<<20+77+len(p)]) {
				t.Fatalf("read from the middle: %d bytes, %v", n, err)
			}
		})
	}
}
