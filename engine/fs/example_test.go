package fs_test

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/fs"
)

func Example() {
	dir, _ := os.MkdirTemp("", "scrubd-example")
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "fs.img")
	if err := engine.MkfsPath(img, 64<<20, false, engine.MkfsOptions{Label: "example"}); err != nil {
		panic(err)
	}
	fsys, err := fs.OpenPath(img, fs.Options{})
	if err != nil {
		panic(err)
	}
	defer fsys.Close()

	docs, _ := fsys.Mkdir(fs.RootIno, "docs", fs.NewInode{Mode: 0o755})
	f, _ := fsys.Create(docs.Ino, "hello.txt", fs.NewInode{Mode: 0o644})
	fsys.Open(f.Ino)
	fsys.Write(f.Ino, []byte("hello, scrubd\n"), 0)
	fsys.Fsync(f.Ino) // durable now
	fsys.Release(f.Ino)

	a, _ := fsys.Resolve("/docs/hello.txt")
	buf := make([]byte, a.Size)
	n, _ := fsys.Read(a.Ino, buf, 0)
	fmt.Printf("%s", buf[:n])
	// Output: hello, scrubd
}
