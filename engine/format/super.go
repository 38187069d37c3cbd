package format

import (
	"bytes"
	"fmt"
	"time"
)

// Superblock layout (one block; copies at SuperBlocks):
//
//	off  size  field
//	  0     8  magic "SCRUBDSB"
//	  8     4  crc32c of the block with this field zero
//	 12     2  major version       14  2  minor version
//	 16    16  filesystem UUID
//	 32     8  block number of this copy
//	 40     8  generation
//	 48     4  block size          52  4  flags (reserved)
//	 56     8  total blocks
//	 64     8  free blocks
//	 72     8  root tree: root block   80  8  its generation
//	 88     1  root tree level     89  7  reserved
//	 96     8  compat features    104  8  ro-compat features   112  8  incompat features
//	120     8  recovery_passes_required (bit n = pass n)
//	128    32  errors_silent (bit n = error id n is not counted loudly)
//	160     8  log tree root block  168  8  its generation  176  1  its level
//	184     8  next object id (inode numbers are never reused)
//	192    64  label (NUL padded)
//	256     4  number of device entries (<= MaxDevices)
//	264   128  device entries: {device id, read errors, write errors, checksum errors} u64 each
//	400     2  number of error entries (<= MaxErrorEntries)
//	408  1536  error entries: {error id u32, reserved u32, count u64, last seen unix ns i64}
//	1944    8  log chain start block  1952  8  its tag  1960  4  its sequence number
//	1968  2112  root backups (IncompatRootBackups): 4 slots of 528 bytes, see RootBackup
//
// All integers little-endian. Everything after the used fields is zero.
const (
	MaxDevices      = 4
	MaxErrorEntries = 64
	MinBlocks       = 1024 // 4 MiB
	LabelSize       = 64
)

var superMagic = [8]byte{'S', 'C', 'R', 'U', 'B', 'D', 'S', 'B'}

// SuperBlocks returns where superblock copies live on an image of total
// blocks: the primary first, then backups that fit.
func SuperBlocks(total uint64) []BlockNr {
	out := []BlockNr{0}
	for _, b := range []BlockNr{16, 256} {
		if uint64(b) < total {
			out = append(out, b)
		}
	}
	return out
}

// Feature bits. Unknown incompat bits refuse the mount; unknown ro-compat
// bits allow only a read-only mount; unknown compat bits are ignored.
const (
	// IncompatLogChain: the fsync log is one chain that outlives commits;
	// the superblock names where the generation's part of it starts
	// (LogStart, LogSeq, LogTag) instead of the log starting at the head
	// block with the superblock's generation as its tag.
	IncompatLogChain uint64 = 1 << 0
	// IncompatRmapMaps (format 1.2): a file's reverse mapping records the
	// part of the extent it maps (RmapItem.Offset and Count), so the
	// extent tree can be rebuilt from the rmap tree. Records are 24 bytes
	// for files, 8 for trees; an older build would reject them.
	IncompatRmapMaps uint64 = 1 << 1
	// IncompatRootBackups (format 1.3): the superblock keeps the root
	// items of the last few generations (RootBackup), so a damaged root
	// tree costs nothing: its items are in the superblock that points at
	// it. An older build would reject the bytes as reserved.
	IncompatRootBackups uint64 = 1 << 2
	// IncompatLongSymlinks (format 1.5): symlink targets longer than
	// MaxSymlinkItem bytes, split into chunks (SymlinkChunkKey). Set with
	// the version (mkfs, an upgrade); without it a longer target is
	// refused. An older build would read a chunk as a whole target.
	IncompatLongSymlinks uint64 = 1 << 3
	// IncompatLargeXattrs (format 1.6): attribute values larger than one
	// item holds, split into a head item and chunk items (xattr.go). Set
	// with the version; without it a larger value is refused (ENOSPC).
	// An older build would reject the head's length fields.
	IncompatLargeXattrs uint64 = 1 << 4
	// IncompatSubvols (format 1.7): inode numbers carry a subvolume id
	// in their top bits, and the subvol and uuid trees hold items
	// (subvol.go). An older build would see inodes above its object id
	// counter and a directory entry leading into another inode space.
	IncompatSubvols uint64 = 1 << 5
	// IncompatSnapshots (format 1.8): the snapshot tree holds the fills
	// of snapshots (snapshot.go); a subvolume whose fill is under way has
	// directory entries naming inodes it has not copied yet. An older
	// build would see them as dangling.
	IncompatSnapshots uint64 = 1 << 6

	IncompatSupported = IncompatLogChain | IncompatRmapMaps | IncompatRootBackups | IncompatLongSymlinks | IncompatLargeXattrs | IncompatSubvols | IncompatSnapshots
	// RoCompatXattr (format 1.4): the image may have the xattr tree
	// (xattr.go); a build without it would free inodes and leave their
	// attributes, so it mounts the image read-only.
	RoCompatXattr     uint64 = 1 << 0
	RoCompatSupported        = RoCompatXattr
)

// RootPtr locates a tree's root block.
type RootPtr struct {
	Block BlockNr
	Gen   Gen
	Level uint8
}

// Root backups (the btrfs design: four slots, a commit of generation g
// writing slot g mod 4). A slot holds a generation and the root item of
// every tree this version knows (KnownTrees, in order; the root tree's
// own first: its root pointer and item count): 8 + 13 × 40 = 528 bytes.
// The slot of the superblock's own generation is an exact copy of its
// root tree's items; the older ones name trees whose blocks later
// generations may have freed and reused, so they are only ever read for
// a rescue that verifies them. A zero generation marks a slot never
// written, all its bytes zero.
const (
	NumRootBackups = 4
	rootBackupOff  = 1968
	rootBackupSize = 8 + 13*RootItemSize
)

// RootBackup is one generation's root items.
type RootBackup struct {
	Gen   Gen
	Roots [13]RootItem // KnownTrees, in order
}

func init() {
	if len(KnownTrees) != len(RootBackup{}.Roots) {
		panic("format: a root backup must hold every known tree's root item")
	}
}

// Backup returns the root backup of generation g, if the superblock has
// one.
func (s *Super) Backup(g Gen) (RootBackup, bool) {
	if s.Incompat&IncompatRootBackups == 0 || g == 0 {
		return RootBackup{}, false
	}
	b := s.Backups[g%NumRootBackups]
	return b, b.Gen == g
}

// DeviceStats are per-device IO error counters.
type DeviceStats struct {
	ID          uint64 `json:"id"`
	ReadErrors  uint64 `json:"read_errors"`
	WriteErrors uint64 `json:"write_errors"`
	CsumErrors  uint64 `json:"csum_errors"`
}

// ErrorEntry counts one kind of error seen on the filesystem.
type ErrorEntry struct {
	ID    uint32
	Count uint64
	Last  int64 // unix nanoseconds
}

// Super is the decoded superblock.
type Super struct {
	Major, Minor   uint16
	FSID           FSID
	Block          BlockNr // where this copy lives
	Gen            Gen
	BlockSize      uint32
	Flags          uint32
	TotalBlocks    uint64
	FreeBlocks     uint64
	Root           RootPtr
	Compat         uint64
	RoCompat       uint64
	Incompat       uint64
	RecoveryPasses uint64
	ErrorsSilent   [4]uint64
	Log            RootPtr
	// LogStart, LogSeq and LogTag (with IncompatLogChain) name the first
	// log block that extends this generation, its sequence number and the
	// chain's tag.
	LogStart     BlockNr
	LogSeq       uint32
	LogTag       Gen
	NextObjectID uint64
	Label        string
	Devices      []DeviceStats
	Errors       []ErrorEntry
	// Backups (IncompatRootBackups) are the root items of the last
	// generations, slot g mod NumRootBackups for generation g.
	Backups [NumRootBackups]RootBackup
}

// Encode writes s into b (one block) and seals it with its checksum.
func (s *Super) Encode(b []byte) {
	b = b[:BlockSize]
	clear(b)
	copy(b[0:8], superMagic[:])
	le.PutUint16(b[12:], s.Major)
	le.PutUint16(b[14:], s.Minor)
	copy(b[16:32], s.FSID[:])
	le.PutUint64(b[32:], uint64(s.Block))
	le.PutUint64(b[40:], uint64(s.Gen))
	le.PutUint32(b[48:], s.BlockSize)
	le.PutUint32(b[52:], s.Flags)
	le.PutUint64(b[56:], s.TotalBlocks)
	le.PutUint64(b[64:], s.FreeBlocks)
	putRootPtr(b[72:], s.Root)
	le.PutUint64(b[96:], s.Compat)
	le.PutUint64(b[104:], s.RoCompat)
	le.PutUint64(b[112:], s.Incompat)
	le.PutUint64(b[120:], s.RecoveryPasses)
	for i, w := range s.ErrorsSilent {
		le.PutUint64(b[128+8*i:], w)
	}
	putRootPtr(b[160:], s.Log)
	le.PutUint64(b[184:], s.NextObjectID)
	copy(b[192:192+LabelSize], s.Label)
	nd := min(len(s.Devices), MaxDevices)
	le.PutUint32(b[256:], uint32(nd))
	for i, d := range s.Devices[:nd] {
		o := 264 + 32*i
		le.PutUint64(b[o:], d.ID)
		le.PutUint64(b[o+8:], d.ReadErrors)
		le.PutUint64(b[o+16:], d.WriteErrors)
		le.PutUint64(b[o+24:], d.CsumErrors)
	}
	ne := min(len(s.Errors), MaxErrorEntries)
	le.PutUint16(b[400:], uint16(ne))
	for i, e := range s.Errors[:ne] {
		o := 408 + 24*i
		le.PutUint32(b[o:], e.ID)
		le.PutUint64(b[o+8:], e.Count)
		le.PutUint64(b[o+16:], uint64(e.Last))
	}
	le.PutUint64(b[1944:], uint64(s.LogStart))
	le.PutUint64(b[1952:], uint64(s.LogTag))
	le.PutUint32(b[1960:], s.LogSeq)
	if s.Incompat&IncompatRootBackups != 0 {
		for i, rb := range s.Backups {
			o := rootBackupOff + i*rootBackupSize
			le.PutUint64(b[o:], uint64(rb.Gen))
			for j, ri := range rb.Roots {
				copy(b[o+8+j*RootItemSize:], ri.Encode())
			}
		}
	}
	le.PutUint32(b[8:], blockChecksum(b, 8))
}

// LogChain returns where the log extending this generation starts: its
// first block, that block's sequence number and the tag every block of the
// chain carries. Without IncompatLogChain (images of format 1.0) the log
// starts at the head block with sequence 1, tagged with the generation.
func (s *Super) LogChain() (start BlockNr, seq uint32, tag Gen) {
	if s.Incompat&IncompatLogChain == 0 {
		return s.Log.Block, 1, s.Gen
	}
	return s.LogStart, s.LogSeq, s.LogTag
}

func putRootPtr(b []byte, r RootPtr) {
	le.PutUint64(b[0:], uint64(r.Block))
	le.PutUint64(b[8:], uint64(r.Gen))
	b[16] = r.Level
}

func getRootPtr(b []byte) RootPtr {
	return RootPtr{Block: BlockNr(le.Uint64(b[0:])), Gen: Gen(le.Uint64(b[8:])), Level: b[16]}
}

// DecodeSuper decodes and validates the superblock copy read from block at.
// Every field that later code uses as a length, count or location is bounded
// here. It does not judge features; see CheckFeatures.
func DecodeSuper(b []byte, at BlockNr) (*Super, error) {
	bad := func(format string, args ...any) error {
		return corrupt(KindBadSuper, OwnerSuper, at, format, args...)
	}
	if len(b) != BlockSize {
		return nil, bad("superblock is %d bytes", len(b))
	}
	if !bytes.Equal(b[0:8], superMagic[:]) {
		return nil, corrupt(KindBadMagic, OwnerSuper, at, "magic %q", b[0:8])
	}
	if got, want := le.Uint32(b[8:]), blockChecksum(b, 8); got != want {
		return nil, corrupt(KindBadChecksum, OwnerSuper, at, "stored crc32c %#08x, computed %#08x", got, want)
	}
	s := &Super{
		Major:          le.Uint16(b[12:]),
		Minor:          le.Uint16(b[14:]),
		Block:          BlockNr(le.Uint64(b[32:])),
		Gen:            Gen(le.Uint64(b[40:])),
		BlockSize:      le.Uint32(b[48:]),
		Flags:          le.Uint32(b[52:]),
		TotalBlocks:    le.Uint64(b[56:]),
		FreeBlocks:     le.Uint64(b[64:]),
		Root:           getRootPtr(b[72:]),
		Compat:         le.Uint64(b[96:]),
		RoCompat:       le.Uint64(b[104:]),
		Incompat:       le.Uint64(b[112:]),
		RecoveryPasses: le.Uint64(b[120:]),
		Log:            getRootPtr(b[160:]),
		NextObjectID:   le.Uint64(b[184:]),
		LogStart:       BlockNr(le.Uint64(b[1944:])),
		LogTag:         Gen(le.Uint64(b[1952:])),
		LogSeq:         le.Uint32(b[1960:]),
	}
	copy(s.FSID[:], b[16:32])
	for i := range s.ErrorsSilent {
		s.ErrorsSilent[i] = le.Uint64(b[128+8*i:])
	}
	s.Label = string(bytes.TrimRight(b[192:192+LabelSize], "\x00"))
	if s.Major != VersionMajor {
		return nil, corrupt(KindUnsupported, OwnerSuper, at, "format version %d.%d, this build reads %d.x", s.Major, s.Minor, VersionMajor)
	}
	if s.Block != at {
		return nil, corrupt(KindMisdirected, OwnerSuper, at, "superblock says it lives at block %d", s.Block)
	}
	if s.BlockSize != BlockSize {
		return nil, bad("block size %d, want %d", s.BlockSize, BlockSize)
	}
	if s.TotalBlocks < MinBlocks || s.TotalBlocks > 1<<48 {
		return nil, bad("total blocks %d out of range", s.TotalBlocks)
	}
	if s.FreeBlocks > s.TotalBlocks {
		return nil, bad("free blocks %d exceed total %d", s.FreeBlocks, s.TotalBlocks)
	}
	if s.Gen == 0 {
		return nil, bad("generation 0")
	}
	for _, r := range []struct {
		name string
		p    RootPtr
	}{{"root tree", s.Root}, {"log tree", s.Log}} {
		if r.name == "log tree" && r.p.Block == 0 {
			continue
		}
		if uint64(r.p.Block) >= s.TotalBlocks || r.p.Block == 0 || r.p.Level > MaxLevel || r.p.Gen > s.Gen {
			return nil, bad("%s pointer block %d gen %d level %d out of range", r.name, r.p.Block, r.p.Gen, r.p.Level)
		}
	}
	if s.Incompat&IncompatLogChain != 0 && s.Log.Block != 0 {
		if s.LogStart == 0 || uint64(s.LogStart) >= s.TotalBlocks || s.LogSeq == 0 || s.LogTag == 0 {
			return nil, bad("log chain start block %d sequence %d tag %d out of range", s.LogStart, s.LogSeq, s.LogTag)
		}
	}
	nd := le.Uint32(b[256:])
	if nd > MaxDevices {
		return nil, bad("%d device entries exceed %d", nd, MaxDevices)
	}
	for i := 0; i < int(nd); i++ {
		o := 264 + 32*i
		s.Devices = append(s.Devices, DeviceStats{
			ID: le.Uint64(b[o:]), ReadErrors: le.Uint64(b[o+8:]),
			WriteErrors: le.Uint64(b[o+16:]), CsumErrors: le.Uint64(b[o+24:]),
		})
	}
	ne := le.Uint16(b[400:])
	if ne > MaxErrorEntries {
		return nil, bad("%d error entries exceed %d", ne, MaxErrorEntries)
	}
	if err := checkReserved(b, int(nd), int(ne), s.Incompat&IncompatRootBackups != 0); err != nil {
		return nil, bad("%s", err)
	}
	if i := bytes.IndexByte(b[192:192+LabelSize], 0); i >= 0 && !allZero(b[192+i:192+LabelSize]) {
		return nil, bad("label is not NUL-padded: bytes follow its end at offset %d", 192+i)
	}
	for i := 0; i < int(ne); i++ {
		o := 408 + 24*i
		s.Errors = append(s.Errors, ErrorEntry{
			ID: le.Uint32(b[o:]), Count: le.Uint64(b[o+8:]), Last: int64(le.Uint64(b[o+16:])),
		})
	}
	if s.Incompat&IncompatRootBackups != 0 {
		if err := s.decodeBackups(b); err != nil {
			return nil, bad("%s", err)
		}
	}
	return s, nil
}

// decodeBackups decodes the root backup slots of b and bounds every
// pointer in them.
func (s *Super) decodeBackups(b []byte) error {
	for i := range s.Backups {
		o := rootBackupOff + i*rootBackupSize
		slot := b[o : o+rootBackupSize]
		g := Gen(le.Uint64(slot))
		if g == 0 {
			if !allZero(slot) {
				return fmt.Errorf("root backup slot %d is unused but not zero", i)
			}
			continue
		}
		if g > s.Gen || uint64(g%NumRootBackups) != uint64(i) {
			return fmt.Errorf("root backup slot %d holds generation %d (superblock at %d)", i, g, s.Gen)
		}
		rb := RootBackup{Gen: g}
		for j := range rb.Roots {
			ri, err := DecodeRootItem(slot[8+j*RootItemSize : 8+(j+1)*RootItemSize])
			if err != nil {
				return fmt.Errorf("root backup slot %d: %v", i, err)
			}
			if r := ri.Root; r.Block == 0 || uint64(r.Block) >= s.TotalBlocks || r.Level > MaxLevel || r.Gen > g {
				return fmt.Errorf("root backup of generation %d: tree %s at block %d gen %d level %d out of range", g, KnownTrees[j], r.Block, r.Gen, r.Level)
			}
			rb.Roots[j] = ri
		}
		s.Backups[i] = rb
	}
	return nil
}

// superReserved lists the byte ranges of a superblock that are reserved and
// must be zero, given nd device and ne error entries in use (the unused
// entries' slots are reserved too).
func superReserved(nd, ne int, backups bool) [][2]int {
	r := [][2]int{
		{52, 56},   // flags (reserved)
		{89, 96},   // after the root tree's level
		{177, 184}, // after the log tree's level
		{260, 264}, // after the device entry count
		{264 + 32*nd, 392},
		{392, 400},
		{402, 408}, // after the error entry count
		{408 + 24*ne, 1944},
		{1964, rootBackupOff},
		{rootBackupOff + NumRootBackups*rootBackupSize, BlockSize},
	}
	if !backups {
		r = append(r, [2]int{rootBackupOff, rootBackupOff + NumRootBackups*rootBackupSize})
	}
	for i := 0; i < ne; i++ {
		o := 408 + 24*i
		r = append(r, [2]int{o + 4, o + 8}) // an error entry's reserved u32
	}
	return r
}

// checkReserved says where a reserved range of superblock b is not zero.
func checkReserved(b []byte, nd, ne int, backups bool) error {
	for _, r := range superReserved(nd, ne, backups) {
		if r[0] >= r[1] {
			continue
		}
		if !allZero(b[r[0]:r[1]]) {
			return fmt.Errorf("reserved bytes %d..%d are not zero", r[0], r[1]-1)
		}
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Differs names the first field of the copy other that must agree with s
// between copies of one generation (everything but the copy's own block
// number), or returns "" when they agree.
func (s *Super) Differs(other *Super) string {
	switch {
	case s.FSID != other.FSID:
		return "filesystem UUID"
	case s.Gen != other.Gen:
		return "generation"
	case s.Major != other.Major || s.Minor != other.Minor:
		return "version"
	case s.TotalBlocks != other.TotalBlocks:
		return "total blocks"
	case s.FreeBlocks != other.FreeBlocks:
		return "free blocks"
	case s.Root != other.Root:
		return "root tree pointer"
	case s.Log != other.Log:
		return "log tree pointer"
	case s.Compat != other.Compat || s.RoCompat != other.RoCompat || s.Incompat != other.Incompat:
		return "feature flags"
	case s.RecoveryPasses != other.RecoveryPasses:
		return "recovery_passes_required"
	case s.ErrorsSilent != other.ErrorsSilent:
		return "errors_silent"
	case s.NextObjectID != other.NextObjectID:
		return "next object id"
	case s.Label != other.Label:
		return "label"
	case s.LogStart != other.LogStart || s.LogSeq != other.LogSeq || s.LogTag != other.LogTag:
		return "log chain start"
	case s.Backups != other.Backups:
		return "root backups"
	}
	return ""
}

// FitsDevice refuses a superblock describing more blocks than the device
// holding it has.
func (s *Super) FitsDevice(deviceBlocks uint64) error {
	if s.TotalBlocks > deviceBlocks {
		return corrupt(KindBadSuper, OwnerSuper, s.Block, "filesystem of %d blocks on a device of %d", s.TotalBlocks, deviceBlocks)
	}
	return nil
}

// CheckFeatures refuses a superblock whose feature bits this build cannot
// honour: unknown incompat bits always, unknown ro-compat bits for writing.
func (s *Super) CheckFeatures(readOnly bool) error {
	if u := s.Incompat &^ IncompatSupported; u != 0 {
		return corrupt(KindUnsupported, OwnerSuper, s.Block, "unknown incompat features %#x: refusing to mount", u)
	}
	if u := s.RoCompat &^ RoCompatSupported; u != 0 && !readOnly {
		return corrupt(KindUnsupported, OwnerSuper, s.Block, "unknown ro-compat features %#x: mount read-only", u)
	}
	return nil
}

// CountError bumps the counter for error id at time now.
func (s *Super) CountError(id uint32, n uint64, now time.Time) {
	for i := range s.Errors {
		if s.Errors[i].ID == id {
			s.Errors[i].Count += n
			s.Errors[i].Last = now.UnixNano()
			return
		}
	}
	if len(s.Errors) < MaxErrorEntries {
		s.Errors = append(s.Errors, ErrorEntry{ID: id, Count: n, Last: now.UnixNano()})
	}
}

// Silent reports whether error id is in errors_silent.
func (s *Super) Silent(id uint32) bool {
	return id < 256 && s.ErrorsSilent[id/64]&(1<<(id%64)) != 0
}

func (s *Super) String() string {
	return fmt.Sprintf("superblock %d gen %d fs %s", s.Block, s.Gen, s.FSID)
}
