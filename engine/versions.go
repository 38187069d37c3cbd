package engine

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/scrubd/scrubd/engine/format"
)

// Format versions (the bcachefs design). Each minor version of the
// on-disk format adds one feature: the feature bits it sets and the
// recovery passes an image upgraded to it needs before the feature holds
// everywhere on it. An image's minor version says which features it has:
// every row up to its minor. Upgrading sets the bits of the rows passed,
// together with the required passes, in one commit; the passes then run
// and their bits are cleared in a later commit, so a crash at any point
// of an upgrade leaves an image whose next mount runs the passes again.
//
// Adding a version is adding a row (and raising format.VersionMinor).

// FormatVersion is one row of the version table.
type FormatVersion struct {
	Minor uint16
	// Feature names what the version adds ("log_chain").
	Feature                    string
	Compat, RoCompat, Incompat uint64
	// Passes run after an upgrade to this version (recovery pass ids).
	Passes []uint
	// InUse says why the feature cannot be dropped from an image ("" if
	// it can); nil means the feature is in use whenever its bits are
	// set, so a downgrade past it is refused.
	InUse func(s *Snapshot) (string, error)
	// drop undoes what the feature leaves in the engine's state when a
	// downgrade clears its bits (under wmu).
	drop func(e *Engine)
}

// The version table.
var formatVersions = []FormatVersion{
	{Minor: 0, Feature: "base"},
	{Minor: 1, Feature: "log_chain", Incompat: format.IncompatLogChain, InUse: notInUse, drop: dropLogChain},
	{Minor: 2, Feature: "rmap_maps", Incompat: format.IncompatRmapMaps, Passes: []uint{PassRmapMaps}, InUse: rmapMapsInUse},
	{Minor: 3, Feature: "root_backups", Incompat: format.IncompatRootBackups, InUse: notInUse, drop: dropRootBackups},
	{Minor: 4, Feature: "xattr", RoCompat: format.RoCompatXattr, InUse: xattrInUse},
	{Minor: 5, Feature: "long_symlinks", Incompat: format.IncompatLongSymlinks, InUse: longSymlinksInUse},
	{Minor: 6, Feature: "large_xattrs", Incompat: format.IncompatLargeXattrs, InUse: largeXattrsInUse},
	{Minor: 7, Feature: "subvols", Incompat: format.IncompatSubvols, InUse: subvolsInUse},
	{Minor: 8, Feature: "snapshots", Incompat: format.IncompatSnapshots, InUse: snapshotsInUse},
}

func init() {
	for i, v := range formatVersions {
		if int(v.Minor) != i {
			panic("engine: the version table must list every minor version in order")
		}
	}
	if NewestMinor() != format.VersionMinor {
		panic("engine: the version table's newest row must be format.VersionMinor")
	}
}

// FormatVersions returns the version table, oldest first.
func FormatVersions() []FormatVersion { return formatVersions }

// NewestMinor is the newest minor version this build writes.
func NewestMinor() uint16 { return formatVersions[len(formatVersions)-1].Minor }

// bits returns the version's feature bits as (compat, ro_compat, incompat).
func (v FormatVersion) bits() (uint64, uint64, uint64) { return v.Compat, v.RoCompat, v.Incompat }

// Compatible reports whether an older build of the same major version
// still reads an image with the feature (it sets no incompat bit).
func (v FormatVersion) Compatible() bool { return v.Incompat == 0 }

// featuresUpTo returns the feature bits of every version up to minor.
func featuresUpTo(minor uint16) (compat, roCompat, incompat uint64) {
	for _, v := range formatVersions {
		if v.Minor <= minor {
			compat |= v.Compat
			roCompat |= v.RoCompat
			incompat |= v.Incompat
		}
	}
	return
}

// FeaturesInUse names the features of the table whose bits sb sets.
func FeaturesInUse(sb *format.Super) []string {
	out := []string{}
	for _, v := range formatVersions {
		c, r, i := v.bits()
		if c|r|i == 0 {
			continue
		}
		if sb.Compat&c == c && sb.RoCompat&r == r && sb.Incompat&i == i {
			out = append(out, v.Feature)
		}
	}
	return out
}

// ParseFormatVersion parses "MAJOR.MINOR" and refuses a version this
// build does not know.
func ParseFormatVersion(s string) (uint16, error) {
	maj, min, ok := strings.Cut(s, ".")
	a, err1 := strconv.ParseUint(maj, 10, 16)
	b, err2 := strconv.ParseUint(min, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("version %q: want MAJOR.MINOR, as %d.%d", s, format.VersionMajor, NewestMinor())
	}
	if a != format.VersionMajor || b > uint64(NewestMinor()) {
		return 0, fmt.Errorf("version %q: this build knows %d.0 to %d.%d", s, format.VersionMajor, format.VersionMajor, NewestMinor())
	}
	return uint16(b), nil
}

// VersionUpgrade is what a read-write open does with an image of an older
// minor version (bcachefs's version_upgrade).
type VersionUpgrade int

const (
	// UpgradeCompatible (the default) upgrades to the newest minor
	// version reached by adding only features an older build of the same
	// major version still reads (compat and ro-compat bits).
	UpgradeCompatible VersionUpgrade = iota
	// UpgradeNone never changes the version.
	UpgradeNone
	// UpgradeIncompatible upgrades to this build's newest version,
	// setting incompat bits: older builds can no longer mount the image.
	UpgradeIncompatible
)

var upgradeNames = []string{"compatible", "none", "incompatible"}

func (u VersionUpgrade) String() string {
	if int(u) < len(upgradeNames) {
		return upgradeNames[u]
	}
	return fmt.Sprintf("VersionUpgrade(%d)", int(u))
}

// ParseVersionUpgrade parses none, compatible or incompatible.
func ParseVersionUpgrade(s string) (VersionUpgrade, error) {
	for i, n := range upgradeNames {
		if s == n {
			return VersionUpgrade(i), nil
		}
	}
	return 0, fmt.Errorf("version upgrade %q: want none, compatible or incompatible", s)
}

// UpgradeTarget is the minor version a read-write open with policy u
// brings an image of minor version cur to (cur itself if none).
func UpgradeTarget(cur uint16, u VersionUpgrade) uint16 {
	if cur >= NewestMinor() {
		return cur // a newer build's image is never touched
	}
	switch u {
	case UpgradeIncompatible:
		return NewestMinor()
	case UpgradeCompatible:
		t := cur
		for _, v := range formatVersions[cur+1:] {
			if !v.Compatible() {
				break
			}
			t = v.Minor
		}
		return t
	}
	return cur
}

// VersionChange describes a change of an image's format version.
type VersionChange struct {
	From, To uint16
	// Added and Dropped name the features the change added or removed.
	Added, Dropped []string
	// Passes names the recovery passes the upgrade ran.
	Passes []string
}

// ErrFeatureInUse refuses a downgrade past a feature the image uses.
var ErrFeatureInUse = errors.New("feature in use")

// FeatureInUseError names the feature that refuses a downgrade.
type FeatureInUseError struct {
	Feature string
	Minor   uint16
	Why     string
}

func (e *FeatureInUseError) Error() string {
	return fmt.Sprintf("cannot downgrade below %d.%d: feature %s is in use: %s", format.VersionMajor, e.Minor, e.Feature, e.Why)
}

func (e *FeatureInUseError) Unwrap() error { return ErrFeatureInUse }

// upgradeOnOpen applies Options.VersionUpgrade to a read-write open.
func (e *Engine) upgradeOnOpen() error {
	cur := e.super.Minor
	t := UpgradeTarget(cur, e.opts.VersionUpgrade)
	if t == cur {
		return nil
	}
	ch, err := e.SetFormatVersion(context.Background(), t)
	if err != nil {
		return err
	}
	e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("upgraded the format from %d.%d to %d.%d (%s): added %v", format.VersionMajor, ch.From, format.VersionMajor, ch.To, e.opts.VersionUpgrade, ch.Added))
	return nil
}

// SetFormatVersion upgrades or downgrades the image to minor version
// target. An upgrade sets the features of the versions passed and the
// recovery passes they need in one durable commit, runs the passes and
// clears their bits; a crash before that leaves the bits for the next
// mount. A downgrade first makes sure no feature it drops is in use
// (FeatureInUseError) and then drops them all in one commit.
func (e *Engine) SetFormatVersion(ctx context.Context, target uint16) (VersionChange, error) {
	if e.opts.ReadOnly {
		return VersionChange{}, ErrReadOnly
	}
	cur := e.super.Minor
	ch := VersionChange{From: cur, To: target, Added: []string{}, Dropped: []string{}, Passes: []string{}}
	if target > NewestMinor() {
		return ch, fmt.Errorf("version %d.%d: this build knows up to %d.%d", format.VersionMajor, target, format.VersionMajor, NewestMinor())
	}
	if cur > NewestMinor() {
		return ch, fmt.Errorf("the image is of version %d.%d, newer than this build's %d.%d: only a newer build changes it", format.VersionMajor, cur, format.VersionMajor, NewestMinor())
	}
	switch {
	case target > cur:
		return ch, e.upgrade(ctx, &ch)
	case target < cur:
		return ch, e.downgrade(&ch)
	}
	return ch, nil
}

func (e *Engine) upgrade(ctx context.Context, ch *VersionChange) error {
	var passes uint64
	e.wmu.Lock()
	for _, v := range formatVersions[ch.From+1 : ch.To+1] {
		e.super.Compat |= v.Compat
		e.super.RoCompat |= v.RoCompat
		e.super.Incompat |= v.Incompat
		for _, p := range v.Passes {
			passes |= 1 << p
		}
		ch.Added = append(ch.Added, v.Feature)
	}
	e.super.Minor = ch.To
	e.super.RecoveryPasses |= passes
	e.txn.superDirty = true
	e.wmu.Unlock()
	// The version, its features and the passes they need are durable
	// together before any pass starts.
	if err := e.Sync(); err != nil {
		return fmt.Errorf("commit the upgrade to %d.%d: %w", format.VersionMajor, ch.To, err)
	}
	e.log.Info("format upgraded, running its recovery passes", "from", fmt.Sprintf("%d.%d", format.VersionMajor, ch.From), "to", fmt.Sprintf("%d.%d", format.VersionMajor, ch.To), "features", ch.Added)
	ran, err := e.runPasses(ctx, passes, false)
	ch.Passes = append(ch.Passes, ran...)
	if err != nil {
		return err
	}
	return e.Sync()
}

func (e *Engine) downgrade(ch *VersionChange) error {
	s := e.Pin()
	for i := int(ch.From); i > int(ch.To); i-- {
		v := formatVersions[i]
		why := "its feature bits are set"
		if v.InUse != nil {
			w, err := v.InUse(s)
			if err != nil {
				s.Release()
				return fmt.Errorf("is feature %s in use: %w", v.Feature, err)
			}
			why = w
		}
		if why != "" {
			s.Release()
			return &FeatureInUseError{Feature: v.Feature, Minor: v.Minor, Why: why}
		}
	}
	s.Release()
	e.wmu.Lock()
	for i := int(ch.From); i > int(ch.To); i-- {
		v := formatVersions[i]
		e.super.Compat &^= v.Compat
		e.super.RoCompat &^= v.RoCompat
		e.super.Incompat &^= v.Incompat
		if v.drop != nil {
			v.drop(e)
		}
		ch.Dropped = append(ch.Dropped, v.Feature)
	}
	e.super.Minor = ch.To
	e.txn.superDirty = true
	e.wmu.Unlock()
	return e.Sync()
}

func notInUse(*Snapshot) (string, error) { return "", nil }

// dropLogChain: without IncompatLogChain the log starts at the head
// block tagged with the generation (format 1.0); the open replayed the
// chain already, and no block of it carries a generation as its tag, so
// an older build finds an empty log. This build stops appending (an
// fsync commits) until an upgrade names a chain again.
func dropLogChain(e *Engine) {
	e.super.LogStart, e.super.LogSeq, e.super.LogTag = 0, 0, 0
	e.flog.named = 0
}

// dropRootBackups: nothing depends on the backups; the slots are zeroed.
func dropRootBackups(e *Engine) { e.super.Backups = [format.NumRootBackups]format.RootBackup{} }

// rmapMapsInUse: an image whose file data has mapped reverse mappings, or
// that keeps a scrub cursor, uses rmap_maps (a 1.1 build rejects both).
func rmapMapsInUse(s *Snapshot) (string, error) {
	t, ok := s.ScanTree(format.TreeRmap)
	if !ok {
		return "", nil
	}
	n := 0
	err := t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if k.Type == format.TypeRmapInode && len(v) == format.RmapMappedItemSize {
			n++
			return false
		}
		return true
	})
	if err != nil {
		return "", err
	}
	if n > 0 {
		return "file data's reverse mappings record the ranges they map (a 1.1 build rejects them): copy the files to a 1.1 image instead", nil
	}
	if _, ok, err := s.e.ScrubCursor(); err != nil {
		return "", err
	} else if ok {
		return "a scrub cursor is stored (a 1.1 build keeps none): finish or cancel the scrub", nil
	}
	return "", nil
}

// rmapMapsBatch bounds the file extent items one commit of the rmap_maps
// pass rewrites the records of (a variable for tests).
var rmapMapsBatch = 4096

// passRmapMaps writes into every file's reverse mapping record the part
// of the extent its file extent item maps (an upgrade to format 1.2). It
// is idempotent: a crash midway leaves its bit set and the next mount runs
// it from the start. It works in transactions of rmapMapsBatch items,
// reading the extent tree of the running transaction from the key after
// the last one done, and commits each. Damage in the extent tree, or an rmap tree the
// engine runs without, defers it (its bit stays set) until a repair.
func passRmapMaps(ctx context.Context, e *Engine) error {
	if e.super.Incompat&format.IncompatRmapMaps == 0 {
		return nil
	}
	if e.Degraded(StructRmap) {
		return &deferredPass{why: "the rmap tree is untrusted: the records are rewritten once it is rebuilt"}
	}
	from := format.Key{}
	total := 0
	for done := false; !done; {
		if err := ctx.Err(); err != nil {
			return err
		}
		var damage error
		err := e.Update(func(tx *Tx) error {
			etr, ok := tx.ReadTree(format.TreeExtent)
			if !ok {
				return fmt.Errorf("no extent tree: %w", format.ErrCorrupt)
			}
			n := 0
			done = true
			err := etr.Ascend(from, func(k format.Key, v []byte) bool {
				if k.Type != format.TypeFileExtent {
					return true
				}
				if n == rmapMapsBatch {
					from, done = k, false
					return false
				}
				fe, err := format.DecodeFileExtent(v)
				if err != nil {
					damage = fmt.Errorf("file extent item %s: %w", k, err)
					return false
				}
				tx.touched = true
				e.refMap(fe.Start, fe.Len, format.Owner{Inode: k.Obj, Offset: k.Off}, format.ExtentData, 0, mapOf(fe))
				n++
				return true
			})
			total += n
			if err != nil && errors.Is(err, format.ErrCorrupt) {
				damage = err
				return nil
			}
			return err
		})
		if err != nil {
			return err
		}
		if damage != nil {
			e.NoteDamage(damage)
			return &deferredPass{why: fmt.Sprintf("the extent tree is damaged (%v): the records are rewritten after its repair", damage)}
		}
		if !done {
			// One batch per commit: the pass never holds more than a
			// batch in memory, and its bit is set until the last one.
			if err := e.Sync(); err != nil {
				return err
			}
		}
	}
	e.log.Info("rmap_maps: reverse mappings rewritten with their mapped ranges", "records", total)
	return e.Sync()
}

// xattrInUse: an image that has the xattr tree (even empty: an older
// build would find a tree it does not know in the root tree) uses xattr.
func xattrInUse(s *Snapshot) (string, error) {
	if _, ok := s.Root(format.TreeXattr); ok {
		return "the image has an extended-attribute tree", nil
	}
	return "", nil
}

// longSymlinksInUse: a symlink target stored in chunks (longer than
// format.MaxSymlinkItem bytes) uses long_symlinks.
func longSymlinksInUse(s *Snapshot) (string, error) {
	t, ok := s.ScanTree(format.TreeInode)
	if !ok {
		return "", nil
	}
	found := false
	err := t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if k.Type == format.TypeSymlink && k.Aux > format.MaxSymlinkItem {
			found = true
			return false
		}
		return true
	})
	if err != nil {
		return "", err
	}
	if found {
		return "a symlink target is longer than " + fmt.Sprint(format.MaxSymlinkItem) + " bytes", nil
	}
	return "", nil
}

// largeXattrsInUse: an attribute value split into chunks (larger than
// one item holds) uses large_xattrs.
func largeXattrsInUse(s *Snapshot) (string, error) {
	t, ok := s.ScanTree(format.TreeXattr)
	if !ok {
		return "", nil
	}
	found := false
	err := t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		found = k.Type == format.TypeXattrChunk
		return !found
	})
	if err != nil {
		return "", err
	}
	if found {
		return "an extended attribute's value is larger than one item holds", nil
	}
	return "", nil
}

// snapshotsInUse: a snapshot (a subvolume with a parent UUID) or a fill
// item uses snapshots.
func snapshotsInUse(s *Snapshot) (string, error) {
	if t, ok := s.ScanTree(format.TreeSnapshot); ok {
		found := false
		if err := t.Ascend(format.Key{}, func(format.Key, []byte) bool { found = true; return false }); err != nil {
			return "", err
		}
		if found {
			return "a snapshot is being filled", nil
		}
	}
	t, ok := s.ScanTree(format.TreeSubvol)
	if !ok {
		return "", nil
	}
	found := false
	err := t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if k.Type == format.TypeSubvolItem {
			if it, err := format.DecodeSubvolItem(v); err != nil || !it.ParentUUID.IsZero() {
				found = true
			}
		}
		return !found
	})
	if err != nil {
		return "", err
	}
	if found {
		return "the image has snapshots", nil
	}
	return "", nil
}

// subvolsInUse: a subvolume item (one being reaped too) uses subvols.
func subvolsInUse(s *Snapshot) (string, error) {
	t, ok := s.ScanTree(format.TreeSubvol)
	if !ok {
		return "", nil
	}
	found := false
	err := t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		found = k.Type == format.TypeSubvolItem
		return !found
	})
	if err != nil {
		return "", err
	}
	if found {
		return "the image has subvolumes", nil
	}
	return "", nil
}

// HasFeatures reports whether the image's format version has every
// ro-compat and incompat bit given: a feature is used only on an image
// whose version has it (mkfs makes the newest; an open upgrades as
// Options.VersionUpgrade allows, `scrubd upgrade` offline), never turned
// on by its first use.
func (e *Engine) HasFeatures(roCompat, incompat uint64) bool {
	e.lockReader()
	defer e.wmu.RUnlock()
	return e.super.RoCompat&roCompat == roCompat && e.super.Incompat&incompat == incompat
}
