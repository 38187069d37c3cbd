package disk

import "unsafe"

// DirectAlign is the alignment of a DirectFile's buffers, offsets and
// lengths: a page, which every device's logical block up to 4 KiB divides.
const DirectAlign = 4096

// AlignedBuffer returns n bytes whose first byte is aligned to
// DirectAlign (Go's allocator does not promise it: the slice is cut from
// a larger one).
func AlignedBuffer(n int) []byte {
	b := make([]byte, n+DirectAlign)
	skip := 0
	if r := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) % DirectAlign); r != 0 {
		skip = DirectAlign - r
	}
	return b[skip : skip+n : skip+n]
}

func aligned(p []byte, off int64) bool {
	return off%DirectAlign == 0 && len(p)%DirectAlign == 0 && len(p) > 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(p)))%DirectAlign == 0
}
