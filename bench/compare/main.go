// Command compare measures scrubd beside ext4, XFS and btrfs on the same
// content: the offline check, the data and metadata scrubs, and the file
// workloads (fio, sequential I/O, parallel readers, tree operations) through
// the FUSE mount, and prints a table of scrubd/peer ratios with the CPU time
// and peak memory beside the wall time.
//
//	sudo go run ./bench/compare [--quick] [--rounds N] [--json] ...
//
// It builds scrubd from the module once (or takes --scrubd), makes a scrubd
// image and ext4, XFS and btrfs images attached to loop devices, writes the
// same content into each (--files small files, two 1 GiB files written
// interleaved in small chunks so they fragment, --data-gb of file data, a
// --tree-files tree for the tree operations), then runs every row's commands
// round-robin, --rounds times: scrubd, then each peer in turn, so load on a
// shared machine falls on both sides alike. Each figure is the median of its
// rounds. See README.md for what each row runs and how CPU and memory are
// counted.
//
// It needs root (loop devices, mounts); it installs nothing and names the
// Debian packages that are missing. Everything it creates — mounts, loop
// devices, the processes it starts, its temporary directory — is removed on
// every exit path, Ctrl-C included.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// config is the command line.
type config struct {
	rounds     int
	files      int
	treeFiles  int
	fragMiB    int
	dataGB     float64
	imageGB    int
	seqMiB     int
	readerMiB  int
	randMiB    int
	runtimeS   int
	quick      bool
	asJSON     bool
	only       string
	scrubd     string
	workdir    string
	dropCaches bool
	// prealloc: "written" (every image written whole with zeros before
	// mkfs: no run makes the host convert unwritten extents) or
	// "fallocate" (reserved but unwritten, as before).
	prealloc  string
	keepGoing bool
	fromJSON  string
}

func main() {
	// Hidden helper modes: the command runs itself as a child for the
	// crc32c pass and the loopback server, so their CPU and memory come
	// from a child's rusage like every other figure.
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case helperCRC:
			os.Exit(crcMain(os.Args[2:]))
		case helperLoopback:
			os.Exit(loopbackMain(os.Args[2:]))
		}
	}
	var c config
	flag.IntVar(&c.rounds, "rounds", 3, "run every row's commands this many times, interleaved (the table shows medians)")
	flag.IntVar(&c.files, "files", 200000, "small files in the content (the check rows)")
	flag.IntVar(&c.treeFiles, "tree-files", 50000, "files in the tree the cp -a / find / ls -lR / rm -rf rows copy")
	flag.IntVar(&c.fragMiB, "frag-mib", 1024, "size of each of the two fragmented files, MiB")
	flag.Float64Var(&c.dataGB, "data-gb", 2, "GiB of file data for the scrub rows (files of 64 MiB)")
	flag.IntVar(&c.imageGB, "image-gb", 0, "size of each image, GiB (0: from the content)")
	flag.IntVar(&c.seqMiB, "seq-mib", 1024, "size of the sequential write and read, MiB")
	flag.IntVar(&c.readerMiB, "reader-mib", 256, "size of each of the 4 files of the readers rows, MiB")
	flag.IntVar(&c.randMiB, "rand-mib", 256, "size of the file of the random-write rows, MiB")
	flag.IntVar(&c.runtimeS, "runtime", 20, "seconds each random-write fio run lasts")
	flag.BoolVar(&c.quick, "quick", false, "a small smoke configuration (a few thousand files, tens of MB, one round) that finishes in minutes")
	flag.BoolVar(&c.asJSON, "json", false, "print the results as JSON instead of a table")
	flag.StringVar(&c.only, "only", "", "run only these groups, comma-separated: check, scrub, fio, tree, copy")
	flag.StringVar(&c.scrubd, "scrubd", "", "use this scrubd binary instead of building ./cmd/scrubd")
	flag.StringVar(&c.workdir, "workdir", "", "make the temporary directory (images, mounts) under this directory (default: $TMPDIR)")
	flag.BoolVar(&c.dropCaches, "drop-caches", true, "drop the page cache before each run of the check, scrub and read rows")
	flag.StringVar(&c.prealloc, "prealloc", "written", "how the image files are reserved: written (zeros, like mkfs --preallocate) or fallocate (unwritten extents, whose first write costs the host a metadata commit)")
	flag.BoolVar(&c.keepGoing, "keep-going", true, "when one row fails, note it and go on with the others")
	flag.StringVar(&c.fromJSON, "from-json", "", "print the table of a document an earlier --json run wrote to this file (needs no root; runs nothing)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run ./bench/compare [flags]   (as root)\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	if c.quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		quick := map[string]func(){
			"rounds":     func() { c.rounds = 1 },
			"files":      func() { c.files = 3000 },
			"tree-files": func() { c.treeFiles = 2000 },
			"frag-mib":   func() { c.fragMiB = 16 },
			"data-gb":    func() { c.dataGB = 1.0 / 16 },
			"seq-mib":    func() { c.seqMiB = 64 },
			"reader-mib": func() { c.readerMiB = 16 },
			"rand-mib":   func() { c.randMiB = 16 },
			"runtime":    func() { c.runtimeS = 3 },
		}
		for name, f := range quick {
			if !set[name] {
				f()
			}
		}
	}
	if c.rounds < 1 || c.files < 0 || c.treeFiles < 0 || c.fragMiB < 1 || c.dataGB < 0 || c.seqMiB < 1 || c.readerMiB < 1 || c.randMiB < 1 || c.runtimeS < 1 {
		fmt.Fprintln(os.Stderr, "compare: --rounds, --frag-mib, --seq-mib, --reader-mib, --rand-mib and --runtime must be at least 1; --files, --tree-files and --data-gb not negative")
		os.Exit(2)
	}
	for _, g := range splitList(c.only) {
		if !validGroup[g] {
			fmt.Fprintf(os.Stderr, "compare: --only %q: unknown group (known: check, scrub, fio, tree)\n", g)
			os.Exit(2)
		}
	}
	if c.fromJSON != "" {
		if err := render(c.fromJSON, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "compare: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "compare: needs root (it attaches loop devices and mounts ext4, XFS and btrfs): run it with sudo")
		os.Exit(1)
	}
	if missing := missingPackages(); len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "compare: missing tools; install the Debian packages: apt-get install -y %s\n", strings.Join(missing, " "))
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	b := &bench{cfg: c, ctx: ctx}
	err := b.run()
	// Read before stop, which cancels the context too.
	interrupted := ctx.Err() != nil
	stop()
	// A second Ctrl-C during the clean-up would leave mounts behind.
	signal.Ignore(os.Interrupt, syscall.SIGTERM)
	if cerr := b.cleanup(); cerr != nil {
		fmt.Fprintf(os.Stderr, "compare: clean-up: %v\n", cerr)
		if err == nil {
			err = cerr
		}
	}
	if err != nil && len(b.rows) > 0 {
		// Print the rows measured until then.
		b.header.Finished = "incomplete"
		b.print(os.Stdout)
	}
	if err != nil {
		if interrupted {
			fmt.Fprintln(os.Stderr, "compare: interrupted; everything it made was removed")
			os.Exit(130)
		}
		fmt.Fprintf(os.Stderr, "compare: %v\n", err)
		os.Exit(1)
	}
}

var validGroup = map[string]bool{"check": true, "scrub": true, "fio": true, "tree": true, "copy": true}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// wants says whether group g is to run.
func (c config) wants(g string) bool {
	l := splitList(c.only)
	if len(l) == 0 {
		return true
	}
	for _, x := range l {
		if x == g {
			return true
		}
	}
	return false
}

// tools maps each tool the command runs to its Debian package.
var tools = map[string]string{
	"mkfs.ext4": "e2fsprogs", "e2fsck": "e2fsprogs",
	"mkfs.xfs": "xfsprogs", "xfs_repair": "xfsprogs",
	"mkfs.btrfs": "btrfs-progs", "btrfs": "btrfs-progs",
	"fio":         "fio",
	"fusermount3": "fuse3",
	"losetup":     "mount", "mount": "mount", "umount": "mount",
	"cp": "coreutils", "ls": "coreutils", "rm": "coreutils", "sync": "coreutils",
	"find": "findutils", "df": "coreutils", "sh": "dash",
	"go": "golang-go",
}

func missingPackages() []string {
	pkgs := map[string]bool{}
	for t, p := range tools {
		if _, err := exec.LookPath(t); err != nil {
			pkgs[p] = true
		}
	}
	var out []string
	for p := range pkgs {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// errSkip marks a row that cannot run here (the reason is its note).
var errSkip = errors.New("skipped")
