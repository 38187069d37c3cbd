package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

var peers = []string{"ext4", "xfs", "btrfs"}

// target is one side of a row: a filesystem (or a bare pass) the commands
// run on.
type target struct {
	name   string
	dir    string  // its work directory or mountpoint
	server *server // the FUSE server behind dir, if any
}

// op is one row's commands: build gives the command for a target, or
// errSkip (with the reason in the note) when the target has none.
type op struct {
	name   string
	unit   string // the metric's unit, "" for none
	higher bool   // a higher metric is better
	build  func(t target) (spec, string, error)
}

// runGroup runs ops on mine and the peers, round-robin --rounds times
// (each round: every op on scrubd, then every op on each peer), and adds a
// row per op and peer.
func (b *bench) runGroup(group string, ops []op, mine target, others []target) error {
	all := append([]target{mine}, others...)
	type key struct{ op, t int }
	samples := map[key][]sample{}
	failed := map[key]string{}
	for r := 0; r < b.cfg.rounds; r++ {
		for ti, t := range all {
			for oi, o := range ops {
				k := key{oi, ti}
				if _, bad := failed[k]; bad {
					continue
				}
				s, note, err := o.build(t)
				if errors.Is(err, errSkip) {
					failed[k] = note
					continue
				}
				if err == nil {
					b.logf("round %d/%d: %s on %s", r+1, b.cfg.rounds, o.name, t.name)
					var sm sample
					sm, err = b.measure(s)
					if err == nil {
						samples[k] = append(samples[k], sm)
						continue
					}
				}
				if b.ctx.Err() != nil {
					return b.ctx.Err()
				}
				if !b.cfg.keepGoing {
					return err
				}
				b.logf("%v", err)
				failed[k] = "failed: " + err.Error()
			}
		}
	}
	for oi, o := range ops {
		for ti := 1; ti < len(all); ti++ {
			pn, skipped := failed[key{oi, ti}]
			if skipped && strings.HasPrefix(pn, "not applicable") {
				continue
			}
			rw := &row{Group: group, Name: o.name, Peer: all[ti].name, Unit: o.unit, HigherBetter: o.higher}
			sn, sbad := failed[key{oi, 0}]
			switch {
			case sbad:
				rw.Note = "scrubd: " + sn
			case skipped:
				rw.Note = all[ti].name + ": " + pn
			}
			rw.Scrubd = summarize(samples[key{oi, 0}])
			rw.Other = summarize(samples[key{oi, ti}])
			if o.unit == "" {
				rw.Scrubd.Metric, rw.Other.Metric = 0, 0
			}
			rw.Note = strings.ReplaceAll(rw.Note, b.dir, "WORKDIR")
			rw.ratios()
			b.rows = append(b.rows, rw)
		}
	}
	return nil
}

// notApplicable is the note of a target an op does not run on; the row
// is left out.
func notApplicable() (spec, string, error) { return spec{}, "not applicable", errSkip }

// run is the whole benchmark.
func (b *bench) run() error {
	c := b.cfg
	b.header = machineHeader()
	var err error
	if b.self, err = os.Executable(); err != nil {
		return err
	}
	if b.dir, err = os.MkdirTemp(c.workdir, "scrubd-compare-"); err != nil {
		return err
	}
	b.later("remove the temporary directory", func() error { return os.RemoveAll(b.dir) })
	b.logf("working in %s", b.dir)
	bin, err := b.mkdir("bin")
	if err != nil {
		return err
	}
	b.bin = c.scrubd
	if b.bin == "" {
		b.bin = filepath.Join(bin, "scrubd")
		b.logf("building scrubd")
		if _, err := b.sh("go", "build", "-o", b.bin, "github.com/scrubd/scrubd/cmd/scrubd"); err != nil {
			return err
		}
	}
	if v, err := b.sh(b.bin, "version"); err == nil {
		b.header.Scrubd = strings.TrimSpace(v)
	}
	if _, err := exec.LookPath("xfs_scrub"); err != nil {
		b.notes = append(b.notes, "xfs_scrub is not installed (xfsprogs): no xfs_scrub rows")
	}
	size := c.imageGB
	if size == 0 {
		size = b.autoImageGB()
	}
	b.header.ImageGiB = size
	b.header.Config = c.describe()
	if err := b.checkSpace(size); err != nil {
		return err
	}
	if err := b.makeImages(size); err != nil {
		return err
	}
	if err := b.fill(); err != nil {
		return err
	}
	if c.wants("check") {
		if err := b.checkRows(); err != nil {
			return err
		}
	}
	if c.wants("scrub") {
		if err := b.scrubRows(); err != nil {
			return err
		}
	}
	if c.wants("fio") {
		if err := b.fioRows(); err != nil {
			return err
		}
	}
	if c.wants("tree") {
		if err := b.treeRows(); err != nil {
			return err
		}
	}
	if c.wants("copy") {
		if err := b.copyRows(); err != nil {
			return err
		}
	}
	b.header.Finished = time.Now().UTC().Format(time.RFC3339)
	return b.print(os.Stdout)
}

// autoImageGB sizes the images from the content: the files, the tree and
// its copy, the fio files, with half again for metadata and slack.
func (b *bench) autoImageGB() int {
	c := b.cfg
	bytes := float64(c.files)*(4096+4096) + float64(c.treeFiles)*2*(2048+4096) +
		float64(2*c.fragMiB)*(1<<20) + c.dataGB*(1<<30) +
		float64(c.seqMiB+4*c.readerMiB+c.randMiB)*(1<<20) +
		float64(2*c.seqMiB)*(1<<20) // the copy group's source and its copy (ext4 copies the bytes)
	gb := int(bytes*1.5/(1<<30)) + 2
	return max(gb, 2)
}

// checkSpace refuses a run whose images do not fit in the working
// directory's filesystem: the images are written whole, and a host that
// runs out of space under a loop device fails its writes (the peer's
// filesystem turns read-only mid-run) rather than any one row.
func (b *bench) checkSpace(sizeGB int) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(b.dir, &st); err != nil {
		return fmt.Errorf("free space of %s: %w", b.dir, err)
	}
	free := int64(st.Bavail) * st.Bsize
	need := int64(1+len(peers))*int64(sizeGB)<<30 + 1<<30 // the images, and a GiB for the rest
	if free < need {
		return fmt.Errorf("the %d images of %d GiB need %.1f GiB in %s, which has %.1f GiB free: free space, pass a smaller --image-gb, or --workdir elsewhere",
			1+len(peers), sizeGB, float64(need)/(1<<30), b.dir, float64(free)/(1<<30))
	}
	return nil
}

// makeImages makes the scrubd image and the three peers' images on loop
// devices. All four files are reserved whole, so that none of them has
// the host filesystem allocate blocks during a run; by default they are
// written with zeros (scrubd's by mkfs --preallocate), because a block
// reserved but never written (fallocate's unwritten extent) costs the
// host a metadata commit at its first write and fsync — a cost a
// copy-on-write filesystem, whose writes go to new places, would pay on
// every fsync and one that overwrites in place would not.
func (b *bench) makeImages(sizeGB int) error {
	b.images, b.loops, b.mnts, b.server = map[string]string{}, map[string]string{}, map[string]string{}, map[string]*server{}
	imgDir, err := b.mkdir("images")
	if err != nil {
		return err
	}
	size := int64(sizeGB) << 30
	for _, name := range append([]string{"scrubd"}, peers...) {
		img := filepath.Join(imgDir, name+".img")
		b.images[name] = img
		if b.mnts[name], err = b.mkdir("mnt", name); err != nil {
			return err
		}
		written := b.cfg.prealloc != "fallocate"
		if name == "scrubd" {
			args := []string{"mkfs", img, "--size", fmt.Sprintf("%dG", sizeGB)}
			if written {
				args = append(args, "--preallocate")
			}
			if _, err := b.sh(b.bin, args...); err != nil {
				return err
			}
		}
		if written && name != "scrubd" {
			if err := zeroFill(img, size); err != nil {
				return err
			}
		} else if err := fallocate(img, size); err != nil {
			return err
		}
		if name == "scrubd" {
			continue
		}
		out, err := b.sh("losetup", "--find", "--show", img)
		if err != nil {
			return err
		}
		dev := strings.TrimSpace(out)
		b.loops[name] = dev
		b.later("losetup -d "+dev, func() error { return cleanupCmd("losetup", "-d", dev) })
		mkfs := map[string][]string{
			"ext4":  {"mkfs.ext4", "-q", "-F", dev},
			"xfs":   {"mkfs.xfs", "-q", "-f", dev},
			"btrfs": {"mkfs.btrfs", "-q", "-f", dev},
		}[name]
		if _, err := b.sh(mkfs[0], mkfs[1:]...); err != nil {
			return err
		}
		mnt := b.mnts[name]
		b.later("umount "+mnt, func() error { return b.umount(mnt) })
	}
	if b.mnts["loopback"], err = b.mkdir("mnt", "loopback"); err != nil {
		return err
	}
	b.mnts[hostLoopback], err = b.mkdir("mnt", hostLoopback)
	return err
}

// hostLoopback is the go-fuse loopback over a directory of the host's own
// filesystem (the working directory's), a peer of the fsync row only: a
// FUSE server whose fsync is one bare fdatasync of a host file, the floor
// for any FUSE filesystem's fsync on this host. The "loopback" peer sits
// on the ext4 image, so its fsync could only be slower than ext4's.
const hostLoopback = "loopback-host"

// zeroFill writes size bytes of zeros to p, flushed.
func zeroFill(p string, size int64) error {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return fmt.Errorf("write zeros to %s: %w", p, err)
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

func fallocate(p string, size int64) error {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		return fmt.Errorf("fallocate %s: %w", p, err)
	}
	return f.Close()
}

// mounted says whether something is mounted on dir.
func mounted(dir string) bool {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func (b *bench) mountPeer(name string) error {
	if mounted(b.mnts[name]) {
		return nil
	}
	_, err := b.sh("mount", b.loops[name], b.mnts[name])
	return err
}

// umount unmounts a peer if it is mounted (lazily if it stays busy).
func (b *bench) umount(dir string) error {
	if !mounted(dir) {
		return nil
	}
	if err := cleanupCmd("umount", dir); err != nil {
		if err2 := cleanupCmd("umount", "-l", dir); err2 != nil {
			return err
		}
	}
	return nil
}

func (b *bench) mountScrubd() error {
	if s := b.server["scrubd"]; s != nil {
		select {
		case <-s.done:
		default:
			return nil
		}
	}
	s, err := b.startServer("scrubd mount", b.mnts["scrubd"], "mounted ", b.bin, "mount", b.images["scrubd"], b.mnts["scrubd"])
	if err != nil {
		return err
	}
	b.server["scrubd"] = s
	return nil
}

func (b *bench) umountScrubd() error {
	s := b.server["scrubd"]
	if s == nil {
		return nil
	}
	b.server["scrubd"] = nil
	return stopServer(s)
}

// fill writes the content into all four filesystems at once, then
// unmounts them.
func (b *bench) fill() error {
	if err := b.mountScrubd(); err != nil {
		return err
	}
	for _, p := range peers {
		if err := b.mountPeer(p); err != nil {
			return err
		}
	}
	b.logf("writing the content (%d + %d files, 2 × %d MiB fragmented, %.2f GiB data) into scrubd, ext4, XFS and btrfs", b.cfg.files, b.cfg.treeFiles, b.cfg.fragMiB, b.cfg.dataGB)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	stats := make([]contentStats, 4)
	for i, name := range append([]string{"scrubd"}, peers...) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stats[i], errs[i] = populate(b.ctx, b.cfg, b.mnts[name])
			if errs[i] != nil {
				errs[i] = fmt.Errorf("writing the content into %s: %w", name, errs[i])
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	b.content = stats[0]
	b.logf("content written in %s", time.Since(start).Round(time.Second))
	if err := b.umountScrubd(); err != nil {
		return err
	}
	for _, p := range peers {
		if err := b.umount(b.mnts[p]); err != nil {
			return err
		}
	}
	return nil
}

// checkRows: the offline checks, on the unmounted images.
func (b *bench) checkRows() error {
	o := op{name: "check", build: func(t target) (spec, string, error) {
		argv := map[string][]string{
			"scrubd": {b.bin, "fsck", b.images["scrubd"]},
			"ext4":   {"e2fsck", "-fn", b.loops["ext4"]},
			"xfs":    {"xfs_repair", "-n", b.loops["xfs"]},
			"btrfs":  {"btrfs", "check", "--readonly", b.loops["btrfs"]},
		}[t.name]
		return spec{label: "check " + t.name, argv: argv, dropCache: true}, "", nil
	}}
	var others []target
	for _, p := range peers {
		others = append(others, target{name: p})
	}
	return b.runGroup("check", []op{o}, target{name: "scrubd"}, others)
}

// scrubReport is the part of scrubd's JSON report the rows read.
type scrubReport struct {
	BytesVerified int64  `json:"bytes_verified"`
	Status        string `json:"status"`
	Complete      bool   `json:"complete"`
}

func scrubdMetric(out []byte, s *sample) error {
	var r scrubReport
	if err := json.Unmarshal(out, &r); err != nil {
		return err
	}
	if !r.Complete {
		return fmt.Errorf("the scrub did not complete (status %s)", r.Status)
	}
	s.Bytes = r.BytesVerified
	if s.Bytes > 0 {
		s.Metric = float64(s.Bytes) / (1 << 20) / s.Wall
	}
	return nil
}

// scrubRows: the data and metadata scrubs, offline on the image and online
// on the mount, beside btrfs scrub, xfs_scrub and a bare crc32c pass.
func (b *bench) scrubRows() error {
	for _, p := range []string{"xfs", "btrfs"} {
		if err := b.mountPeer(p); err != nil {
			return err
		}
	}
	xfsScrub := b.probeXfsScrub()
	fileBytes := b.content.FileBytes
	btrfsScrub := spec{label: "btrfs scrub", argv: []string{"btrfs", "scrub", "start", "-B", b.mnts["btrfs"]}, dropCache: true,
		metric: func(_ []byte, s *sample) error {
			s.Bytes = fileBytes
			s.Metric = float64(fileBytes) / (1 << 20) / s.Wall
			return nil
		}}
	crc := spec{label: "crc32c pass", argv: []string{b.self, helperCRC, b.images["scrubd"]}, dropCache: true,
		metric: func(out []byte, s *sample) error {
			f := strings.Fields(string(out))
			if len(f) < 1 {
				return fmt.Errorf("no output")
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			s.Bytes = n
			s.Metric = float64(n) / (1 << 20) / s.Wall
			return err
		}}
	mk := func(mode string, data bool) op {
		name := "metadata scrub, " + mode
		if data {
			name = "data scrub, " + mode
		}
		o := op{name: name, build: func(t target) (spec, string, error) {
			switch t.name {
			case "scrubd":
				argv := []string{b.bin, "scrub", t.dir, "--json"}
				if data {
					argv = append(argv, "--data")
				}
				return spec{label: name + " scrubd", argv: argv, server: t.server, dropCache: true, metric: scrubdMetric}, "", nil
			case "btrfs":
				return btrfsScrub, "", nil
			case "crc32c":
				if !data {
					return notApplicable()
				}
				return crc, "", nil
			case "xfs":
				if data {
					return notApplicable()
				}
				if xfsScrub != "" {
					return spec{}, "skipped: xfs_scrub does not run here (see the notes)", errSkip
				}
				return spec{label: "xfs_scrub -n", argv: []string{"xfs_scrub", "-n", b.mnts["xfs"]}, dropCache: true}, "", nil
			}
			return notApplicable()
		}}
		if data {
			o.unit, o.higher = "MiB/s", true
		}
		return o
	}
	others := []target{{name: "btrfs"}, {name: "crc32c"}, {name: "xfs"}}
	if err := b.runGroup("scrub", []op{mk("offline", true), mk("offline", false)}, target{name: "scrubd", dir: b.images["scrubd"]}, others); err != nil {
		return err
	}
	if err := b.mountScrubd(); err != nil {
		return err
	}
	return b.runGroup("scrub", []op{mk("online", true), mk("online", false)}, target{name: "scrubd", dir: b.mnts["scrubd"], server: b.server["scrubd"]}, others)
}

// probeXfsScrub runs xfs_scrub once; it returns why it cannot run here, or
// "".
func (b *bench) probeXfsScrub() string {
	if _, err := exec.LookPath("xfs_scrub"); err != nil {
		return "xfs_scrub is not installed (Debian package xfsprogs)"
	}
	out, err := b.sh("xfs_scrub", "-n", b.mnts["xfs"])
	if err != nil {
		note := "xfs_scrub -n does not run here (the kernel's online scrub, CONFIG_XFS_ONLINE_SCRUB, is likely missing): " + strings.ReplaceAll(lastLines(out, 2), b.dir, "WORKDIR")
		b.notes = append(b.notes, note)
		return note
	}
	return ""
}

// fioJSON is the part of fio's JSON output the rows read.
type fioJSON struct {
	Jobs []struct {
		Read  fioDir `json:"read"`
		Write fioDir `json:"write"`
	} `json:"jobs"`
}

type fioDir struct {
	IOPS    float64 `json:"iops"`
	BWBytes float64 `json:"bw_bytes"`
	IOBytes int64   `json:"io_bytes"`
}

func fioMetric(pick func(j fioJSON) (float64, int64)) func([]byte, *sample) error {
	return func(out []byte, s *sample) error {
		// fio may print notes before the JSON.
		if i := strings.IndexByte(string(out), '{'); i > 0 {
			out = out[i:]
		}
		var j fioJSON
		if err := json.Unmarshal(out, &j); err != nil {
			return err
		}
		if len(j.Jobs) == 0 {
			return fmt.Errorf("fio reported no job")
		}
		s.Metric, s.Bytes = pick(j)
		return nil
	}
}

var (
	iopsWrite = fioMetric(func(j fioJSON) (float64, int64) { return j.Jobs[0].Write.IOPS, j.Jobs[0].Write.IOBytes })
	bwWrite   = fioMetric(func(j fioJSON) (float64, int64) {
		return j.Jobs[0].Write.BWBytes / (1 << 20), j.Jobs[0].Write.IOBytes
	})
	bwRead = fioMetric(func(j fioJSON) (float64, int64) { return j.Jobs[0].Read.BWBytes / (1 << 20), j.Jobs[0].Read.IOBytes })
)

// fioRows: the file workloads through the scrubd mount, beside the kernel
// filesystems and the go-fuse loopback over a directory on the ext4 image.
func (b *bench) fioRows() error {
	c := b.cfg
	for _, p := range peers {
		if err := b.mountPeer(p); err != nil {
			return err
		}
	}
	if err := b.mountScrubd(); err != nil {
		return err
	}
	orig := filepath.Join(b.mnts["ext4"], "loopback")
	if err := os.MkdirAll(orig, 0o755); err != nil {
		return err
	}
	lb, err := b.startServer("loopback", b.mnts["loopback"], "Mounted!", b.self, helperLoopback, b.mnts["loopback"], orig)
	if err != nil {
		return err
	}
	b.server["loopback"] = lb
	hostDir, err := b.mkdir("loopback-host-dir")
	if err != nil {
		return err
	}
	lbh, err := b.startServer(hostLoopback, b.mnts[hostLoopback], "Mounted!", b.self, helperLoopback, b.mnts[hostLoopback], hostDir)
	if err != nil {
		return err
	}
	b.server[hostLoopback] = lbh
	mine := target{name: "scrubd", dir: filepath.Join(b.mnts["scrubd"], "work"), server: b.server["scrubd"]}
	others := []target{{name: "ext4"}, {name: "xfs"}, {name: "btrfs"}, {name: "loopback", server: lb}, {name: hostLoopback, server: lbh}}
	for i := range others {
		others[i].dir = filepath.Join(b.mnts[others[i].name], "work")
	}
	b.logf("writing the fio files")
	for _, t := range append([]target{mine}, others...) {
		if err := os.MkdirAll(t.dir, 0o755); err != nil {
			return err
		}
		for i := 0; i < 4 && t.name != hostLoopback; i++ {
			if err := writeFile(b.ctx, filepath.Join(t.dir, fmt.Sprintf("r%d.dat", i)), int64(c.readerMiB)<<20, uint64(1000+i)); err != nil {
				return err
			}
		}
		if err := writeFile(b.ctx, filepath.Join(t.dir, "rand.dat"), int64(c.randMiB)<<20, 2000); err != nil {
			return err
		}
	}
	common := []string{"--ioengine=psync", "--fallocate=none", "--output-format=json"}
	fio := func(args ...string) []string { return append(append([]string{"fio"}, common...), args...) }
	syncAfter := func(dir string) func() error { return func() error { return syncDir(dir) } }
	rand := func(fsync bool) func(t target) (spec, string, error) {
		return func(t target) (spec, string, error) {
			args := []string{"--name=rand", "--directory=" + t.dir, "--filename=rand.dat", fmt.Sprintf("--size=%dm", c.randMiB),
				"--bs=4k", "--rw=randwrite", fmt.Sprintf("--runtime=%d", c.runtimeS), "--time_based"}
			switch {
			case fsync && t.name == "loopback", !fsync && t.name == hostLoopback:
				return notApplicable()
			case fsync:
				args = append(args, "--fsync=1")
			}
			return spec{label: "randwrite " + t.name, argv: fio(args...), server: t.server, metric: iopsWrite, post: syncAfter(t.dir)}, "", nil
		}
	}
	seqFile := func(t target) string { return filepath.Join(t.dir, "seq.dat") }
	readers := make([]string, 4)
	for i := range readers {
		readers[i] = fmt.Sprintf("r%d.dat", i)
	}
	// fsyncOnly: the host loopback is a peer of the fsync row alone.
	fsyncOnly := func(build func(t target) (spec, string, error)) func(t target) (spec, string, error) {
		return func(t target) (spec, string, error) {
			if t.name == hostLoopback {
				return notApplicable()
			}
			return build(t)
		}
	}
	ops := []op{
		{name: "fsync randwrite 4k", unit: "IOPS", higher: true, build: rand(true)},
		{name: "buffered randwrite 4k", unit: "IOPS", higher: true, build: rand(false)},
		{name: fmt.Sprintf("seq write %d MiB", c.seqMiB), unit: "MiB/s", higher: true, build: fsyncOnly(func(t target) (spec, string, error) {
			return spec{label: "seq write " + t.name, server: t.server, metric: bwWrite,
				argv: fio("--name=seqw", "--directory="+t.dir, "--filename=seq.dat", fmt.Sprintf("--size=%dm", c.seqMiB), "--bs=1m", "--rw=write", "--end_fsync=1"),
				pre: func() error {
					if err := os.Remove(seqFile(t)); err != nil && !os.IsNotExist(err) {
						return err
					}
					return syncDir(t.dir)
				}}, "", nil
		})},
		{name: fmt.Sprintf("seq read %d MiB", c.seqMiB), unit: "MiB/s", higher: true, build: fsyncOnly(func(t target) (spec, string, error) {
			return spec{label: "seq read " + t.name, server: t.server, metric: bwRead, dropCache: true,
				argv: fio("--name=seqr", "--directory="+t.dir, "--filename=seq.dat", fmt.Sprintf("--size=%dm", c.seqMiB), "--bs=1m", "--rw=read")}, "", nil
		})},
		{name: "1 reader, 4 files", unit: "MiB/s", higher: true, build: fsyncOnly(func(t target) (spec, string, error) {
			return spec{label: "1 reader " + t.name, server: t.server, metric: bwRead, dropCache: true,
				argv: fio("--name=r", "--directory="+t.dir, "--filename="+strings.Join(readers, ":"), "--file_service_type=sequential",
					fmt.Sprintf("--size=%dm", 4*c.readerMiB), "--bs=1m", "--rw=read")}, "", nil
		})},
		{name: "4 readers, 4 files", unit: "MiB/s", higher: true, build: fsyncOnly(func(t target) (spec, string, error) {
			args := []string{"--group_reporting", "--directory=" + t.dir, "--bs=1m", "--rw=read", fmt.Sprintf("--size=%dm", c.readerMiB)}
			for i, r := range readers {
				args = append(args, fmt.Sprintf("--name=r%d", i), "--filename="+r)
			}
			return spec{label: "4 readers " + t.name, server: t.server, metric: bwRead, dropCache: true, argv: fio(args...)}, "", nil
		})},
	}
	return b.runGroup("fio", ops, mine, others)
}

// treeRows: cp -a of the tree, then find, ls -lR and rm -rf of the copy.
func (b *bench) treeRows() error {
	for _, p := range peers {
		if err := b.mountPeer(p); err != nil {
			return err
		}
	}
	if err := b.mountScrubd(); err != nil {
		return err
	}
	mine := target{name: "scrubd", dir: b.mnts["scrubd"], server: b.server["scrubd"]}
	var others []target
	for _, p := range peers {
		others = append(others, target{name: p, dir: b.mnts[p]})
	}
	n := b.cfg.treeFiles
	mk := func(name string, argv func(t target) []string, pre, post bool) op {
		return op{name: fmt.Sprintf("%s (%d files)", name, n), build: func(t target) (spec, string, error) {
			s := spec{label: name + " " + t.name, argv: argv(t), dir: t.dir, server: t.server}
			if pre {
				s.pre = func() error {
					if err := os.RemoveAll(filepath.Join(t.dir, "tree.copy")); err != nil {
						return err
					}
					return syncDir(t.dir)
				}
			}
			if post {
				s.post = func() error { return syncDir(t.dir) }
			}
			return s, "", nil
		}}
	}
	ops := []op{
		mk("cp -a", func(target) []string { return []string{"cp", "-a", "tree", "tree.copy"} }, true, true),
		mk("find", func(target) []string { return []string{"find", "tree.copy"} }, false, false),
		mk("ls -lR", func(target) []string { return []string{"ls", "-lR", "tree.copy"} }, false, false),
		mk("rm -rf", func(target) []string { return []string{"rm", "-rf", "tree.copy"} }, false, true),
	}
	return b.runGroup("tree", ops, mine, others)
}

// header describes the machine and the run.
type header struct {
	Date     string `json:"date"`
	Finished string `json:"finished,omitempty"`
	NProc    int    `json:"nproc"`
	MemGiB   string `json:"memory"`
	Kernel   string `json:"kernel"`
	Scrubd   string `json:"scrubd,omitempty"`
	ImageGiB int    `json:"image_gib"`
	Config   string `json:"config"`
}

func machineHeader() header {
	h := header{Date: time.Now().UTC().Format(time.RFC3339), NProc: runtime.NumCPU()}
	if raw, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(raw))
	}
	if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				h.MemGiB = fmt.Sprintf("%.1f GiB", kb/(1<<20))
			}
		}
	}
	return h
}

func (c config) describe() string {
	s := fmt.Sprintf("rounds %d, %d files, tree %d files, 2 × %d MiB fragmented, %.3g GiB data, seq %d MiB, readers 4 × %d MiB, random writes on %d MiB for %d s, drop caches %v, images %s",
		c.rounds, c.files, c.treeFiles, c.fragMiB, c.dataGB, c.seqMiB, c.readerMiB, c.randMiB, c.runtimeS, c.dropCaches, c.prealloc)
	if c.quick {
		s = "quick: " + s
	}
	return s
}
