package fs

import (
	"strings"
	"syscall"
)

// Resolve walks a slash-separated path from the root (symlinks are not
// followed) and returns the attributes of what it names.
func (f *FS) Resolve(path string) (Attr, error) {
	a, err := f.GetAttr(RootIno)
	if err != nil {
		return Attr{}, err
	}
	for _, part := range strings.Split(path, "/") {
		if part == "" || part == "." {
			continue
		}
		if a.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			return Attr{}, syscall.ENOTDIR
		}
		if a, err = f.Lookup(a.Ino, part); err != nil {
			return Attr{}, err
		}
	}
	return a, nil
}

// ResolveParent returns the directory holding the last element of path and
// that element's name.
func (f *FS) ResolveParent(path string) (uint64, string, error) {
	path = strings.TrimRight(path, "/")
	i := strings.LastIndexByte(path, '/')
	dir, name := path[:max(i, 0)], path[i+1:]
	a, err := f.Resolve(dir)
	if err != nil {
		return 0, "", err
	}
	if a.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return 0, "", syscall.ENOTDIR
	}
	return a.Ino, name, nil
}
