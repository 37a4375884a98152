package bus_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

// The tests in this file are one behaviour suite run against an embedded
// server and a separate nats-server process (bustest.ForEach).

// testAgent publishes the tests' events; testSource is its ce-source.
const (
	testAgent  = "test-agent"
	testSource = "sendense/agent/" + testAgent
)

// Subjects the test agent's events go out on.
var (
	subjStarted   = bus.AgentSubject(schemas.NameStarted, testAgent)
	subjChangeID  = bus.AgentSubject(schemas.NameChangeID, testAgent)
	subjCompleted = bus.AgentSubject(schemas.NameCompleted, testAgent)
	subjFailed    = bus.AgentSubject(schemas.NameFailed, testAgent)
	subjRejected  = bus.AgentSubject(schemas.NameRejected, testAgent)
)

// newPub returns the test agent's publisher.
func newPub(t *testing.T, js jetstream.JetStream) *bus.Publisher {
	t.Helper()
	p, err := bus.NewAgentPublisher(js, testAgent, bustest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func hdr(job string, attempt int, name string, disk int32, seq int64) schemas.Header {
	return schemas.Header{
		Schema:  schemas.SchemaRef{Name: name, Version: schemas.Version},
		ID:      bus.EventID(job, attempt, name, disk, seq),
		Time:    time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC),
		JobID:   job,
		Attempt: attempt,
		VM:      schemas.VMRef{Name: "pgtest1", UUID: "50123456-89ab-cdef-0123-456789abcdef", Moref: "vm-42"},
	}
}

var disk2000 = schemas.DiskRef{Key: 2000, UUID: "6000C29a-0000-0000-0000-000000000001", CapacityBytes: 1 << 30}

// testChangeID is a change id in VMware's format.
const testChangeID = "52 de c0 2d 3c 0a 4a 5e-9a 8a 1e 1f 2d 3c 4b 5a/12"

// Events that pass their schemas (PublishEvent refuses any other): a full
// backup of disk2000 in job job, attempt 1.

func startedEvent(job string) *schemas.Started {
	return &schemas.Started{Header: hdr(job, 1, schemas.NameStarted, 0, 0), Repository: "default",
		RequestedType: schemas.TypeAuto, Snapshot: "sendense-" + job,
		Disks: []schemas.DiskPlan{{Disk: disk2000, BackupType: schemas.TypeFull, Reason: schemas.ReasonNoBase, Target: "t"}}}
}

func progressEvent(job string) *schemas.Progress {
	return &schemas.Progress{Header: hdr(job, 1, schemas.NameProgress, 0, 1), Seq: 1, BytesDone: 1, BytesTotal: 2,
		Disks: []schemas.DiskProgress{{Disk: disk2000, BytesDone: 1, BytesTotal: 2}}}
}

func changeIDEvent(job string, d schemas.DiskRef) *schemas.ChangeID {
	return &schemas.ChangeID{Header: hdr(job, 1, schemas.NameChangeID, d.Key, 0), Repository: "default", Disk: d,
		ChangeID: testChangeID, BackupType: schemas.TypeFull, BytesRead: 2, BytesWritten: 1, Target: "t"}
}

func completedEvent(job string) *schemas.Completed {
	return &schemas.Completed{Header: hdr(job, 1, schemas.NameCompleted, 0, 0), Repository: "default",
		Disks: []schemas.DiskResult{{Disk: disk2000, ChangeID: testChangeID, BackupType: schemas.TypeFull,
			Reason: schemas.ReasonNoBase, BytesRead: 2, BytesWritten: 1, Target: "t", ActualSizeBytes: 1}}}
}

func prunedEvent(job string) *schemas.Pruned {
	return &schemas.Pruned{Header: hdr(job, 1, schemas.NamePruned, 0, 0), Repository: "default",
		Disks: []schemas.PruneDisk{{Disk: disk2000, Operation: schemas.PruneDelete, Target: "t"}}}
}

func streamMsgs(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.Stream(testCtx(t), name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := s.Info(testCtx(t))
	if err != nil {
		t.Fatalf("stream %s info: %v", name, err)
	}
	return info.State.Msgs
}

func ensureStreams(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	if err := bus.EnsureStreams(testCtx(t), js, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestStreams(t *testing.T) {
	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
		s := start(t)
		ctx := testCtx(t)
		// An older BACKUP_PROGRESS with other limits is brought in line.
		if _, err := s.JS.CreateStream(ctx, jetstream.StreamConfig{
			Name: bus.StreamProgress, Subjects: []string{"backup.progress.*"}, Storage: jetstream.FileStorage, MaxAge: time.Hour,
		}); err != nil {
			t.Fatal(err)
		}
		// So is a BACKUP_EVENTS of a build without the hub's events.
		if _, err := s.JS.CreateStream(ctx, jetstream.StreamConfig{
			Name: bus.StreamEvents, Subjects: []string{"backup.started.*", "backup.changeid.*", "backup.completed.*", "backup.failed.*", "backup.rejected.*"},
			Storage: jetstream.FileStorage, Duplicates: bus.EventsDuplicateWindow,
		}); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if err := bus.EnsureStreams(ctx, s.JS, bus.StreamOptions{}); err != nil {
				t.Fatalf("EnsureStreams: %v", err)
			}
		}
		tests := []struct {
			name       string
			subjects   []string
			retention  jetstream.RetentionPolicy
			maxAge     time.Duration
			perSubject int64
			minDupes   time.Duration
		}{
			{bus.StreamRequests, []string{"backup.requested", "backup.verify.requested", "backup.forget.requested", "backup.schedules.*"}, jetstream.WorkQueuePolicy, 0, -1, 2 * time.Minute},
			{bus.StreamEvents, []string{"backup.started.*", "backup.changeid.*", "backup.completed.*", "backup.failed.*", "backup.rejected.*",
				"backup.pruning.hub", "backup.pruned.hub", "backup.verified.hub"},
				jetstream.LimitsPolicy, 0, -1, 2 * time.Minute},
			{bus.StreamProgress, []string{"backup.progress.*"}, jetstream.LimitsPolicy, 24 * time.Hour, 1, time.Minute},
		}
		for _, tt := range tests {
			st, err := s.JS.Stream(ctx, tt.name)
			if err != nil {
				t.Fatalf("stream %s: %v", tt.name, err)
			}
			c := st.CachedInfo().Config
			if !slices.Equal(c.Subjects, tt.subjects) {
				t.Errorf("%s subjects = %v, want %v", tt.name, c.Subjects, tt.subjects)
			}
			if c.Retention != tt.retention {
				t.Errorf("%s retention = %v, want %v", tt.name, c.Retention, tt.retention)
			}
			if c.Storage != jetstream.FileStorage {
				t.Errorf("%s storage = %v, want file", tt.name, c.Storage)
			}
			if c.MaxAge != tt.maxAge {
				t.Errorf("%s max age = %v, want %v", tt.name, c.MaxAge, tt.maxAge)
			}
			if c.MaxMsgsPerSubject != tt.perSubject {
				t.Errorf("%s max msgs per subject = %d, want %d", tt.name, c.MaxMsgsPerSubject, tt.perSubject)
			}
			if c.Duplicates < tt.minDupes {
				t.Errorf("%s duplicate window = %v, want >= %v", tt.name, c.Duplicates, tt.minDupes)
			}
			if c.Replicas != 1 {
				t.Errorf("%s replicas = %d, want 1", tt.name, c.Replicas)
			}
			if want := tt.name == bus.StreamRequests; c.AllowMsgSchedules != want || c.AllowRollup != want {
				t.Errorf("%s allows schedules %t, roll-ups %t; want %t", tt.name, c.AllowMsgSchedules, c.AllowRollup, want)
			}
		}
	})
}

func TestPublishSeenOnBackupAll(t *testing.T) {
	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
		s := start(t)
		ensureStreams(t, s.JS)
		ctx := testCtx(t)
		// What `nats sub 'backup.>'` does.
		sub, err := s.Conn.SubscribeSync(bus.SubjectAll)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		if err := s.Conn.Flush(); err != nil {
			t.Fatal(err)
		}
		pub := newPub(t, s.JS)
		job := bus.NewJobID()

		type sent struct {
			subject, id, ceType string
		}
		var want []sent
		if _, err := pub.PublishRequest(ctx, schemas.Request{VM: "pgtest1", BackupType: schemas.TypeAuto, JobID: job}); err != nil {
			t.Fatalf("PublishRequest: %v", err)
		}
		want = append(want, sent{bus.SubjectRequested, job, schemas.NameRequested})
		events := []struct {
			subject string
			ev      schemas.Event
		}{
			{subjStarted, startedEvent(job)},
			{bus.ProgressSubject(job), progressEvent(job)},
			{subjChangeID, changeIDEvent(job, disk2000)},
			{subjCompleted, completedEvent(job)},
			{subjFailed, &schemas.Failed{Header: hdr(job, 2, schemas.NameFailed, 0, 0), Reason: schemas.FailCopy, Message: "x"}},
			{subjRejected, &schemas.Rejected{Header: hdr(job, 1, schemas.NameRejected, 0, 0), Reason: schemas.RejectUnknownVM, Message: "x"}},
		}
		for _, e := range events {
			ack, err := pub.PublishEvent(ctx, e.ev)
			if err != nil {
				t.Fatalf("PublishEvent %s: %v", e.subject, err)
			}
			if want := bus.StreamForSubject(e.subject); ack.Stream != want {
				t.Errorf("%s stored in %s, want %s", e.subject, ack.Stream, want)
			}
			want = append(want, sent{e.subject, e.ev.EventHeader().ID, e.ev.EventHeader().Schema.Name})
		}

		for _, w := range want {
			m, err := sub.NextMsg(5 * time.Second)
			if err != nil {
				t.Fatalf("waiting for %s on backup.>: %v", w.subject, err)
			}
			if m.Subject != w.subject {
				t.Errorf("subject %s, want %s", m.Subject, w.subject)
			}
			h := m.Header
			for k, v := range map[string]string{
				bus.HeaderMsgID: w.id, bus.HeaderID: w.id, bus.HeaderType: "io.sendense." + w.ceType, bus.HeaderSource: testSource,
				bus.HeaderDataSchema:  "https://sendense.dev/schemas/" + w.ceType + "/v1.json",
				bus.HeaderSpecVersion: "1.0", bus.HeaderContentType: "application/json",
			} {
				if got := h.Get(k); got != v {
					t.Errorf("%s header %s = %q, want %q", w.subject, k, got, v)
				}
			}
			if _, err := time.Parse(time.RFC3339Nano, h.Get(bus.HeaderTime)); err != nil {
				t.Errorf("%s ce-time %q: %v", w.subject, h.Get(bus.HeaderTime), err)
			}
			var body struct {
				ID    string `json:"id"`
				JobID string `json:"job_id"`
			}
			if err := json.Unmarshal(m.Data, &body); err != nil {
				t.Fatalf("%s payload: %v", w.subject, err)
			}
			if body.JobID != job {
				t.Errorf("%s payload job_id %q, want %q", w.subject, body.JobID, job)
			}
			if w.subject != bus.SubjectRequested && body.ID != w.id {
				t.Errorf("%s payload id %q, want %q (= Nats-Msg-Id)", w.subject, body.ID, w.id)
			}
		}
		for name, n := range map[string]uint64{bus.StreamRequests: 1, bus.StreamEvents: 5, bus.StreamProgress: 1} {
			if got := streamMsgs(t, s.JS, name); got != n {
				t.Errorf("stream %s has %d messages, want %d", name, got, n)
			}
		}
	})
}

func TestPublishSameIDStoredOnce(t *testing.T) {
	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
		s := start(t)
		ensureStreams(t, s.JS)
		ctx := testCtx(t)
		pub := newPub(t, s.JS)
		job := bus.NewJobID()
		ev := changeIDEvent(job, disk2000)

		first, err := pub.PublishEvent(ctx, ev)
		if err != nil {
			t.Fatal(err)
		}
		second, err := pub.PublishEvent(ctx, ev)
		if err != nil {
			t.Fatalf("second publish of the same event: %v", err)
		}
		if first.Duplicate || !second.Duplicate || second.Sequence != first.Sequence {
			t.Errorf("acks: first %+v, second %+v; want second to be a duplicate of the first", first, second)
		}
		// Same id, other payload: not stored, and the caller is told.
		if ack, err := pub.Publish(ctx, subjChangeID, ev.ID, schemas.NameChangeID, []byte(`{}`)); !errors.Is(err, bus.ErrDuplicateMsgID) {
			t.Errorf("raw publish with the same id and other bytes: ack %+v, err %v; want ErrDuplicateMsgID", ack, err)
		}
		// A request reusing a queued job's id for something else: refused.
		if _, err := pub.PublishRequest(ctx, schemas.Request{VM: "othervm", JobID: job}); err != nil {
			t.Fatal(err)
		}
		if _, err := pub.PublishRequest(ctx, schemas.Request{VM: "pgtest1", JobID: job}); !errors.Is(err, bus.ErrDuplicateMsgID) {
			t.Errorf("request reusing a queued job id: %v, want ErrDuplicateMsgID", err)
		}
		job = bus.NewJobID()
		// The same request twice (a retrying client) is queued once.
		req := schemas.Request{VM: "pgtest1", JobID: job}
		for range 2 {
			if _, err := pub.PublishRequest(ctx, req); err != nil {
				t.Fatal(err)
			}
		}
		if n := streamMsgs(t, s.JS, bus.StreamEvents); n != 1 {
			t.Errorf("events stream has %d messages, want 1", n)
		}
		if n := streamMsgs(t, s.JS, bus.StreamRequests); n != 2 {
			t.Errorf("requests stream has %d messages, want 2", n)
		}
	})
}

func TestPublishRetriesUntilStreamExists(t *testing.T) {
	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
		s := start(t)
		ctx := testCtx(t)
		pub := newPub(t, s.JS)
		job := bus.NewJobID()
		ev := startedEvent(job)

		type result struct {
			ack *jetstream.PubAck
			err error
			at  time.Time
		}
		done := make(chan result, 1)
		go func() {
			ack, err := pub.PublishEvent(ctx, ev)
			done <- result{ack, err, time.Now()}
		}()
		// No stream yet: the publisher gets "no responders" and retries.
		time.Sleep(500 * time.Millisecond)
		select {
		case r := <-done:
			t.Fatalf("publish returned before the stream existed: %+v", r)
		default:
		}
		created := time.Now()
		ensureStreams(t, s.JS)
		r := <-done
		if r.err != nil {
			t.Fatalf("publish: %v", r.err)
		}
		if r.ack.Stream != bus.StreamEvents || r.at.Before(created) {
			t.Errorf("ack %+v at %v, stream created at %v", r.ack, r.at, created)
		}
		if n := streamMsgs(t, s.JS, bus.StreamEvents); n != 1 {
			t.Errorf("events stream has %d messages, want 1", n)
		}
	})
}

func TestPublishGivesUpAtDeadline(t *testing.T) {
	s := bustest.Embedded(t)
	pub := newPub(t, s.JS)
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	begin := time.Now()
	_, err := pub.Publish(ctx, subjStarted, "job.1.started.0.0", schemas.NameStarted, []byte(`{}`))
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("err = %v, want deadline exceeded wrapping no stream response", err)
	}
	if d := time.Since(begin); d > 3*time.Second {
		t.Errorf("gave up after %v, want about the 700ms deadline", d)
	}
}

func TestPublishRefusesBadIdentity(t *testing.T) {
	s := bustest.Embedded(t)
	ensureStreams(t, s.JS)
	ctx := testCtx(t)
	pub := newPub(t, s.JS)
	job := bus.NewJobID()
	noID := startedEvent(job)
	noID.ID = ""
	noSchema := startedEvent(job)
	noSchema.Schema.Name = ""
	noJob := startedEvent(job)
	noJob.Header = hdr("", 1, schemas.NameStarted, 0, 0)
	dotJob := startedEvent(job)
	dotJob.Header = hdr("a.b", 1, schemas.NameStarted, 0, 0)
	ok := startedEvent(job)
	progress := progressEvent(job)
	otherType := startedEvent(job)
	otherType.Schema.Name = schemas.NameCompleted
	requester := bus.NewPublisher(s.JS, "sendense/test", bustest.Logger(t))
	badChangeID := changeIDEvent(job, disk2000)
	badChangeID.ChangeID = "x/1"
	noDisks := completedEvent(job)
	noDisks.Disks = nil

	tests := []struct {
		name    string
		publish func() error
		wantErr error
	}{
		{"event without id", func() error { _, err := pub.PublishEvent(ctx, noID); return err }, bus.ErrInvalidEvent},
		{"event without schema", func() error { _, err := pub.PublishEvent(ctx, noSchema); return err }, bus.ErrInvalidEvent},
		{"event without job id", func() error { _, err := pub.PublishEvent(ctx, noJob); return err }, bus.ErrInvalidJobID},
		{"job id with a dot", func() error { _, err := pub.PublishEvent(ctx, dotJob); return err }, bus.ErrInvalidJobID},
		{"schema name of another type", func() error { _, err := pub.PublishEvent(ctx, otherType); return err }, bus.ErrInvalidEvent},
		{"event from a publisher that is no agent's", func() error {
			_, err := requester.PublishEvent(ctx, ok)
			return err
		}, bus.ErrInvalidEvent},
		{"change id not in VMware's format", func() error {
			_, err := pub.PublishEvent(ctx, badChangeID)
			return err
		}, bus.ErrInvalidEvent},
		{"completed without disks", func() error {
			_, err := pub.PublishEvent(ctx, noDisks)
			return err
		}, bus.ErrInvalidEvent},
		{"nil event", func() error { _, err := pub.PublishEvent(ctx, nil); return err }, bus.ErrInvalidEvent},
		{"typed nil event", func() error {
			_, err := pub.PublishEvent(ctx, (*schemas.Started)(nil))
			return err
		}, bus.ErrInvalidEvent},
		{"wildcard subject", func() error { _, err := pub.Publish(ctx, "backup.>", "x", "t", nil); return err }, bus.ErrInvalidSubject},
		{"empty token", func() error { _, err := pub.Publish(ctx, "backup..started", "x", "t", nil); return err }, bus.ErrInvalidSubject},
		{"empty id", func() error { _, err := pub.Publish(ctx, subjStarted, "", "t", nil); return err }, bus.ErrInvalidMsgID},
		{"id with newline", func() error { _, err := pub.Publish(ctx, subjStarted, "a\nb", "t", nil); return err }, bus.ErrInvalidMsgID},
		{"request without job id", func() error { _, err := pub.PublishRequest(ctx, schemas.Request{VM: "pgtest1"}); return err }, bus.ErrInvalidJobID},
	}
	for _, tt := range tests {
		if err := tt.publish(); !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.wantErr)
		}
	}
	// A schema failure names the field and the rule.
	_, err := pub.PublishEvent(ctx, badChangeID)
	var ve *schemas.ValidationError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "/change_id") || !strings.Contains(err.Error(), "pattern") {
		t.Errorf("change id not in VMware's format: err = %v, want a *schemas.ValidationError naming /change_id and its pattern", err)
	}
	for _, name := range []string{bus.StreamEvents, bus.StreamRequests, bus.StreamProgress} {
		if n := streamMsgs(t, s.JS, name); n != 0 {
			t.Errorf("stream %s has %d messages after refused publishes", name, n)
		}
	}
	// The valid ones go through.
	if _, err := pub.PublishEvent(ctx, ok); err != nil {
		t.Error(err)
	}
	if _, err := pub.PublishEvent(ctx, progress); err != nil {
		t.Error(err)
	}
}

func TestRestartKeepsAckedMessages(t *testing.T) {
	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
		s := start(t)
		ensureStreams(t, s.JS)
		ctx := testCtx(t)
		pub := newPub(t, s.JS)
		job := bus.NewJobID()
		const n = 20
		changeID := func(i int) *schemas.ChangeID {
			d := disk2000
			d.Key += int32(i)
			return changeIDEvent(job, d)
		}
		for i := range n {
			if _, err := pub.PublishEvent(ctx, changeID(i)); err != nil {
				t.Fatal(err)
			}
		}
		s.Restart(t)
		ensureStreams(t, s.JS) // what every process does at start
		if got := streamMsgs(t, s.JS, bus.StreamEvents); got != n {
			t.Fatalf("after restart the events stream has %d messages, want %d", got, n)
		}
		// The duplicate window survived too: re-sending an acked event stores nothing.
		ack, err := pub.PublishEvent(ctx, changeID(0))
		if err != nil || !ack.Duplicate {
			t.Errorf("re-publish after restart: ack %+v, err %v; want a duplicate", ack, err)
		}
		// And the payloads read back intact, in order.
		cons, err := s.JS.OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		i := 0
		for m := range batch.Messages() {
			var c schemas.ChangeID
			if err := json.Unmarshal(m.Data(), &c); err != nil || c.Disk.Key != disk2000.Key+int32(i) || c.JobID != job {
				t.Errorf("message %d: %s (%v)", i, m.Data(), err)
			}
			i++
		}
		if i != n {
			t.Errorf("read %d messages back, want %d (%v)", i, n, batch.Error())
		}
	})
}

func TestConsumers(t *testing.T) {
	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
		s := start(t)
		ensureStreams(t, s.JS)
		ctx := testCtx(t)
		var reqs jetstream.Consumer
		for range 2 {
			c, err := bus.EnsureRequestConsumer(ctx, s.JS, bus.RequestConsumerOptions{})
			if err != nil {
				t.Fatalf("EnsureRequestConsumer: %v", err)
			}
			reqs = c
			if _, err := bus.EnsureCatalogConsumer(ctx, s.JS, ""); err != nil {
				t.Fatalf("EnsureCatalogConsumer: %v", err)
			}
		}
		rc := reqs.CachedInfo().Config
		if rc.Durable != bus.ConsumerAgents || rc.AckPolicy != jetstream.AckExplicitPolicy || rc.AckWait != bus.RequestAckWait ||
			rc.MaxDeliver != -1 || len(rc.BackOff) != 0 {
			t.Errorf("request consumer config %+v", rc)
		}
		cat, err := s.JS.Consumer(ctx, bus.StreamEvents, bus.ConsumerCatalog)
		if err != nil {
			t.Fatal(err)
		}
		cc := cat.CachedInfo().Config
		if cc.AckPolicy != jetstream.AckExplicitPolicy || cc.DeliverPolicy != jetstream.DeliverAllPolicy ||
			cc.MaxAckPending != bus.CatalogMaxAckPending {
			t.Errorf("catalog consumer config %+v", cc)
		}

		// A request is delivered, its attempt counts deliveries, and an ack removes it.
		pub := newPub(t, s.JS)
		job := bus.NewJobID()
		if _, err := pub.PublishRequest(ctx, schemas.Request{VM: "pgtest1", JobID: job}); err != nil {
			t.Fatal(err)
		}
		for attempt := 1; attempt <= 2; attempt++ {
			m, err := reqs.Next(jetstream.FetchMaxWait(5 * time.Second))
			if err != nil {
				t.Fatalf("delivery %d: %v", attempt, err)
			}
			got, err := bus.Attempt(m)
			if err != nil || got != attempt {
				t.Errorf("Attempt = %d, %v; want %d", got, err, attempt)
			}
			var req schemas.Request
			if err := json.Unmarshal(m.Data(), &req); err != nil {
				t.Fatal(err)
			}
			if id, err := bus.RequestJobID(req, m); err != nil || id != job {
				t.Errorf("RequestJobID = %q, %v; want %q", id, err, job)
			}
			if attempt == 1 {
				if err := m.Nak(); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if err := m.DoubleAck(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if n := streamMsgs(t, s.JS, bus.StreamRequests); n != 0 {
			t.Errorf("work queue holds %d messages after the ack, want 0", n)
		}

		// A raw `nats pub` without a job id gets one derived from the
		// message, the same on redelivery.
		if _, err := s.Conn.Request(bus.SubjectRequested, []byte(`{"vm":"pgtest1"}`), 5*time.Second); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for attempt := 1; attempt <= 2; attempt++ {
			m, err := reqs.Next(jetstream.FetchMaxWait(5 * time.Second))
			if err != nil {
				t.Fatal(err)
			}
			id, err := bus.RequestJobID(schemas.Request{VM: "pgtest1"}, m)
			if err != nil {
				t.Fatal(err)
			}
			if err := bus.ValidJobID(id); err != nil {
				t.Error(err)
			}
			ids = append(ids, id)
			if attempt == 1 {
				_ = m.Nak()
			} else {
				_ = m.DoubleAck(ctx)
			}
		}
		if ids[0] != ids[1] {
			t.Errorf("derived job ids differ across redelivery: %v", ids)
		}
		if _, err := bus.RequestJobID(schemas.Request{VM: "pgtest1", JobID: "a.b"}, nil); !errors.Is(err, bus.ErrInvalidJobID) {
			t.Errorf("RequestJobID with an invalid job id: %v", err)
		}
	})
}

func TestKeepInProgress(t *testing.T) {
	s := bustest.Embedded(t)
	ensureStreams(t, s.JS)
	ctx := testCtx(t)
	// A one-second ack wait, so a missing in-progress ack shows quickly.
	reqs, err := bus.EnsureRequestConsumer(ctx, s.JS, bus.RequestConsumerOptions{AckWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	pub := newPub(t, s.JS)
	for range 2 {
		if _, err := pub.PublishRequest(ctx, schemas.Request{VM: "pgtest1", JobID: bus.NewJobID()}); err != nil {
			t.Fatal(err)
		}
	}
	batch, err := reqs.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != 2 {
		t.Fatalf("fetched %d requests, want 2", len(msgs))
	}
	kept, idle := msgs[0], msgs[1]
	stop := bus.KeepInProgress(ctx, kept, 250*time.Millisecond, bustest.Logger(t))
	defer stop()

	// After 2.5 ack waits only the request without in-progress acks is back.
	time.Sleep(2500 * time.Millisecond)
	again, err := reqs.Fetch(2, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var redelivered []string
	for m := range again.Messages() {
		redelivered = append(redelivered, string(m.Data()))
		_ = m.Ack()
	}
	if len(redelivered) != 1 || redelivered[0] != string(idle.Data()) {
		t.Errorf("redelivered %q, want only %q", redelivered, idle.Data())
	}
	stop()
	if err := kept.DoubleAck(ctx); err != nil {
		t.Fatalf("ack of the request kept in progress: %v", err)
	}
}

// TestNakWithDelay: a request negatively acked with a short delay (an agent
// waiting for a VM lease) comes back after about that delay, not after an
// ack wait. It failed with a BackOff on the consumer (back after 30 s).
func TestNakWithDelay(t *testing.T) {
	s := bustest.Embedded(t)
	ensureStreams(t, s.JS)
	ctx := testCtx(t)
	reqs, err := bus.EnsureRequestConsumer(ctx, s.JS, bus.RequestConsumerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pub := newPub(t, s.JS)
	if _, err := pub.PublishRequest(ctx, schemas.Request{VM: "pgtest1", JobID: bus.NewJobID()}); err != nil {
		t.Fatal(err)
	}
	for delivery := 1; delivery <= 3; delivery++ {
		// Well under RequestAckWait (30 s): only the nak delay can explain it.
		m, err := reqs.Next(jetstream.FetchMaxWait(bus.RequestAckWait / 3))
		if err != nil {
			t.Fatalf("delivery %d: %v", delivery, err)
		}
		if n, _ := bus.Attempt(m); n != delivery {
			t.Fatalf("attempt %d, want %d", n, delivery)
		}
		if err := m.NakWithDelay(200 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStreamsUpgrade: a BACKUP_EVENTS stream of a build before agent
// identities (subjects without the agent token) is updated in place: the
// new subjects bind, the events stored before stay (the catalog replays
// them as agent ""), and nothing can be stored on the old subjects now.
func TestStreamsUpgrade(t *testing.T) {
	s := bustest.Embedded(t)
	ctx := testCtx(t)
	old := bus.StreamConfigs(bus.StreamOptions{})[1]
	old.Subjects = []string{"backup.started", "backup.changeid", "backup.completed", "backup.failed", "backup.rejected"}
	if _, err := s.JS.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := s.JS.Publish(ctx, schemas.NameCompleted, []byte(`{"old":true}`)); err != nil {
		t.Fatal(err)
	}
	ensureStreams(t, s.JS)
	st, err := s.JS.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().Config.Subjects; !slices.Equal(got, bus.EventSubjects) {
		t.Errorf("subjects after the update %v, want %v", got, bus.EventSubjects)
	}
	m, err := st.GetMsg(ctx, 1)
	if err != nil || m.Subject != schemas.NameCompleted || string(m.Data) != `{"old":true}` {
		t.Errorf("event stored before the update: %+v %v", m, err)
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := s.JS.Publish(short, schemas.NameCompleted, []byte(`{}`)); err == nil {
		t.Error("an event was stored on the old subject after the update")
	}
}
