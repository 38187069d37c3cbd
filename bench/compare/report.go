package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
)

// row is one line of the table: an op, scrubd beside one peer.
type row struct {
	Group        string  `json:"group"`
	Name         string  `json:"row"`
	Peer         string  `json:"peer"`
	Unit         string  `json:"unit,omitempty"`
	HigherBetter bool    `json:"higher_is_better,omitempty"`
	Scrubd       figures `json:"scrubd"`
	Other        figures `json:"peer_figures"`
	Ratio        ratios  `json:"ratio"`
	Note         string  `json:"note,omitempty"`
}

// figures are the medians of one side's runs, and the runs.
type figures struct {
	sample
	Runs []sample `json:"runs"`
}

// ratios are scrubd / peer; 0 when a side has no figure.
type ratios struct {
	Metric float64 `json:"metric,omitempty"`
	Wall   float64 `json:"wall"`
	CPU    float64 `json:"cpu"`
	Peak   float64 `json:"peak"`
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func summarize(runs []sample) figures {
	f := figures{Runs: runs}
	pick := func(g func(sample) float64) float64 {
		var xs []float64
		for _, r := range runs {
			xs = append(xs, g(r))
		}
		return median(xs)
	}
	f.Wall = pick(func(s sample) float64 { return s.Wall })
	f.CPU = pick(func(s sample) float64 { return s.CPU })
	f.KthreadCPU = pick(func(s sample) float64 { return s.KthreadCPU })
	f.MaxRSS = int64(pick(func(s sample) float64 { return float64(s.MaxRSS) }))
	f.Metric = pick(func(s sample) float64 { return s.Metric })
	f.Bytes = int64(pick(func(s sample) float64 { return float64(s.Bytes) }))
	return f
}

func div(a, b float64) float64 {
	if a == 0 || b == 0 {
		return 0
	}
	return a / b
}

func (r *row) ratios() {
	s, p := r.Scrubd, r.Other
	r.Ratio = ratios{Metric: div(s.Metric, p.Metric), Wall: div(s.Wall, p.Wall), CPU: div(s.CPU, p.CPU), Peak: div(float64(s.MaxRSS), float64(p.MaxRSS))}
}

// target is one of the goals, judged from the rows.
type goal struct {
	Goal     string  `json:"goal"`
	Measured string  `json:"measured"`
	Value    float64 `json:"value"`
	Met      *bool   `json:"met"` // null: no figure to judge
}

func (b *bench) find(group, namePrefix, peer string) *row {
	for _, r := range b.rows {
		if r.Group == group && strings.HasPrefix(r.Name, namePrefix) && (peer == "" || r.Peer == peer) && r.Note == "" {
			return r
		}
	}
	return nil
}

// goals judges the per-row targets.
func (b *bench) goals() []goal {
	var out []goal
	add := func(name, how string, v float64, ok func(float64) bool) {
		g := goal{Goal: name, Measured: how, Value: round3(v)}
		if v != 0 && !math.IsNaN(v) && !math.IsInf(v, 0) {
			m := ok(v)
			g.Met = &m
		}
		out = append(out, g)
	}
	get := func(r *row, f func(*row) float64) float64 {
		if r == nil {
			return 0
		}
		return f(r)
	}
	atLeast := func(t float64) func(float64) bool { return func(v float64) bool { return v >= t } }
	atMost := func(t float64) func(float64) bool { return func(v float64) bool { return v <= t } }
	metric := func(r *row) float64 { return r.Ratio.Metric }
	cpu := func(r *row) float64 { return r.Ratio.CPU }

	add("data scrub offline ≥ 1.5× btrfs scrub throughput", "throughput ratio",
		get(b.find("scrub", "data scrub, offline", "btrfs"), metric), atLeast(1.5))
	add("data scrub CPU per byte ≤ 2× a bare crc32c pass", "(CPU/byte scrubd) / (CPU/byte crc32c)",
		get(b.find("scrub", "data scrub, offline", "crc32c"), func(r *row) float64 {
			return div(div(r.Scrubd.CPU, float64(r.Scrubd.Bytes)), div(r.Other.CPU, float64(r.Other.Bytes)))
		}), atMost(2))
	on, off := b.find("scrub", "data scrub, online", ""), b.find("scrub", "data scrub, offline", "")
	var onOff float64
	if on != nil && off != nil {
		onOff = div(on.Scrubd.Metric, off.Scrubd.Metric)
	}
	add("data scrub online within 20% of offline", "online / offline throughput", onOff, atLeast(0.8))
	add("check CPU ≤ xfs_repair -n", "CPU ratio vs xfs_repair -n", get(b.find("check", "check", "xfs"), cpu), atMost(1))
	add("check CPU ≤ 3× e2fsck -fn (stretch)", "CPU ratio vs e2fsck -fn", get(b.find("check", "check", "ext4"), cpu), atMost(3))
	add(fmt.Sprintf("check peak memory ≤ 64 MiB at 200k files (here %d files)", b.content.Files+b.content.TreeFiles), "scrubd fsck peak MiB",
		get(b.find("check", "check", ""), func(r *row) float64 { return float64(r.Scrubd.MaxRSS) / 1024 }), atMost(64))
	r1, r4 := b.find("fio", "1 reader", ""), b.find("fio", "4 readers", "")
	var scale float64
	if r1 != nil && r4 != nil {
		scale = div(r4.Scrubd.Metric, r1.Scrubd.Metric)
	}
	add("4 readers ≥ 1.8× one reader", "scrubd 4 readers / 1 reader throughput", scale, atLeast(1.8))
	add("buffered random writes ≥ go-fuse loopback", "IOPS ratio", get(b.find("fio", "buffered randwrite", "loopback"), metric), atLeast(1))
	add("sequential write ≥ 70% of go-fuse loopback", "MiB/s ratio", get(b.find("fio", "seq write", "loopback"), metric), atLeast(0.7))
	add("sequential read ≥ 70% of go-fuse loopback", "MiB/s ratio", get(b.find("fio", "seq read", "loopback"), metric), atLeast(0.7))
	add("fsync random writes ≥ ext4", "IOPS ratio", get(b.find("fio", "fsync randwrite", "ext4"), metric), atLeast(1))
	add("fsync random writes ≥ XFS", "IOPS ratio", get(b.find("fio", "fsync randwrite", "xfs"), metric), atLeast(1))
	return out
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// document is what --json prints.
type document struct {
	Header  header       `json:"header"`
	Content contentStats `json:"content"`
	Rows    []*row       `json:"rows"`
	Goals   []goal       `json:"goals"`
	Notes   []string     `json:"notes,omitempty"`
}

// render prints the table of a document a --json run wrote.
func render(path string, w io.Writer) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc document
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	b := &bench{header: doc.Header, content: doc.Content, rows: doc.Rows, notes: doc.Notes}
	return b.print(w)
}

// print writes the table (or the JSON document) to w.
func (b *bench) print(w io.Writer) error {
	goals := b.goals()
	if b.cfg.asJSON {
		doc := document{b.header, b.content, b.rows, goals, b.notes}
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return e.Encode(doc)
	}
	h := b.header
	fmt.Fprintf(w, "scrubd compare, %s (finished %s)\n", h.Date, h.Finished)
	fmt.Fprintf(w, "machine: %d CPUs, %s memory, kernel %s; scrubd %s\n", h.NProc, h.MemGiB, h.Kernel, h.Scrubd)
	fmt.Fprintf(w, "config: %s; images %d GiB each\n", h.Config, h.ImageGiB)
	fmt.Fprintf(w, "content: %d + %d files, %.2f GiB of file data (%.2f GiB in the fragmented and data files)\n",
		b.content.Files, b.content.TreeFiles, float64(b.content.FileBytes)/(1<<30), float64(b.content.DataBytes)/(1<<30))
	fmt.Fprintln(w, "figures: medians of the rounds of one run; ratio = scrubd / peer")
	fmt.Fprintln(w, "  CPU s = user+sys from the child's rusage, plus the FUSE server's CPU during the run")
	fmt.Fprintln(w, "  kthr s = CPU of all kernel threads during the run (loop devices, writeback, btrfs scrub workers;")
	fmt.Fprintln(w, "    on a shared machine also others' share); not part of CPU s")
	fmt.Fprintln(w, "  peak MiB = the child's max RSS plus the FUSE server's peak RSS during the run")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "row\tpeer\tunit\tscrubd\tpeer\tratio\twall s\tpeer\tratio\tCPU s\tpeer\tratio\tkthr s\tpeer\tpeak MiB\tpeer\tratio\t")
	last := ""
	for _, r := range b.rows {
		if r.Group != last && last != "" {
			fmt.Fprintln(tw, "\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t")
		}
		last = r.Group
		if r.Note != "" && r.Scrubd.Wall == 0 && r.Other.Wall == 0 {
			fmt.Fprintf(tw, "%s\t%s\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n", r.Name, r.Peer)
			continue
		}
		m := func(v float64) string {
			if v == 0 {
				return "-"
			}
			return fmtNum(v)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			r.Name, r.Peer, r.Unit, m(r.Scrubd.Metric), m(r.Other.Metric), m(r.Ratio.Metric),
			m(r.Scrubd.Wall), m(r.Other.Wall), m(r.Ratio.Wall),
			m(r.Scrubd.CPU), m(r.Other.CPU), m(r.Ratio.CPU), m(r.Scrubd.KthreadCPU), m(r.Other.KthreadCPU),
			m(float64(r.Scrubd.MaxRSS)/1024), m(float64(r.Other.MaxRSS)/1024), m(r.Ratio.Peak))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var notes []string
	for _, r := range b.rows {
		if r.Note != "" {
			notes = append(notes, fmt.Sprintf("%s vs %s: %s", r.Name, r.Peer, r.Note))
		}
	}
	notes = append(notes, b.notes...)
	if len(notes) > 0 {
		fmt.Fprintln(w, "\nnotes:")
		for _, n := range notes {
			fmt.Fprintf(w, "  %s\n", n)
		}
	}
	fmt.Fprintln(w, "\ngoals:")
	gw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, g := range goals {
		verdict := "no figure"
		if g.Met != nil {
			verdict = map[bool]string{true: "met", false: "missed"}[*g.Met]
		}
		fmt.Fprintf(gw, "  %s\t%s\t%s\t%s\n", g.Goal, g.Measured, fmtNum(g.Value), verdict)
	}
	return gw.Flush()
}

func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}
