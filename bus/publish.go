package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/sendense/sendense/schemas"
)

// Publish timing.
const (
	// DefaultPublishTimeout bounds a Publish, retries included, when the
	// caller's context has no deadline.
	DefaultPublishTimeout = 30 * time.Second
	// PublishAttemptTimeout bounds one attempt (request and PubAck) so a
	// lost ack leaves time for retries within the overall deadline.
	PublishAttemptTimeout = 5 * time.Second
	// publishBackoffBase and publishBackoffMax bound the wait between
	// attempts: 50 ms doubling up to 2 s.
	publishBackoffBase = 50 * time.Millisecond
	publishBackoffMax  = 2 * time.Second
)

// Publisher is the one way this project publishes to JetStream. It is safe
// for concurrent use.
type Publisher struct {
	js     jetstream.JetStream
	source string
	log    zerolog.Logger
}

// NewPublisher returns a Publisher whose messages carry source as
// ce-source (for example "sendense/agent/<host>").
func NewPublisher(js jetstream.JetStream, source string, log zerolog.Logger) *Publisher {
	return &Publisher{js: js, source: source, log: log.With().Str("component", "publisher").Logger()}
}

// Publish stores payload on subject with Nats-Msg-Id id and waits for the
// stream's acknowledgement. It does not look inside payload: producers
// publish events with PublishEvent and requests with PublishRequest, which
// check them first; Publish is for payloads that must go out as they are
// (tests of what consumers do with malformed input, relaying tools).
//
// Headers: Nats-Msg-Id = id; CloudEvents NATS binding ce-specversion "1.0",
// ce-id = id, ce-type = ceType, ce-source, ce-time (now, RFC 3339);
// content-type application/json.
//
// On a timeout, "no responders" (no stream bound to the subject yet, or a
// leader election in a cluster), a disconnect, a 503 from JetStream, or the
// "duplicate message id is in process" error (JSErrCodeDuplicateInProcess)
// it sends the same message again, with the same id, after a backoff
// (50 ms doubling up to 2 s), until ctx ends (DefaultPublishTimeout when
// ctx has no deadline); each attempt is bounded by PublishAttemptTimeout.
// Because the id is the same, the stream stores the message at most once
// within its duplicate window: a PubAck with Duplicate=true is success and
// is returned as is. Other errors (invalid subject, wrong stream, message
// too large) are returned at once. The error after giving up wraps both the
// context's error and the last attempt's error.
func (p *Publisher) Publish(ctx context.Context, subject, id, ceType string, payload []byte) (*jetstream.PubAck, error) {
	return p.publish(ctx, subject, id, ceType, time.Time{}, payload)
}

// PublishEvent marshals ev as JSON and publishes it with id
// ev.EventHeader().ID and ce-type = its schema name; ce-time is the event's
// time. The event must carry an id, a schema name and a valid job id,
// subject must be its schema name (ProgressSubject(job_id) for progress),
// and the JSON must pass schemas.Validate for subject: an event that does
// not match where it goes or its schema is refused with ErrInvalidEvent
// (wrapping the *schemas.ValidationError that names each problem), never
// published. So no producer can emit what the catalog would poison.
func (p *Publisher) PublishEvent(ctx context.Context, subject string, ev schemas.Event) (*jetstream.PubAck, error) {
	if v := reflect.ValueOf(ev); !v.IsValid() || (v.Kind() == reflect.Pointer && v.IsNil()) || ev.EventHeader() == nil {
		return nil, fmt.Errorf("publish event on %s: nil event: %w", subject, ErrInvalidEvent)
	}
	h := ev.EventHeader()
	switch {
	case h.ID == "":
		return nil, fmt.Errorf("publish event %s of job %s: no id: %w", h.Schema.Name, h.JobID, ErrInvalidEvent)
	case h.Schema.Name == "":
		return nil, fmt.Errorf("publish event %s of job %s: no schema name: %w", h.ID, h.JobID, ErrInvalidEvent)
	}
	if err := ValidJobID(h.JobID); err != nil {
		return nil, fmt.Errorf("publish event %s: %w: %w", h.ID, ErrInvalidEvent, err)
	}
	want := h.Schema.Name
	if want == schemas.NameProgress {
		want = ProgressSubject(h.JobID)
	}
	if subject != want {
		return nil, fmt.Errorf("publish event %s (%s of job %s) on subject %s, want %s: %w",
			h.ID, h.Schema.Name, h.JobID, subject, want, ErrInvalidEvent)
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("marshal event %s: %w", h.ID, err)
	}
	if err := schemas.Validate(subject, data); err != nil {
		return nil, fmt.Errorf("publish event %s (%s of job %s): %w: %w", h.ID, h.Schema.Name, h.JobID, ErrInvalidEvent, err)
	}
	return p.publish(ctx, subject, h.ID, h.Schema.Name, h.Time, data)
}

// PublishRequest publishes a backup request on backup.requested with its
// job id as Nats-Msg-Id, so publishing the same job twice (a retrying hub
// or CLI) queues it once. req.JobID must be set (NewJobID) and valid
// (ValidJobID). A request without a schema reference gets the current one.
func (p *Publisher) PublishRequest(ctx context.Context, req schemas.Request) (*jetstream.PubAck, error) {
	if err := ValidJobID(req.JobID); err != nil {
		return nil, fmt.Errorf("publish request for vm %s: %w", req.VM, err)
	}
	if req.Schema == nil {
		req.Schema = &schemas.SchemaRef{Name: schemas.NameRequested, Version: schemas.Version}
	}
	data, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("marshal request of job %s: %w", req.JobID, err)
	}
	return p.publish(ctx, SubjectRequested, req.JobID, schemas.NameRequested, time.Time{}, data)
}

func (p *Publisher) publish(ctx context.Context, subject, id, ceType string, at time.Time, payload []byte) (*jetstream.PubAck, error) {
	if err := checkSubject(subject); err != nil {
		return nil, fmt.Errorf("publish %s: %w", id, err)
	}
	if err := checkMsgID(id); err != nil {
		return nil, fmt.Errorf("publish on %s: %w", subject, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultPublishTimeout)
		defer cancel()
	}
	if at.IsZero() {
		at = time.Now()
	}
	hdr := nats.Header{}
	hdr.Set(HeaderSpecVersion, CloudEventsSpecVersion)
	hdr.Set(HeaderID, id)
	hdr.Set(HeaderType, ceType)
	hdr.Set(HeaderSource, p.source)
	hdr.Set(HeaderTime, at.UTC().Format(time.RFC3339Nano))
	hdr.Set(HeaderContentType, ContentTypeJSON)
	opts := []jetstream.PublishOpt{jetstream.WithMsgID(id), jetstream.WithRetryAttempts(0)}
	if stream := StreamForSubject(subject); stream != "" {
		opts = append(opts, jetstream.WithExpectStream(stream))
	}

	log := p.log.With().Str("subject", subject).Str("msg_id", id).Logger()
	wait := publishBackoffBase
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, PublishAttemptTimeout)
		msg := &nats.Msg{Subject: subject, Header: hdr, Data: payload}
		ack, err := p.js.PublishMsg(actx, msg, opts...)
		cancel()
		if err == nil {
			if ack.Duplicate {
				log.Debug().Int("attempt", attempt).Uint64("seq", ack.Sequence).Msg("publish was a duplicate")
			}
			return ack, nil
		}
		if !retryable(err) || ctx.Err() != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("publish %s on %s: gave up after %d attempts: %w: %w", id, subject, attempt, context.Cause(ctx), err)
			}
			return nil, fmt.Errorf("publish %s on %s: %w", id, subject, err)
		}
		log.Debug().Err(err).Int("attempt", attempt).Dur("wait", wait).Msg("publish retry")
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("publish %s on %s: gave up after %d attempts: %w: %w", id, subject, attempt, context.Cause(ctx), err)
		case <-t.C:
		}
		wait = min(2*wait, publishBackoffMax)
	}
}

// retryable reports whether publishing the same message again may succeed:
// no stream answered, the attempt timed out, the connection is down for
// now, JetStream is temporarily unavailable, or the same message id is
// being stored concurrently.
func retryable(err error) bool {
	switch {
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionReconnecting):
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == JSErrCodeDuplicateInProcess || apiErr.Code == 503
	}
	return false
}
