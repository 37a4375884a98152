package catalog

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendense/sendense/internal/promreg"
)

// Poison stages, the "stage" label of sendense_catalog_events_poison_total.
const (
	// StageSchema: the payload failed schemas.Decode (malformed JSON, wrong
	// types, unknown fields, too large, a completed without a change id).
	StageSchema = "schema"
	// StageStore: store.Apply refused the event (ErrIncomplete,
	// ErrInconsistent, ErrInvalid).
	StageStore = "store"
)

// metrics are the consumer's Prometheus collectors. A nil *metrics
// records nothing.
type metrics struct {
	applied    prometheus.Counter
	duplicates prometheus.Counter
	poison     *prometheus.CounterVec
	batches    prometheus.Counter
	failures   prometheus.Counter
	batchSize  prometheus.Histogram
	commit     prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		applied: promreg.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sendense_catalog_events_applied_total",
			Help: "Events applied to the catalog and acknowledged.",
		})),
		duplicates: promreg.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sendense_catalog_events_duplicate_total",
			Help: "Redelivered or repeated events the catalog had already applied (a no-op), acknowledged.",
		})),
		poison: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sendense_catalog_events_poison_total",
			Help: "Events recorded as poison and terminated, by stage (schema, store).",
		}, []string{"stage"})),
		batches: promreg.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sendense_catalog_batches_total",
			Help: "Batches committed to the catalog in one bbolt transaction each.",
		})),
		failures: promreg.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sendense_catalog_commit_failures_total",
			Help: "Batches whose transaction failed; their events were negatively acknowledged.",
		})),
		batchSize: promreg.Register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sendense_catalog_batch_events",
			Help:    "Messages per batch.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11), // 1 .. 1024
		})),
		commit: promreg.Register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sendense_catalog_commit_seconds",
			Help:    "Time of one store.Apply: the batch's bbolt transaction, synced to disk.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 100 µs .. 3.3 s
		})),
	}
	// Every stage is exported from the start, at 0, so an alert on poison
	// works before the first one.
	for _, s := range []string{StageSchema, StageStore} {
		m.poison.WithLabelValues(s)
	}
	return m
}

func (m *metrics) batch(n int, seconds float64) {
	if m == nil {
		return
	}
	m.batches.Inc()
	m.batchSize.Observe(float64(n))
	m.commit.Observe(seconds)
}

func (m *metrics) countApplied(applied, dups int) {
	if m == nil {
		return
	}
	m.applied.Add(float64(applied))
	m.duplicates.Add(float64(dups))
}

func (m *metrics) countPoison(stage string) {
	if m == nil {
		return
	}
	m.poison.WithLabelValues(stage).Inc()
}

func (m *metrics) failure() {
	if m == nil {
		return
	}
	m.failures.Inc()
}
