package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/repair"
)

// Prometheus metrics (Options.MetricsAddr): counters the server keeps of
// its scrub runs, and gauges and counters read from the mount's status at
// each scrape (a collector, so a scrape always sees the engine as it is).
// Every series carries the filesystem's UUID as a constant label.

type metrics struct {
	reg      *prometheus.Registry
	runs     *prometheus.CounterVec
	findings *prometheus.CounterVec
	repairs  *prometheus.CounterVec
	bytes    prometheus.Counter
	items    prometheus.Counter
	duration prometheus.Histogram
	srv      *http.Server
	ln       net.Listener
	done     chan struct{}
}

func newMetrics(s *Server) *metrics {
	labels := prometheus.Labels{"uuid": s.uuid}
	m := &metrics{reg: prometheus.NewRegistry(), done: make(chan struct{})}
	m.runs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scrubd_scrub_runs_total",
		Help: "Scrub runs by result (clean, corrected, uncorrected, failed, interrupted).", ConstLabels: labels}, []string{"result"})
	m.findings = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scrubd_scrub_findings_total",
		Help: "Findings of scrub runs by structure and finding name.", ConstLabels: labels}, []string{"structure", "name"})
	m.repairs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scrubd_scrub_repairs_total",
		Help: "Findings repaired by scrub runs, by structure and finding name.", ConstLabels: labels}, []string{"structure", "name"})
	m.bytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "scrubd_scrub_data_bytes_verified_total",
		Help: "File data read and verified against its checksums by scrub runs.", ConstLabels: labels})
	m.items = prometheus.NewCounter(prometheus.CounterOpts{Name: "scrubd_scrub_items_checked_total",
		Help: "Metadata items checked by scrub runs.", ConstLabels: labels})
	m.duration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "scrubd_scrub_duration_seconds",
		Help: "Duration of scrub runs.", ConstLabels: labels, Buckets: prometheus.ExponentialBuckets(0.01, 4, 10)})
	for _, result := range []string{repair.StatusClean, repair.StatusCorrected, repair.StatusUncorrected, "failed", "interrupted"} {
		m.runs.WithLabelValues(result) // present at 0 from the start
	}
	m.reg.MustRegister(m.runs, m.findings, m.repairs, m.bytes, m.items, m.duration, &statusCollector{s: s, labels: labels},
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// observe counts a finished run.
func (m *metrics) observe(last *Last) {
	m.runs.WithLabelValues(last.Status).Inc()
	m.duration.Observe(last.DurationS)
	rep := last.Report
	if rep == nil {
		return
	}
	m.bytes.Add(float64(rep.BytesVerified))
	for _, st := range rep.Structures {
		m.items.Add(float64(st.Checked))
		for _, f := range st.Findings {
			m.findings.WithLabelValues(st.Name, f.Name).Inc()
			if f.Repaired {
				m.repairs.WithLabelValues(st.Name, f.Name).Inc()
			}
		}
	}
}

// serve listens on addr and serves /metrics until close.
func (m *metrics) serve(addr string, log interface{ Warn(string, ...any) }) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	m.ln = ln
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(m.done)
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server stopped", "err", err)
		}
	}()
	return nil
}

func (m *metrics) close() {
	if m.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m.srv.Shutdown(ctx)
	<-m.done
}

// statusCollector reads the mount's status at each scrape.
type statusCollector struct {
	s      *Server
	labels prometheus.Labels
}

func (c *statusCollector) desc(name, help string, vars ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, vars, c.labels)
}

// Describe sends nothing: an unchecked collector (its series vary with
// the structures and error counters present).
func (c *statusCollector) Describe(chan<- *prometheus.Desc) {}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Status()
	emit := func(vt prometheus.ValueType, name, help string, v float64, labels ...string) {
		var vars, vals []string
		for i := 0; i+1 < len(labels); i += 2 {
			vars, vals = append(vars, labels[i]), append(vals, labels[i+1])
		}
		ch <- prometheus.MustNewConstMetric(c.desc(name, help, vars...), vt, v, vals...)
	}
	gauge := func(name, help string, v float64, labels ...string) {
		emit(prometheus.GaugeValue, name, help, v, labels...)
	}
	counter := func(name, help string, v float64, labels ...string) {
		emit(prometheus.CounterValue, name, help, v, labels...)
	}
	running, paused := 0.0, 0.0
	progress := 0.0
	if st.Progress != nil {
		running = 1
		progress = st.Progress.Percent / 100
		if st.Progress.Paused {
			paused = 1
		}
	}
	gauge("scrubd_scrub_running", "1 while a scrub runs (paused or not).", running)
	gauge("scrubd_scrub_paused", "1 while the running scrub is paused.", paused)
	gauge("scrubd_scrub_progress_ratio", "The running scrub's progress through its first pass, 0 to 1.", progress)
	if st.NextScrub != nil {
		gauge("scrubd_scrub_next_timestamp_seconds", "When the next scheduled scrub starts.", float64(st.NextScrub.Unix()))
	}
	if st.LastScrub != nil {
		gauge("scrubd_scrub_last_end_timestamp_seconds", "When the last scrub ended.", float64(st.LastScrub.Finished.Unix()))
	}
	for _, h := range st.Health {
		for _, state := range []string{"healthy", "sick", "unchecked"} {
			v := 0.0
			if h.State == state {
				v = 1
			}
			gauge("scrubd_structure_health", "1 for each structure's current state.", v, "structure", h.Name, "state", state)
		}
	}
	readOnly := 0.0
	if st.ReadOnly {
		readOnly = 1
	}
	gauge("scrubd_read_only", "1 when the engine refuses writes.", readOnly)
	gauge("scrubd_blocks", "Blocks of the image.", float64(st.TotalBlocks))
	gauge("scrubd_free_blocks", "Free blocks at the last commit.", float64(st.FreeBlocks))
	gauge("scrubd_generation", "The last committed generation.", float64(st.Generation))
	counter("scrubd_commits_total", "Commits since mount.", float64(st.Commits))
	counter("scrubd_fsync_logged_total", "fsyncs made durable by a log write.", float64(st.FsyncLogged))
	counter("scrubd_fsync_full_total", "fsyncs made durable by a full commit.", float64(st.FsyncFull))
	counter("scrubd_io_errors_total", "Device and checksum errors since mount.", float64(st.ReadErrors), "kind", "read")
	counter("scrubd_io_errors_total", "Device and checksum errors since mount.", float64(st.WriteErrors), "kind", "write")
	counter("scrubd_io_errors_total", "Device and checksum errors since mount.", float64(st.CsumErrors), "kind", "checksum")
	counter("scrubd_unverified_reads_total", "Data blocks served without verification: damage to the csum tree hid their checksums.", float64(st.UnverifiedReads))
	gauge("scrubd_commit_hold_seconds", "How long the last commit held writers out.", st.CommitHoldMs/1000)
	gauge("scrubd_commit_hold_max_seconds", "The longest commit hold since mount.", st.CommitHoldMaxMs/1000)
	gauge("scrubd_commit_write_seconds", "How long the last commit's write-out took.", st.CommitWriteMs/1000)
	gauge("scrubd_writer_hold_max_seconds", "The longest hold of the writer lock since mount.", st.WriterHoldMaxMs/1000)
	es := c.s.fsys.Engine().Stats()
	counter("scrubd_delayed_refs_queued_total", "Reference updates queued.", float64(es.Refs.Queued))
	counter("scrubd_delayed_refs_applied_total", "Reference updates applied to the trees.", float64(es.Refs.Applied))
	counter("scrubd_delayed_refs_merged_total", "Reference updates that cancelled out.", float64(es.Refs.Merged))
	gauge("scrubd_delayed_refs_queue", "Reference updates waiting.", float64(es.QueuedRefs))
	// The superblock's error counters: every finding ever counted.
	pin := c.s.fsys.Engine().Pin()
	errs := pin.Super().Errors
	pin.Release()
	for _, x := range errs {
		counter("scrubd_error_counter", "The superblock's error counters, by finding name.", float64(x.Count), "name", engine.ErrorID(x.ID).Name())
	}
	if st.Notify != nil {
		counter("scrubd_notifications_total", "Notifications by outcome.", float64(st.Notify.Delivered), "outcome", "delivered")
		counter("scrubd_notifications_total", "Notifications by outcome.", float64(st.Notify.Failed), "outcome", "failed")
		counter("scrubd_notifications_total", "Notifications by outcome.", float64(st.Notify.Dropped), "outcome", "dropped")
	}
}
