package bus

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/sendense/sendense/schemas"
)

// Durable consumer names.
const (
	// ConsumerAgents is the one durable pull consumer on StreamRequests
	// shared by all node agents of a site: each request goes to one agent.
	ConsumerAgents = "sendense-agents"
	// ConsumerCatalog is the catalog's durable pull consumer on
	// StreamEvents. A second catalog replica uses its own durable name.
	ConsumerCatalog = "sendense-catalog"
)

// Request consumer defaults.
const (
	// RequestAckWait is how long a delivered request may go without an ack
	// or an in-progress ack before it is redelivered (first delivery; later
	// ones follow RequestBackOff). Agents send InProgress every
	// InProgressInterval while they work.
	RequestAckWait = 30 * time.Second
	// InProgressInterval is how often KeepInProgress acks a request in
	// progress: a third of RequestAckWait, so two lost acks are survivable.
	InProgressInterval = RequestAckWait / 3
	// RequestMaxAckPending bounds the requests in flight across all agents.
	RequestMaxAckPending = 1000
	// CatalogAckWait is the catalog consumer's ack wait.
	CatalogAckWait = 30 * time.Second
	// CatalogMaxAckPending bounds unacknowledged events delivered to one
	// catalog; large enough for group commits of a few hundred events.
	CatalogMaxAckPending = 4096
)

// RequestConsumerOptions tunes EnsureRequestConsumer; the zero value gives
// the defaults.
type RequestConsumerOptions struct {
	// MaxDeliver caps deliveries of one request. Default (0): -1,
	// unlimited. Deliberate: a request waiting for its VM's lease is
	// negatively acked with a delay, and every such wait counts as a
	// delivery, so a server-side cap would park requests silently behind
	// a long backup. Agents enforce their own attempt limit on failures
	// (publish backup.failed, then terminate the message), so nothing is
	// redelivered forever and nothing is dropped without an event.
	MaxDeliver int
	// AckWait overrides RequestAckWait.
	AckWait time.Duration
	// Await tunes the wait for the consumer's stream (see Await).
	Await AwaitOptions
}

// RequestConsumerConfig returns the configuration of ConsumerAgents:
// filtered on backup.requested (never the schedules that share the stream:
// an agent that took one would delete it with its ack), explicit acks, deliver all, ack wait RequestAckWait, MaxDeliver per opts,
// replicas as the stream.
//
// It deliberately has no BackOff: nats-server 2.15 places a message that is
// negatively acked with a delay at now - AckWait + delay, but with BackOff
// set it checks that against BackOff[deliveries] instead of AckWait, so a
// 300 ms NakWithDelay came back after 30 s (seen in the end-to-end tests: a
// request waiting for a VM lease stalled for one ack wait). Agents do their
// own backoff with NakWithDelay.
func RequestConsumerConfig(opts RequestConsumerOptions) jetstream.ConsumerConfig {
	md := opts.MaxDeliver
	if md == 0 {
		md = -1
	}
	aw := opts.AckWait
	if aw <= 0 {
		aw = RequestAckWait
	}
	return jetstream.ConsumerConfig{
		Durable:       ConsumerAgents,
		Description:   "Sendense node agents: backup requests",
		FilterSubject: SubjectRequested,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       aw,
		MaxDeliver:    md,
		MaxAckPending: RequestMaxAckPending,
	}
}

// EnsureRequestConsumer creates or updates ConsumerAgents on
// StreamRequests and returns it (an existing one, made before schedules,
// gets its filter here). Agents read it with Consume, Messages or
// Fetch (nats.go jetstream), ack after backup.completed / backup.failed /
// backup.rejected is published, keep long jobs alive with KeepInProgress,
// and wait for a busy VM lease with NakWithDelay. It waits with Await
// until ctx ends while the stream is not there or the cluster does not
// answer yet.
func EnsureRequestConsumer(ctx context.Context, js jetstream.JetStream, opts RequestConsumerOptions) (jetstream.Consumer, error) {
	return ensureConsumer(ctx, js, StreamRequests, RequestConsumerConfig(opts), opts.Await)
}

// RequestConsumer binds to ConsumerAgents on StreamRequests without
// creating or changing it: what an agent does. Only admin may create it
// (EnsureRequestConsumer), so no agent can change its filter or limits
// under the others. A consumer that does not exist yet gives an error
// wrapping jetstream.ErrConsumerNotFound or jetstream.ErrStreamNotFound.
func RequestConsumer(ctx context.Context, js jetstream.JetStream) (jetstream.Consumer, error) {
	c, err := js.Consumer(ctx, StreamRequests, ConsumerAgents)
	if err != nil {
		return nil, fmt.Errorf("bind consumer %s on %s: %w", ConsumerAgents, StreamRequests, err)
	}
	return c, nil
}

// CatalogConsumerConfig returns the configuration of a catalog's durable
// consumer: deliver all from the first event, explicit acks,
// CatalogAckWait, MaxAckPending CatalogMaxAckPending, unlimited deliveries
// (the catalog terminates events it cannot apply itself).
func CatalogConsumerConfig(durable string) jetstream.ConsumerConfig {
	if durable == "" {
		durable = ConsumerCatalog
	}
	return jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   "Sendense catalog: backup events",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       CatalogAckWait,
		MaxDeliver:    -1,
		MaxAckPending: CatalogMaxAckPending,
	}
}

// EnsureCatalogConsumer creates or updates a catalog's durable consumer on
// StreamEvents (durable "" means ConsumerCatalog). A rebuild that replays
// the stream needs no durable: use js.OrderedConsumer(ctx, StreamEvents,
// jetstream.OrderedConsumerConfig{}). It waits with Await (default
// options) until ctx ends while the stream is not there yet.
func EnsureCatalogConsumer(ctx context.Context, js jetstream.JetStream, durable string) (jetstream.Consumer, error) {
	return ensureConsumer(ctx, js, StreamEvents, CatalogConsumerConfig(durable), AwaitOptions{})
}

// ensureConsumer creates or updates the durable consumer cfg on stream,
// waiting with Await (opts) until ctx ends while the stream is not there.
func ensureConsumer(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig, opts AwaitOptions) (jetstream.Consumer, error) {
	var c jetstream.Consumer
	err := Await(ctx, "consumer "+cfg.Durable+" on "+stream, func(ctx context.Context) error {
		var err error
		if c, err = js.CreateOrUpdateConsumer(ctx, stream, cfg); err != nil {
			return fmt.Errorf("create or update consumer %s on %s: %w", cfg.Durable, stream, err)
		}
		return nil
	}, opts)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Attempt returns a delivered message's attempt number: its delivery
// count, 1 for the first delivery.
func Attempt(msg jetstream.Msg) (int, error) {
	md, err := msg.Metadata()
	if err != nil {
		return 0, fmt.Errorf("metadata of message on %s: %w", msg.Subject(), err)
	}
	return int(md.NumDelivered), nil
}

// KeepInProgress acks msg as in progress every interval (InProgressInterval
// when 0) until stop is called or ctx ends, so a long job is not
// redelivered. Failed in-progress acks are logged and retried at the next
// tick. stop waits for the goroutine to end; call it before the final
// Ack/Nak/Term. Safe to call stop more than once.
func KeepInProgress(ctx context.Context, msg jetstream.Msg, interval time.Duration, log zerolog.Logger) (stop func()) {
	if interval <= 0 {
		interval = InProgressInterval
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := msg.InProgress(); err != nil {
					log.Warn().Err(err).Str("subject", msg.Subject()).Msg("in-progress ack")
				}
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}

// RequestJobID returns the job id of a delivered request: the request's
// own job_id when it has one (it must satisfy ValidJobID), else
// DeriveJobID of the message, the same on every redelivery.
func RequestJobID(req schemas.Request, msg jetstream.Msg) (string, error) {
	if req.JobID != "" {
		if err := ValidJobID(req.JobID); err != nil {
			return "", fmt.Errorf("request for vm %s: %w", req.VM, err)
		}
		return req.JobID, nil
	}
	md, err := msg.Metadata()
	if err != nil {
		return "", fmt.Errorf("metadata of request on %s: %w", msg.Subject(), err)
	}
	return DeriveJobID(md.Stream, md.Sequence.Stream, md.Timestamp), nil
}
