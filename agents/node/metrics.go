package node

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendense/sendense/internal/promreg"
	"github.com/sendense/sendense/schemas"
)

// Job outcomes, the "outcome" label of sendense_agent_jobs_total.
const (
	// OutcomeCompleted: backup.completed was published.
	OutcomeCompleted = "completed"
	// OutcomeFailed: an attempt ended in backup.failed (retried or not).
	OutcomeFailed = "failed"
	// OutcomeRejected: the request was refused with backup.rejected.
	OutcomeRejected = "rejected"
)

// metrics are the agent's Prometheus collectors. A nil *metrics records
// nothing.
type metrics struct {
	jobs         *prometheus.CounterVec
	running      prometheus.Gauge
	ready        prometheus.Gauge
	bytesRead    prometheus.Counter
	bytesWritten prometheus.Counter
	duration     prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		jobs: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sendense_agent_jobs_total",
			Help: "Backup attempts that ended, by outcome (completed, failed, rejected).",
		}, []string{"outcome"})),
		running: promreg.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sendense_agent_jobs_running",
			Help: "Backups running now, holding their VM's lease.",
		})),
		ready: promreg.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sendense_agent_ready",
			Help: "1 while the agent takes requests, 0 while it waits for JetStream to store again.",
		})),
		bytesRead: promreg.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sendense_agent_read_bytes_total",
			Help: "Bytes read from source disks by completed backups.",
		})),
		bytesWritten: promreg.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sendense_agent_written_bytes_total",
			Help: "Bytes written to targets by completed backups.",
		})),
		duration: promreg.Register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sendense_agent_job_seconds",
			Help:    "Time from taking the VM's lease to backup.completed, for completed backups.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 16), // 1 s .. 9 h
		})),
	}
	// Every outcome is exported from the start, at 0, so a rate() or an
	// alert on failures works before the first one.
	for _, o := range []string{OutcomeCompleted, OutcomeFailed, OutcomeRejected} {
		m.jobs.WithLabelValues(o)
	}
	return m
}

func (m *metrics) setReady(ok bool) {
	if m == nil {
		return
	}
	if ok {
		m.ready.Set(1)
	} else {
		m.ready.Set(0)
	}
}

func (m *metrics) outcome(o string) {
	if m == nil {
		return
	}
	m.jobs.WithLabelValues(o).Inc()
}

// started counts a job as running; the returned func, called once when
// it ends, stops counting it.
func (m *metrics) started() (done func()) {
	if m == nil {
		return func() {}
	}
	m.running.Inc()
	return m.running.Dec
}

func (m *metrics) completed(c *schemas.Completed, took time.Duration) {
	if m == nil {
		return
	}
	m.jobs.WithLabelValues(OutcomeCompleted).Inc()
	for _, d := range c.Disks {
		m.bytesRead.Add(float64(d.BytesRead))
		m.bytesWritten.Add(float64(d.BytesWritten))
	}
	m.duration.Observe(took.Seconds())
}
