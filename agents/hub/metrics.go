package hub

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendense/sendense/internal/promreg"
)

// Reconciliation round outcomes, the "result" label of
// sendense_repo_reconcile_rounds_total.
const (
	// RoundDone: the catalog was caught up and every orphan found was
	// removed or reported kept.
	RoundDone = "done"
	// RoundSkipped: the round removed nothing because the catalog was
	// behind the event stream or did not answer, or a lease could not be
	// read.
	RoundSkipped = "skipped"
)

// metrics are the repository service's Prometheus collectors. A nil
// *metrics records nothing.
type metrics struct {
	files  *prometheus.CounterVec
	bytes  *prometheus.CounterVec
	rounds *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		files: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sendense_repo_reconciled_files_total",
			Help: "Files reconciliation removed (partial files of failed attempts, temporary files of crashed creates), by repository.",
		}, []string{"repository"})),
		bytes: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sendense_repo_reconciled_bytes_total",
			Help: "Bytes allocated on disk by the files reconciliation removed, by repository.",
		}, []string{"repository"})),
		rounds: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sendense_repo_reconcile_rounds_total",
			Help: "Reconciliation rounds (periodic and repo check), by result: done or skipped.",
		}, []string{"result"})),
	}
	for _, r := range []string{RoundDone, RoundSkipped} {
		m.rounds.WithLabelValues(r)
	}
	return m
}

// initRepository exports a repository's counters at 0 from the start.
func (m *metrics) initRepository(name string) {
	if m == nil {
		return
	}
	m.files.WithLabelValues(name)
	m.bytes.WithLabelValues(name)
}

func (m *metrics) removed(repo string, bytes int64) {
	if m == nil {
		return
	}
	m.files.WithLabelValues(repo).Inc()
	m.bytes.WithLabelValues(repo).Add(float64(bytes))
}

func (m *metrics) round(result string) {
	if m == nil {
		return
	}
	m.rounds.WithLabelValues(result).Inc()
}
