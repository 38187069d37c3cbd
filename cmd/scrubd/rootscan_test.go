package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// dropRootBackups rewrites every superblock copy of img without root
// backups (the feature bit off, the slots zero), as format 1.2 wrote it.
func dropRootBackups(t *testing.T, img string) {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range format.SuperBlocks(uint64(len(b)) / format.BlockSize) {
		blk := b[int(at)*format.BlockSize : int(at+1)*format.BlockSize]
		sb, err := format.DecodeSuper(blk, at)
		if err != nil {
			t.Fatal(err)
		}
		sb.Incompat &^= format.IncompatRootBackups
		sb.Backups = [format.NumRootBackups]format.RootBackup{}
		sb.Encode(blk)
	}
	if err := os.WriteFile(img, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFsckRepairRootByHeaderScan: an image whose root tree's block is
// damaged and which has no root backup to fall back to — nothing else can
// open it — is repaired by `fsck --repair` (exit 1: the root tree was
// rebuilt from a scan of every block's header, and the report says so);
// the next fsck is clean and every file reads back byte for byte.
func TestFsckRepairRootByHeaderScan(t *testing.T) {
	for _, kind := range []string{"bitflip", "zero"} {
		t.Run(kind, func(t *testing.T) {
			img := mkfs(t)
			want := populate(t, img)
			dropRootBackups(t, img)
			var root uint64
			for _, tr := range info(t, img).Trees {
				if tr.Name == "root" {
					root = tr.Root
				}
			}
			if root == 0 {
				t.Fatal("info names no root tree")
			}
			b, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			blk := b[int(root)*format.BlockSize : int(root+1)*format.BlockSize]
			if kind == "zero" {
				clear(blk)
			} else {
				blk[format.HeaderSize+100] ^= 0x10
			}
			if err := os.WriteFile(img, b, 0o644); err != nil {
				t.Fatal(err)
			}
			out := expect(t, 4, "fsck", img)
			if !strings.Contains(out, "root") {
				t.Fatalf("fsck does not name the root tree:\n%s", out)
			}
			out = expect(t, 1, "fsck", img, "--repair")
			t.Logf("fsck --repair:\n%s", out)
			if !strings.Contains(out, "header scan") {
				t.Fatalf("fsck --repair does not say the roots came from a header scan:\n%s", out)
			}
			expect(t, 0, "fsck", img)
			fsys, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer fsys.Close()
			for name, data := range want {
				a, err := fsys.Lookup(fs.RootIno, name)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				got := make([]byte, len(data)+1)
				n, err := fsys.Read(a.Ino, got, 0)
				if err != nil && n != len(data) {
					t.Fatalf("%s: read: %v", name, err)
				}
				if !bytes.Equal(got[:n], data) {
					t.Fatalf("%s reads back %d bytes, not the %d written", name, n, len(data))
				}
			}
		})
	}
}
