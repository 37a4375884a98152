package bus

import (
	"bytes"
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
	agent  string // the agent whose events PublishEvent sends; "" for none
	hub    bool   // PublishEvent sends the hub's events (NewHubPublisher)
	log    zerolog.Logger
}

// NewPublisher returns a Publisher of requests (and raw payloads) whose
// messages carry source as ce-source (for example "sendense/hub").
func NewPublisher(js jetstream.JetStream, source string, log zerolog.Logger) *Publisher {
	return &Publisher{js: js, source: source, log: log.With().Str("component", "publisher").Logger()}
}

// NewAgentPublisher returns the Publisher of the agent named agent: its
// events go out on backup.<type>.<agent> (AgentSubject) with ce-source
// "sendense/agent/<agent>". The server lets only that agent's credentials
// publish there.
func NewAgentPublisher(js jetstream.JetStream, agent string, log zerolog.Logger) (*Publisher, error) {
	if err := ValidAgentID(agent); err != nil {
		return nil, fmt.Errorf("agent publisher: %w", err)
	}
	p := NewPublisher(js, "sendense/agent/"+agent, log)
	p.agent = agent
	return p, nil
}

// NewHubPublisher returns the hub's Publisher: PublishEvent sends the
// events the hub publishes about completed jobs (schemas.HubEvents) on
// backup.<type>.hub (HubSubject), with ce-source "sendense/hub", and
// refuses every other event. The server lets only the hub's credentials
// publish there.
func NewHubPublisher(js jetstream.JetStream, log zerolog.Logger) *Publisher {
	p := NewPublisher(js, "sendense/hub", log)
	p.hub = true
	return p
}

// Publish stores payload on subject with Nats-Msg-Id id and waits for the
// stream's acknowledgement. It does not look inside payload: producers
// publish events with PublishEvent and requests with PublishRequest, which
// check them first; Publish is for payloads that must go out as they are
// (tests of what consumers do with malformed input, relaying tools).
//
// Headers: Nats-Msg-Id = id; CloudEvents NATS binding ce-specversion "1.0",
// ce-id = id, ce-type = ceType as given, ce-source, ce-time (now, RFC
// 3339); content-type application/json. (PublishEvent and PublishRequest
// set ce-type to CEType(name) and ce-dataschema to the schema's $id.)
//
// On a timeout, "no responders" (no stream bound to the subject yet, or a
// leader election in a cluster), a disconnect, a 503 from JetStream, or the
// "duplicate message id is in process" error (JSErrCodeDuplicateInProcess)
// it sends the same message again, with the same id, after a backoff
// (50 ms doubling up to 2 s), until ctx ends (DefaultPublishTimeout when
// ctx has no deadline); each attempt is bounded by PublishAttemptTimeout.
// Because the id and the bytes are the same, the stream stores the message
// at most once within its duplicate window. A PubAck with Duplicate=true
// is success only when the stored message is this one (an earlier attempt
// of this call that was stored but not acknowledged): when the stream
// already held another message under the id (a first attempt answered
// Duplicate, or a stored message whose bytes differ), the error wraps
// ErrDuplicateMsgID and nothing was stored. Other errors (invalid subject,
// wrong stream, message too large) are returned at once.
//
// The error after giving up wraps both the context's error and the last
// attempt's error, and ErrUnavailable when JetStream could not store (no
// server, no stream leader, JetStream disabled or out of storage): the
// latter are returned without further attempts once they are not
// transient (out of storage, disabled).
func (p *Publisher) Publish(ctx context.Context, subject, id, ceType string, payload []byte) (*jetstream.PubAck, error) {
	return p.publish(ctx, subject, id, ceType, "", time.Time{}, payload)
}

// PublishEvent marshals ev as JSON and publishes it with id
// ev.EventHeader().ID, ce-type = CEType(its schema name) (e.g.
// io.sendense.backup.completed) and ce-dataschema = its schema's $id;
// ce-time is the event's time. Only an agent's Publisher (NewAgentPublisher)
// publishes an agent's events: on AgentSubject(schema name, agent), or
// ProgressSubject(job_id) for progress; only the hub's (NewHubPublisher)
// the hub's events (schemas.HubEvents), on HubSubject(schema name). The
// event must carry an id, a known schema name matching its
// Go type and a valid job id, and the JSON must pass schemas.Validate: an
// event that does not is refused with ErrInvalidEvent (wrapping the
// *schemas.ValidationError that names each problem), never published. So
// no producer can emit what the catalog would poison for its form.
func (p *Publisher) PublishEvent(ctx context.Context, ev schemas.Event) (*jetstream.PubAck, error) {
	if v := reflect.ValueOf(ev); !v.IsValid() || (v.Kind() == reflect.Pointer && v.IsNil()) || ev.EventHeader() == nil {
		return nil, fmt.Errorf("publish event: nil event: %w", ErrInvalidEvent)
	}
	h := ev.EventHeader()
	hubEvent := schemas.IsHubEvent(h.Schema.Name)
	switch {
	case hubEvent && !p.hub:
		return nil, fmt.Errorf("publish event %s of job %s: only the hub's publisher publishes %s: %w", h.ID, h.JobID, h.Schema.Name, ErrInvalidEvent)
	case !hubEvent && p.agent == "":
		return nil, fmt.Errorf("publish event %s of job %s: only an agent's publisher publishes events: %w", h.ID, h.JobID, ErrInvalidEvent)
	case h.ID == "":
		return nil, fmt.Errorf("publish event %s of job %s: no id: %w", h.Schema.Name, h.JobID, ErrInvalidEvent)
	case h.Schema.Name == "":
		return nil, fmt.Errorf("publish event %s of job %s: no schema name: %w", h.ID, h.JobID, ErrInvalidEvent)
	case h.Schema.Name != schemas.NameOf(ev):
		return nil, fmt.Errorf("publish event %s of job %s: schema name %s for a %T: %w", h.ID, h.JobID, h.Schema.Name, ev, ErrInvalidEvent)
	}
	if err := ValidJobID(h.JobID); err != nil {
		return nil, fmt.Errorf("publish event %s: %w: %w", h.ID, ErrInvalidEvent, err)
	}
	subject := AgentSubject(h.Schema.Name, p.agent)
	switch {
	case hubEvent:
		subject = HubSubject(h.Schema.Name)
	case h.Schema.Name == schemas.NameProgress:
		subject = ProgressSubject(h.JobID)
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("marshal event %s: %w", h.ID, err)
	}
	if err := schemas.Validate(h.Schema.Name, data); err != nil {
		return nil, fmt.Errorf("publish event %s (%s of job %s): %w: %w", h.ID, h.Schema.Name, h.JobID, ErrInvalidEvent, err)
	}
	return p.publish(ctx, subject, h.ID, CEType(h.Schema.Name), schemas.ID(h.Schema.Name), h.Time, data)
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
	return p.publish(ctx, SubjectRequested, req.JobID, CEType(schemas.NameRequested), schemas.ID(schemas.NameRequested), time.Time{}, data)
}

func (p *Publisher) publish(ctx context.Context, subject, id, ceType, dataSchema string, at time.Time, payload []byte) (*jetstream.PubAck, error) {
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
	if dataSchema != "" {
		hdr.Set(HeaderDataSchema, dataSchema)
	}
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
				if !p.storedIsOurs(ctx, ack, payload, attempt) {
					return nil, fmt.Errorf("publish %s on %s: stream %s already holds message %d under this id: %w",
						id, subject, ack.Stream, ack.Sequence, ErrDuplicateMsgID)
				}
				log.Debug().Int("attempt", attempt).Uint64("seq", ack.Sequence).Msg("publish was a duplicate of an earlier attempt")
			}
			return ack, nil
		}
		if storeFull(err) {
			return nil, fmt.Errorf("publish %s on %s: %w: %w", id, subject, ErrUnavailable, err)
		}
		if !retryable(err) || ctx.Err() != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("publish %s on %s: gave up after %d attempts: %w: %w: %w", id, subject, attempt, ErrUnavailable, context.Cause(ctx), err)
			}
			return nil, fmt.Errorf("publish %s on %s: %w", id, subject, err)
		}
		log.Debug().Err(err).Int("attempt", attempt).Dur("wait", wait).Msg("publish retry")
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("publish %s on %s: gave up after %d attempts: %w: %w: %w", id, subject, attempt, ErrUnavailable, context.Cause(ctx), err)
		case <-t.C:
		}
		wait = min(2*wait, publishBackoffMax)
	}
}

// storedIsOurs reports whether the message a Duplicate PubAck names is the
// one this call sends. On a retry it compares the stored bytes when the
// stream still has them; if it cannot read them (a work queue consumed
// it, no permission) an earlier attempt of this call may have stored it,
// so it is taken as ours. On the first attempt nobody but an earlier
// publisher can have stored it: it is ours only if the bytes are equal.
func (p *Publisher) storedIsOurs(ctx context.Context, ack *jetstream.PubAck, payload []byte, attempt int) bool {
	gctx, cancel := context.WithTimeout(ctx, PublishAttemptTimeout)
	defer cancel()
	stored, err := p.storedData(gctx, ack.Stream, ack.Sequence)
	if err != nil {
		p.log.Debug().Err(err).Str("stream", ack.Stream).Uint64("seq", ack.Sequence).Msg("read duplicate message")
		return attempt > 1
	}
	return bytes.Equal(stored, payload)
}

func (p *Publisher) storedData(ctx context.Context, stream string, seq uint64) ([]byte, error) {
	st, err := p.js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	m, err := st.GetMsg(ctx, seq)
	if err != nil {
		return nil, err
	}
	return m.Data, nil
}

// storeFull reports whether JetStream refused to store for lack of
// storage or because JetStream is disabled (after a disk filled up): not
// worth retrying at once, and not the caller's fault (ErrUnavailable).
func storeFull(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jsErrInsufficientResources, jsErrStorageExceeded, jsErrAccountResources, jsErrStoreFailed,
			jsErrNotEnabled, jsErrNotEnabledForAccount:
			return true
		}
	}
	return errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount)
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
