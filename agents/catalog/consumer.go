package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

// Consumer defaults.
const (
	// DefaultMaxBatch is how many delivered messages one transaction takes
	// at most. Batches only grow this big under a backlog; then a bigger
	// transaction pays the pages it rewrites per bucket and the two syncs
	// of a bbolt commit once for more events (about 0.22 pages of 8 KiB
	// per event at 1024; 4096 measured no faster, and neither did 2048,
	// while 512 was slower). It stays under half of
	// bus.CatalogMaxAckPending, as PullMaxMessages is twice it. Under a
	// backlog the writer spends about 80 % of its time in Apply (mostly
	// the syncs), about 5 % acking and 5 % waiting for the reader (make
	// bench-catalog, SENDENSE_BENCH_DEBUG=1): acking on a goroutine of its
	// own, or handing batches over sooner, measured no faster.
	DefaultMaxBatch = 1024
	// DefaultNakDelay is how long a batch whose transaction failed waits
	// before it is redelivered, and how long the consumer pauses after such
	// a failure.
	DefaultNakDelay = time.Second
	// maxReasonLen bounds the reason sent with a TERM.
	maxReasonLen = 512
	// stopTimeout bounds the wait for the consume subscription to close
	// at shutdown.
	stopTimeout = 5 * time.Second
)

// Options tune Run. The zero value gives the defaults.
type Options struct {
	// Durable is the consumer's durable name. Default bus.ConsumerCatalog
	// ("sendense-catalog"); a second catalog replica uses its own.
	Durable string
	// MaxBatch caps the messages applied in one bbolt transaction.
	// Default DefaultMaxBatch (1024).
	MaxBatch int
	// AckWait overrides the consumer's ack wait (bus.CatalogAckWait,
	// 30 s, when 0): how long a message delivered to a catalog that died
	// before acking waits until it is delivered again.
	AckWait time.Duration
	// NakDelay is the redelivery delay of a batch whose transaction
	// failed. Default DefaultNakDelay (1 s).
	NakDelay time.Duration
	// AttemptTimeout bounds one try to create the consumer while its
	// stream or the cluster is not there yet (bus.AwaitOptions). Default
	// bus.AwaitAttemptTimeout.
	AttemptTimeout time.Duration
	// Registry receives the consumer's Prometheus metrics
	// (sendense_catalog_*). Nil: no metrics. Running again with the same
	// registry reuses the collectors.
	Registry prometheus.Registerer
	// Log receives one line per poisoned event, per failed commit, and at
	// debug level per committed batch. The zero Logger discards.
	Log zerolog.Logger
	// OnCommit, if not nil, is called after each committed batch has been
	// acknowledged, with the ids of the events it filed (applied, found to
	// be duplicates, or kept by the store as poison), in delivery order. It runs on the consumer's goroutine:
	// keep it short.
	OnCommit func(ids []string)

	// withholdAcks makes the consumer commit but never ack or term, like a
	// process that dies right after its commit (tests only).
	withholdAcks bool
}

func (o Options) withDefaults() Options {
	if o.Durable == "" {
		o.Durable = bus.ConsumerCatalog
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.NakDelay <= 0 {
		o.NakDelay = DefaultNakDelay
	}
	return o
}

// Run consumes BACKUP_EVENTS with the durable pull consumer opts.Durable
// (created or updated with bus.CatalogConsumerConfig) and files every
// event in cat, until ctx ends. It returns nil after a clean stop.
//
// One goroutine reads: it waits for a delivered message, takes every
// other message already delivered without waiting, and decodes each with
// schemas.Decode (many at once on several goroutines); it keeps adding
// messages until the writer is free, up to opts.MaxBatch, then hands the
// batch over. One goroutine writes: it applies the decoded events of a
// batch in one cat.Apply (one bbolt transaction, synced), and only then
// acks them. So the next batch is decoded while the current one commits.
//
// A message that fails schemas.Decode (malformed JSON, wrong types,
// unknown fields, over schemas.MaxMessageBytes, a completed without a
// change id, ...) is logged with its subject and stream sequence, kept
// with cat.RecordPoison, counted and terminated with the reason. An event
// that Apply refuses (store.ErrIncomplete, store.ErrInconsistent,
// store.ErrInvalid; Apply keeps it
// as poison itself) is logged, counted and terminated the same way.
// Neither stops the consumer. When the transaction itself fails, every
// event of the batch is negatively acked with opts.NakDelay and the
// consumer pauses for that long before the next batch.
//
// When ctx ends, Run stops fetching, finishes and acks the batch it is
// applying, hands every message delivered but not yet applied (decoded
// or not) back to the server (nak, so another catalog gets it at once)
// and returns nil. It returns an error when the consumer cannot be
// created or the subscription ends on its own (the connection was closed,
// the consumer deleted).
func Run(ctx context.Context, js jetstream.JetStream, cat *store.Catalog, opts Options) error {
	opts = opts.withDefaults()
	log := opts.Log.With().Str("component", "catalog").Str("consumer", opts.Durable).Logger()
	cons, err := EnsureConsumer(ctx, js, opts)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	c := &consumer{cat: cat, opts: opts, log: log, metrics: newMetrics(opts.Registry)}

	msgs := make(chan jetstream.Msg, opts.MaxBatch)
	stopping := make(chan struct{})
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-stopping:
			_ = m.Nak() // not ours to apply any more: hand it back now
		}
	},
		jetstream.PullMaxMessages(2*opts.MaxBatch),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			log.Warn().Err(err).Msg("catalog consume error")
		}))
	if err != nil {
		return fmt.Errorf("consume %s on %s: %w", opts.Durable, bus.StreamEvents, err)
	}
	closed := cc.Closed()
	defer func() {
		// Drain, not Stop: messages the client buffered go through the
		// handler, which hands them back (nak) instead of leaving them to
		// the ack wait. A drain needs the server; while disconnected,
		// just stop.
		close(stopping)
		if js.Conn().IsConnected() {
			cc.Drain()
		} else {
			cc.Stop()
		}
		select {
		case <-closed:
		case <-time.After(stopTimeout):
			log.Warn().Dur("timeout", stopTimeout).Msg("catalog consume did not close in time")
		}
		n := 0
		for {
			select {
			case m := <-msgs:
				_ = m.Nak()
				n++
				continue
			default:
			}
			break
		}
		log.Info().Int("handed_back", n).Msg("catalog consumer stopped")
	}()
	log.Info().Str("stream", bus.StreamEvents).Int("max_batch", opts.MaxBatch).Msg("catalog consumer started")

	// Two stages: the reader collects and decodes the next batch (CPU)
	// while the writer, this goroutine, commits the current one (disk).
	decoded := make(chan []item)
	readErr := make(chan error, 1)
	go func() { readErr <- c.read(ctx, msgs, closed, decoded) }()
	for items := range decoded {
		if ctx.Err() != nil {
			c.handBack(items) // decoded after the stop: not ours to apply
			continue
		}
		if !c.process(items) {
			t := time.NewTimer(opts.NakDelay)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
	return <-readErr
}

// read collects and decodes delivered messages and hands them to the
// writer as one batch whenever the writer is ready (out is unbuffered):
// while the writer commits, the next batch grows, up to MaxBatch, already
// decoded. So a batch is never formed before the writer can take it, and
// at low rates a lone event waits for nothing but the commit before it.
// It returns nil when ctx ends and an error when the subscription closes;
// it closes out when it returns.
func (c *consumer) read(ctx context.Context, msgs <-chan jetstream.Msg, closed <-chan struct{}, out chan<- []item) error {
	defer close(out)
	var pending []item
	grab := make([]jetstream.Msg, 0, c.opts.MaxBatch)
	for {
		grab = grab[:0]
		if len(pending) == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-closed:
				return c.closedErr()
			case m := <-msgs:
				grab = append(grab, m)
			}
		}
		// Take what is delivered already, decode it, then offer the batch
		// to the writer while listening for more.
	drain:
		for len(pending)+len(grab) < c.opts.MaxBatch {
			select {
			case m := <-msgs:
				grab = append(grab, m)
			default:
				break drain
			}
		}
		if len(grab) > 0 {
			pending = append(pending, decodeAll(grab)...)
		}
		more := msgs
		if len(pending) >= c.opts.MaxBatch {
			more = nil // full: only the writer can make progress
		}
		select {
		case out <- pending:
			pending = nil
		case m := <-more:
			pending = append(pending, decodeAll([]jetstream.Msg{m})...)
		case <-ctx.Done():
			c.handBack(pending)
			return nil
		case <-closed:
			c.handBack(pending)
			return c.closedErr()
		}
	}
}

func (c *consumer) closedErr() error {
	return fmt.Errorf("consume %s on %s: subscription closed (connection closed or consumer deleted)", c.opts.Durable, bus.StreamEvents)
}

// decodeChunk is the fewest messages worth a decoding goroutine.
const decodeChunk = 32

// decodeAll decodes a batch, on up to GOMAXPROCS goroutines when it is
// large: schema validation is the consumer's main CPU cost.
func decodeAll(batch []jetstream.Msg) []item {
	items := make([]item, len(batch))
	one := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			m := batch[i]
			it := newItem(m)
			it.ev, it.agent, it.err = decodeEvent(m.Subject(), m.Data())
			items[i] = it
		}
	}
	workers := min(runtime.GOMAXPROCS(0), len(batch)/decodeChunk)
	if workers <= 1 {
		one(0, len(batch))
		return items
	}
	var wg sync.WaitGroup
	per := (len(batch) + workers - 1) / workers
	for lo := 0; lo < len(batch); lo += per {
		wg.Go(func() { one(lo, min(lo+per, len(batch))) })
	}
	wg.Wait()
	return items
}

// handBack negatively acks items so the server redelivers them at once.
func (c *consumer) handBack(items []item) {
	if c.opts.withholdAcks {
		return
	}
	for _, it := range items {
		_ = it.msg.Nak()
	}
}

// ensureConsumer creates or updates the durable consumer, waiting (with
// backoff, until ctx ends) while the stream does not exist yet or
// JetStream does not answer: a catalog may start before the process that
// creates the streams.
// EnsureConsumer creates or updates the catalog's durable consumer
// opts.Durable on BACKUP_EVENTS (bus.CatalogConsumerConfig, with
// opts.AckWait), waiting with bus.Await while the stream is not there yet
// or the cluster does not answer, until ctx ends. Run calls it; a process
// calls it first under its start-up deadline to bound that wait.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, opts Options) (jetstream.Consumer, error) {
	opts = opts.withDefaults()
	cfg := bus.CatalogConsumerConfig(opts.Durable)
	if opts.AckWait > 0 {
		cfg.AckWait = opts.AckWait
	}
	log := opts.Log.With().Str("component", "catalog").Str("consumer", opts.Durable).Logger()
	var cons jetstream.Consumer
	err := bus.Await(ctx, "consumer "+cfg.Durable+" on "+bus.StreamEvents, func(ctx context.Context) error {
		var err error
		if cons, err = js.CreateOrUpdateConsumer(ctx, bus.StreamEvents, cfg); err != nil {
			return fmt.Errorf("create or update consumer %s on %s: %w", cfg.Durable, bus.StreamEvents, err)
		}
		return nil
	}, bus.AwaitOptions{Log: log, AttemptTimeout: opts.AttemptTimeout})
	if err != nil {
		return nil, err
	}
	return cons, nil
}

type consumer struct {
	cat     *store.Catalog
	opts    Options
	log     zerolog.Logger
	metrics *metrics
}

// item is one delivered message of a batch.
type item struct {
	msg       jetstream.Msg
	seq       uint64 // stream sequence
	delivered uint64 // delivery count, 1 for the first
	ev        schemas.Event
	agent     string // who published it: the subject's agent token
	err       error  // from decodeEvent
}

// decodeEvent validates and decodes an event and reads the agent that
// published it from its subject (backup.<type>.<agent>: only that agent
// may publish there). A subject that names no agent is an event stored
// before agents had identities (agent ""); one the bus does not know is
// refused like a schema violation.
func decodeEvent(subject string, data []byte) (schemas.Event, string, error) {
	_, agent, err := bus.ParseEventSubject(subject)
	if err != nil {
		return nil, "", err
	}
	ev, err := schemas.Decode(subject, data)
	return ev, agent, err
}

func newItem(m jetstream.Msg) item {
	it := item{msg: m}
	if md, err := m.Metadata(); err == nil {
		it.seq, it.delivered = md.Sequence.Stream, md.NumDelivered
	}
	return it
}

// process records the poison of a decoded batch, applies the rest in one
// transaction and acks them. It returns false when the transaction failed
// (the batch was negatively acked).
func (c *consumer) process(batch []item) bool {
	items := make([]item, 0, len(batch))
	evs := make([]schemas.Event, 0, len(batch))
	for _, it := range batch {
		if it.err != nil {
			c.schemaPoison(it, it.err)
			continue
		}
		items = append(items, it)
		evs = append(evs, store.WithSource(it.ev, store.Source{Payload: it.msg.Data(), Agent: it.agent, Seq: it.seq}))
	}
	if len(evs) == 0 {
		return true
	}
	known := c.knownIDs(items)
	start := time.Now()
	errs, err := c.cat.Apply(evs...)
	took := time.Since(start)
	if err != nil {
		c.metrics.failure()
		c.log.Error().Err(err).Int("events", len(evs)).Uint64("first_seq", items[0].seq).
			Dur("nak_delay", c.opts.NakDelay).Msg("catalog batch not committed")
		for _, it := range items {
			if !c.opts.withholdAcks {
				_ = it.msg.NakWithDelay(c.opts.NakDelay)
			}
		}
		return false
	}
	c.metrics.batch(len(batch), took.Seconds())

	ids := make([]string, 0, len(items))
	seen := make(map[string]struct{}, len(items))
	applied, dups := 0, 0
	for i, it := range items {
		if errs[i] != nil {
			// Filed all the same: the store keeps it with the job's events
			// and a poison record, and applies it if the events it lacks
			// arrive later (an out-of-order completed).
			c.storePoison(it, errs[i])
			ids = append(ids, it.ev.EventHeader().ID)
			continue
		}
		c.ack(it)
		id := it.ev.EventHeader().ID
		_, before := known[id]
		_, again := seen[id]
		if before || again {
			dups++
		} else {
			applied++
		}
		seen[id] = struct{}{}
		ids = append(ids, id)
	}
	c.metrics.countApplied(applied, dups)
	c.log.Debug().Int("messages", len(batch)).Int("applied", applied).Int("duplicates", dups).
		Uint64("first_seq", items[0].seq).Uint64("last_seq", items[len(items)-1].seq).
		Dur("commit", took).Msg("catalog batch committed")
	if c.opts.OnCommit != nil {
		c.opts.OnCommit(ids)
	}
	return true
}

// knownIDs returns the ids of events the catalog already holds, among
// the jobs of redelivered messages (to count duplicates; Apply itself
// makes them no-ops either way). First deliveries are not looked up, so
// a re-publish with a new stream sequence counts as applied.
func (c *consumer) knownIDs(items []item) map[string]struct{} {
	var known map[string]struct{}
	var done map[string]bool
	for _, it := range items {
		if it.delivered <= 1 {
			continue
		}
		job := it.ev.EventHeader().JobID
		if done[job] {
			continue
		}
		if done == nil {
			done, known = map[string]bool{}, map[string]struct{}{}
		}
		done[job] = true
		j, err := c.cat.Job(job)
		if err != nil {
			continue
		}
		for _, id := range j.EventIDs {
			known[id] = struct{}{}
		}
	}
	return known
}

func (c *consumer) ack(it item) {
	if c.opts.withholdAcks {
		return
	}
	if err := it.msg.Ack(); err != nil {
		c.log.Warn().Err(err).Str("subject", it.msg.Subject()).Uint64("seq", it.seq).Msg("catalog ack")
	}
}

func (c *consumer) term(it item, reason string) {
	if c.opts.withholdAcks {
		return
	}
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	if err := it.msg.TermWithReason(reason); err != nil {
		c.log.Warn().Err(err).Str("subject", it.msg.Subject()).Uint64("seq", it.seq).Msg("catalog term")
	}
}

// schemaPoison keeps a message that failed schemas.Decode and terminates
// it. If the record cannot be written, the message is negatively acked
// instead, to be tried again.
func (c *consumer) schemaPoison(it item, derr error) {
	reason := derr.Error()
	rec := poisonRecord(it.msg.Subject(), it.seq, it.msg.Data(), reason)
	log := c.log.With().Str("subject", it.msg.Subject()).Uint64("seq", it.seq).
		Uint64("delivered", it.delivered).Int("bytes", len(it.msg.Data())).
		Str("event_id", rec.EventID).Str("job_id", rec.JobID).Logger()
	if err := c.cat.RecordPoison(rec); err != nil {
		log.Error().Err(err).Str("reason", reason).Msg("catalog poison not recorded")
		if !c.opts.withholdAcks {
			_ = it.msg.NakWithDelay(c.opts.NakDelay)
		}
		return
	}
	log.Warn().Str("stage", StageSchema).Str("reason", reason).Msg("catalog event poisoned")
	c.metrics.countPoison(StageSchema)
	c.term(it, reason)
}

// storePoison terminates an event Apply refused; Apply kept the record.
func (c *consumer) storePoison(it item, aerr error) {
	h := it.ev.EventHeader()
	reason := aerr.Error()
	c.log.Warn().Str("subject", it.msg.Subject()).Uint64("seq", it.seq).Uint64("delivered", it.delivered).
		Str("event_id", h.ID).Str("job_id", h.JobID).Str("stage", StageStore).Str("reason", reason).
		Msg("catalog event poisoned")
	c.metrics.countPoison(StageStore)
	c.term(it, reason)
}

// poisonRecord is the record kept for a payload that failed its schema:
// subject, stream sequence (its identity, so a redelivery or a replay
// writes the same record), the raw payload, the reason, and the id and
// job id when the payload is JSON enough to read them.
func poisonRecord(subject string, seq uint64, data []byte, reason string) backup.PoisonRecord {
	rec := backup.PoisonRecord{Subject: subject, Seq: seq, Raw: data, Reason: reason}
	if len(data) <= schemas.MaxMessageBytes {
		var ids struct {
			ID    string `json:"id"`
			JobID string `json:"job_id"`
		}
		_ = json.Unmarshal(data, &ids) // best effort: fields of the wrong type stay empty
		if len(ids.ID) <= 256 {
			rec.EventID = ids.ID
		}
		if len(ids.JobID) <= 256 {
			rec.JobID = ids.JobID
		}
	}
	return rec
}
