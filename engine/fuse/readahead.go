package fuse

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The kernel reads a FUSE file ahead in a window its backing device
// (BDI) sets: 128 KiB unless changed, whatever the mount asked for at
// INIT (the kernel takes the smaller of the two). A sequential reader then
// costs one READ request, one reply copy and one context switch pair per
// 128 KiB. The window is a sysfs knob of the mount's BDI,
// /sys/class/bdi/MAJOR:MINOR/read_ahead_kb (MAJOR:MINOR the mount's
// st_dev), which root may write; the mount sets it to its largest request,
// 1 MiB, so a sequential read takes an eighth of the requests of the
// kernel's default. See docs/benchmarks.md, "Read-ahead".

// DefaultReadAheadKiB is the read-ahead window a mount sets: its largest
// READ request (maxWrite).
const DefaultReadAheadKiB = maxWrite >> 10

// maxReadAheadKiB bounds the setting: larger windows only pin page cache.
const maxReadAheadKiB = 64 << 10

// bdiRoot is where the kernel lists backing devices.
var bdiRoot = "/sys/class/bdi"

// ReadAheadKiB returns the kernel's read-ahead window of the mount, KiB.
func (s *Server) ReadAheadKiB() (int, error) {
	p, err := s.readAheadPath()
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func (s *Server) readAheadPath() (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(s.mountpoint, &st); err != nil {
		return "", fmt.Errorf("read-ahead: stat %s: %w", s.mountpoint, err)
	}
	dev := uint64(st.Dev)
	return filepath.Join(bdiRoot, fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev)), "read_ahead_kb"), nil
}

// setReadAhead sets the mount's read-ahead window to kib KiB (0: the
// default; negative: leave the kernel's). Failure is not the mount's:
// without root (or with sysfs read-only) the kernel's window stays, and
// reads are correct, only slower; it is logged.
func (s *Server) setReadAhead(kib int) {
	switch {
	case kib < 0:
		return
	case kib == 0:
		kib = DefaultReadAheadKiB
	}
	kib = min(kib, maxReadAheadKiB)
	p, err := s.readAheadPath()
	if err == nil {
		err = os.WriteFile(p, []byte(strconv.Itoa(kib)), 0)
	}
	if err != nil {
		s.log.Info("the kernel's read-ahead window for the mount stays at its default (sequential reads take more requests)", "want_kib", kib, "err", err)
		return
	}
	s.log.Debug("read-ahead window set", "kib", kib, "sysfs", p)
}
