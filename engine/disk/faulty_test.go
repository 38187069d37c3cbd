package disk

import (
	"bytes"
	"errors"
	"testing"
)

var errMedium = errors.New("medium error")

func TestFaultyCallFaults(t *testing.T) {
	m := NewMemFrom(fill('.', 8*4096))
	f := NewFaulty(m)
	f.FailWrite(2, errMedium)
	f.FailWrite(4, nil)
	f.FailFlush(1, errMedium)

	// writeErr[i] is what WriteAt call i+1 must return.
	writeErr := []error{nil, errMedium, nil, ErrInjected, nil}
	for i, want := range writeErr {
		off := int64(i * 4096)
		n, err := f.WriteAt(fill(byte('a'+i), 4096), off)
		switch {
		case want == nil && (err != nil || n != 4096):
			t.Errorf("write %d = %d, %v; want success", i+1, n, err)
		case want != nil && (!errors.Is(err, want) || !errors.Is(err, ErrInjected) || n != 0):
			t.Errorf("write %d = %d, %v; want 0, %v wrapping ErrInjected", i+1, n, err, want)
		}
	}
	// Failed writes never reached the device.
	if got, want := sectors(m.Bytes()), "aaaaaaaa........cccccccc........eeeeeeee........................"; got != want {
		t.Errorf("device = %q, want %q", got, want)
	}
	if err := f.Flush(); !errors.Is(err, errMedium) || !errors.Is(err, ErrInjected) {
		t.Errorf("flush 1 = %v, want injected medium error", err)
	}
	if err := f.Flush(); err != nil {
		t.Errorf("flush 2 = %v, want success", err)
	}

	// A fault numbered in the past never fires; numbering is absolute.
	f.FailWrite(1, errMedium)
	f.FailWrite(f.Stats().Writes+1, errMedium)
	if _, err := f.WriteAt(fill('z', 10), 0); !errors.Is(err, errMedium) {
		t.Errorf("next write = %v, want errMedium", err)
	}
	if _, err := f.WriteAt(fill('z', 10), 0); err != nil {
		t.Errorf("write after the one-shot fault = %v", err)
	}

	want := FaultyStats{Reads: 0, Writes: 7, Flushes: 2, BytesWritten: 3*4096 + 10, Faults: 4}
	if got := f.Stats(); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
}

func TestFaultyRangeFaults(t *testing.T) {
	m := NewMemFrom(fill('.', 8192))
	f := NewFaulty(m)
	f.FailReads(1000, 100, errMedium) // bytes [1000, 1100)
	f.FailWrites(4096, 1, nil)        // byte 4096
	cases := []struct {
		name  string
		write bool
		off   int64
		n     int
		fails bool
	}{
		{"read before", false, 0, 1000, false},
		{"read touching first byte", false, 999, 2, true},
		{"read inside", false, 1010, 10, true},
		{"read covering", false, 0, 4096, true},
		{"read touching last byte", false, 1099, 1, true},
		{"read after", false, 1100, 100, false},
		{"read empty inside", false, 1050, 0, false},
		{"write over the read fault", true, 1000, 100, false},
		{"write before", true, 0, 4096, false},
		{"write onto faulty byte", true, 4000, 97, true},
		{"write after", true, 4097, 100, false},
	}
	for _, tc := range cases {
		buf := fill('w', tc.n)
		var err error
		if tc.write {
			_, err = f.WriteAt(buf, tc.off)
		} else {
			_, err = f.ReadAt(buf, tc.off)
		}
		switch {
		case tc.fails && !errors.Is(err, ErrInjected):
			t.Errorf("%s: %v, want an injected fault", tc.name, err)
		case tc.fails && !tc.write && !errors.Is(err, errMedium):
			t.Errorf("%s: %v, want errMedium", tc.name, err)
		case !tc.fails && err != nil:
			t.Errorf("%s: %v, want success", tc.name, err)
		}
	}
	f.Clear()
	if _, err := f.ReadAt(make([]byte, 10), 1000); err != nil {
		t.Errorf("read after Clear: %v", err)
	}
	if _, err := f.WriteAt(fill('x', 1), 4096); err != nil {
		t.Errorf("write after Clear: %v", err)
	}
	if got := m.Bytes(); got[4096] != 'x' || got[4095] != 'w' || !bytes.Equal(got[4097:4197], fill('w', 100)) {
		t.Error("device contents do not match the writes that succeeded")
	}
	s := f.Stats()
	if s.Reads != 8 || s.Writes != 5 || s.Faults != 5 || s.BytesRead != 1000+100+10 || s.BytesWritten != 100+4096+100+1 {
		t.Errorf("Stats() = %+v", s)
	}
}

// TestFaultyOverRecorder: a failed write is never recorded, so crash images
// never contain it.
func TestFaultyOverRecorder(t *testing.T) {
	r := NewRecorder(fill('.', 2*SectorSize))
	f := NewFaulty(r)
	if f.Device() != r || f.Size() != r.Size() {
		t.Fatal("Faulty does not expose its device")
	}
	f.FailWrite(1, nil)
	f.WriteAt(fill('a', SectorSize), 0)
	f.WriteAt(fill('b', SectorSize), SectorSize)
	f.FailFlush(1, nil)
	if err := f.Flush(); err == nil {
		t.Fatal("flush did not fail")
	}
	if r.Ops() != 1 || r.Flushes() != 0 {
		t.Fatalf("recorder saw Ops %d, Flushes %d; want 1, 0", r.Ops(), r.Flushes())
	}
	if got := sectors(r.CrashImage(0, CrashKeepAll, nil)); got != ".b" {
		t.Fatalf("keep-all = %q, want %q", got, ".b")
	}
}
