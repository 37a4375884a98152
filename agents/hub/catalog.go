package hub

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
)

// Catalog is what the repository service asks the catalog: whether a job
// completed, the completed backups of a VM, every completed job.
// *catalog.Client implements it; it must be safe for concurrent use.
type Catalog interface {
	// Job returns one job; an unknown job is an error matching
	// backup.ErrNotFound.
	Job(ctx context.Context, id string) (backup.Job, error)
	// Jobs returns the jobs matching f (the service asks for completed
	// ones only).
	Jobs(ctx context.Context, f backup.JobFilter) ([]backup.Job, error)
	// Chains returns the completed backups of every disk of a VM in one
	// repository.
	Chains(ctx context.Context, vmUUID, repo string) ([]backup.Chain, error)
}

// CatalogProgress tells whether the catalog has applied everything
// BACKUP_EVENTS holds. The catalog is a view of the stream, and only a
// caught-up view may decide that a file is not a completed backup: a
// backup.completed stored but not yet applied would otherwise let the
// service delete a completed backup. Safe for concurrent use.
type CatalogProgress interface {
	// CaughtUp returns nil when every event stored in BACKUP_EVENTS has
	// been applied (and acknowledged) by the catalog; otherwise an error
	// saying why not: matching ErrCatalogBehind when events are pending, or
	// the error that kept it from knowing.
	CaughtUp(ctx context.Context) error
}

// ErrCatalogBehind: the catalog has not applied every event stored in
// BACKUP_EVENTS yet.
var ErrCatalogBehind = errors.New("catalog behind the event stream")

// ConsumerProgress is the CatalogProgress of a catalog's durable consumer
// on BACKUP_EVENTS. It reads the stream's last sequence first
// ($JS.API.STREAM.INFO.BACKUP_EVENTS), then the consumer
// ($JS.API.CONSUMER.INFO.BACKUP_EVENTS.<durable>); the hub role may call
// both. Caught up means: nothing left to deliver (NumPending 0), nothing
// delivered but unacknowledged (NumAckPending 0), and every message up to
// that last sequence acknowledged (the ack floor reached it). The catalog
// acknowledges an event only after the bbolt transaction that applied it
// committed, so every event stored before the call is then in the catalog.
//
// The ack floor is what makes it sound: the server may update a consumer's
// NumPending after it acknowledged the publish, so right after an event is
// stored a caught-up consumer can still say 0 pending, 0 unacknowledged
// (TestConsumerProgress's 100 publishes hit that in each of 9 runs without
// the floor check, nats-server 2.15 embedded); the stream's last sequence
// already counts the event.
type ConsumerProgress struct {
	js      jetstream.JetStream
	durable string
}

// NewConsumerProgress reads the consumer durable on js; "" means
// bus.ConsumerCatalog, the consumer of `sendense serve` and `catalog`.
func NewConsumerProgress(js jetstream.JetStream, durable string) *ConsumerProgress {
	if durable == "" {
		durable = bus.ConsumerCatalog
	}
	return &ConsumerProgress{js: js, durable: durable}
}

// CaughtUp implements CatalogProgress. A missing consumer (the catalog
// never ran) is not caught up: the error wraps jetstream.ErrConsumerNotFound.
// Without a deadline in ctx, JetStream's default request timeout applies.
func (p *ConsumerProgress) CaughtUp(ctx context.Context) error {
	st, err := p.js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		return fmt.Errorf("read stream %s: %w", bus.StreamEvents, err)
	}
	last := st.CachedInfo().State.LastSeq
	c, err := p.js.Consumer(ctx, bus.StreamEvents, p.durable)
	if err != nil {
		return fmt.Errorf("read catalog consumer %s on %s: %w", p.durable, bus.StreamEvents, err)
	}
	info := c.CachedInfo()
	if info.NumPending > 0 || info.NumAckPending > 0 || info.AckFloor.Stream < last {
		return fmt.Errorf("catalog consumer %s on %s: %d events not delivered, %d not acknowledged, acknowledged up to sequence %d of %d: %w",
			p.durable, bus.StreamEvents, info.NumPending, info.NumAckPending, info.AckFloor.Stream, last, ErrCatalogBehind)
	}
	return nil
}

// catalogWait bounds how long a request that needs the whole catalog
// (forget) waits for it to apply what the stream holds: a backup that just
// completed is acknowledged by the catalog within milliseconds, and a user
// who runs forget right after it should not get "try again".
const catalogWait = 15 * time.Second

// awaitCaughtUp calls p.CaughtUp until it succeeds, fails with anything but
// ErrCatalogBehind, or wait (or ctx) ends; then it returns the last error.
func awaitCaughtUp(ctx context.Context, p CatalogProgress, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		err := p.CaughtUp(ctx)
		if err == nil || !errors.Is(err, ErrCatalogBehind) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-t.C:
		}
	}
}
