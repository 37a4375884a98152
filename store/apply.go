package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/schemas"
)

// maxIDLen bounds event ids, job ids, VM UUIDs and repository names, which
// become bbolt keys and bucket names. An event over it is ErrInvalid (or
// ErrIncomplete for a completed event's VM UUID or repository) instead of a
// failed transaction.
const maxIDLen = 512

// Applied events are stored in job_events under eventKey (job id, event
// id, type code) with the event's JSON as the value: the payload it was
// decoded from (WithPayload), or else what json.Marshal gives.

// WithPayload pairs ev with the JSON payload schemas.Decode decoded it
// from, for Apply: Apply then stores payload as the event's record instead
// of encoding ev again (encoding is about a sixth of Apply's work). payload
// must be exactly those bytes and must not change until Apply returns: a
// later re-derivation of the job decodes the stored payload and must find
// the same event. schemas.Decode mirrors encoding/json.Unmarshal, which is
// what the catalog decodes stored events with, so it does.
func WithPayload(ev schemas.Event, payload []byte) schemas.Event {
	if isNil(ev) {
		return ev
	}
	return &decoded{Event: ev, payload: payload}
}

// decoded is an event with its payload (WithPayload).
type decoded struct {
	schemas.Event
	payload []byte
}

// Apply files a batch of events in one bbolt transaction, committed and
// synced to disk before it returns.
//
// The fatal error is non-nil when the transaction failed (disk full, file
// closed, ...); then nothing of the batch was applied and the per-event
// slice is nil. Otherwise the per-event slice has one entry per event: nil
// when the event was applied or is a duplicate (its id was applied before,
// in an earlier batch or earlier in this one: a no-op), or an error wrapping
//
//   - ErrIncomplete: a backup.completed that breaks "completed means
//     complete" (see ErrIncomplete). It is kept as a poison record and not
//     applied; the job keeps the status its other events give it.
//   - ErrInvalid: a nil or unknown event, or an empty or oversized id or
//     job id. Kept as a poison record when there is anything to keep.
//
// Events with a per-event error never fail the batch: the others are
// applied. The id of every event filed (applied or poisoned) is recorded in
// the same transaction, so redelivery is a no-op. An event's identity is
// its job id and event id: the publisher's ids (bus.EventID) start with
// the job id, so this is the event id alone in practice, and two events
// that share an id but not a job are both applied, whatever their order.
//
// Order does not matter: after the events are filed, every job the batch
// touched is re-derived from its complete event set (see Job). So a
// backup.completed applied before its backup.started gives the same job as
// the reverse. One consequence: when a later backup.started of the same
// attempt shows that an already applied backup.completed lacks one of its
// disks, that completed event is moved to the poison records then, and the
// job's status and chain links are derived again without it; the
// backup.started itself gets a nil error (it was applied). If the completed
// event is in the same batch it gets the ErrIncomplete; if it was applied
// by an earlier batch, a warning is logged instead.
//
// backup.progress events are applied differently: the job keeps only the
// newest one (highest attempt, seq, time, id) as Job.Progress, their ids
// are not recorded (keeping the newest is idempotent by itself), and they
// never create a job on their own: a job appears with its first other
// event.
func (c *Catalog) Apply(evs ...schemas.Event) ([]error, error) {
	errs := make([]error, len(evs))
	if len(evs) == 0 {
		return errs, nil
	}
	err := c.db.Update(func(tx *bolt.Tx) error {
		clear(errs)
		for _, name := range [][]byte{bucketApplied, bucketEvents, bucketJobs, bucketJobsByTime, bucketLinks} {
			tx.Bucket(name).FillPercent = appendFill
		}
		a := &applier{c: c, tx: tx, errs: errs, dirty: map[string][]record{}}
		for i, ev := range evs {
			if err := a.apply(i, ev); err != nil {
				return err
			}
		}
		return a.flush()
	})
	if err != nil {
		return nil, fmt.Errorf("apply batch of %d events: %w", len(evs), err)
	}
	return errs, nil
}

// appendFill is the bbolt FillPercent of the buckets Apply writes. Their
// keys mostly grow: job ids are UUIDv7 (time-ordered), event ids start with
// the job id, and index and chain keys start with a time. bbolt's default
// (0.5) splits such appends into half-empty pages, so a batch writes about
// twice the pages it needs; 0.9 packs them (the same choice etcd makes for
// its append-mostly key bucket) and still leaves room for the odd key that
// lands in an older page. It applies per transaction: bbolt does not store it.
const appendFill = 0.9

// applier holds the state of one Apply transaction.
type applier struct {
	c    *Catalog
	tx   *bolt.Tx
	errs []error
	// dirty holds the jobs to re-derive, each with its events of this
	// batch that flush files (in batch order, one per event id).
	dirty map[string][]record
	buf   bytes.Buffer  // encodeRecord's scratch
	enc   *json.Encoder // writes to buf
}

// apply files one event. It returns only fatal (storage) errors; problems
// with the event itself go to a.errs[i].
func (a *applier) apply(i int, ev schemas.Event) error {
	var payload []byte
	if d, ok := ev.(*decoded); ok {
		ev, payload = d.Event, d.payload
	}
	if isNil(ev) {
		a.errs[i] = fmt.Errorf("apply event %d of batch: nil event: %w", i, ErrInvalid)
		return nil
	}
	name := eventName(ev)
	h := ev.EventHeader()
	if h == nil {
		h = &schemas.Header{}
	}
	raw, merr := payload, error(nil)
	if payload == nil || name == "" {
		raw, merr = a.encodeRecord(ev)
	}
	if merr != nil {
		raw = fmt.Appendf(nil, "%+v", ev)
	}
	invalid := func(reason string) error {
		if name == "" {
			a.errs[i] = fmt.Errorf("apply %T %.64q of job %.64q: %w: %s", ev, h.ID, h.JobID, ErrInvalid, reason)
		} else {
			a.errs[i] = fmt.Errorf("apply %s %.64q of job %.64q: %w: %s", name, h.ID, h.JobID, ErrInvalid, reason)
		}
		subject := name
		if subject == "" {
			subject = fmt.Sprintf("%T", ev)
		}
		return putPoison(a.tx, PoisonRecord{
			Subject: subject, EventID: h.ID, JobID: h.JobID, Reason: reason, Raw: raw,
		}, a.c.now)
	}
	switch {
	case name == "":
		return invalid(fmt.Sprintf("unknown event type %T", ev))
	case merr != nil:
		return invalid(fmt.Sprintf("encode event: %v", merr))
	case h.ID == "":
		return invalid("no event id")
	case len(h.ID) > maxIDLen:
		return invalid(fmt.Sprintf("event id longer than %d bytes", maxIDLen))
	}
	if h.JobID == "" || len(h.JobID) > maxIDLen {
		// Without a usable job id the event's id is recorded in the
		// applied bucket, so that a redelivery is a no-op.
		applied := a.tx.Bucket(bucketApplied)
		if name != schemas.NameProgress && applied.Get([]byte(h.ID)) != nil {
			return nil // duplicate
		}
		reason := "no job id"
		if h.JobID != "" {
			reason = fmt.Sprintf("job id longer than %d bytes", maxIDLen)
		}
		if err := invalid(reason); err != nil {
			return err
		}
		if err := applied.Put([]byte(h.ID), []byte("-")); err != nil {
			return fmt.Errorf("record applied event %s: %w", h.ID, err)
		}
		return nil
	}

	if p, ok := ev.(*schemas.Progress); ok {
		return a.progress(p)
	}

	// Filed by flush, which reads the job's stored ids anyway: an event
	// already in the job's range is a duplicate. Within the batch the
	// first of the same (job, id) wins.
	pe := a.dirty[h.JobID]
	for _, r := range pe {
		if r.ev.EventHeader().ID == h.ID {
			return nil
		}
	}
	// Keep the decoded event for rederive, unless json.Marshal replaced
	// invalid UTF-8 (it writes the escape): then rederive must decode what
	// is stored, or a later re-derivation would see other strings. A
	// payload decodes to ev by WithPayload's contract.
	r := record{name: name, raw: raw, ev: ev, pos: i}
	if payload == nil && bytes.Contains(raw, []byte(`\ufffd`)) {
		d, err := decodeRecord([]byte(h.ID), eventCode(name), raw)
		if err != nil {
			return fmt.Errorf("job %s: %w", h.JobID, err)
		}
		r.ev, r.raw = d.ev, d.raw
	}
	a.dirty[h.JobID] = append(pe, r)
	return nil
}

// progress keeps p as the job's progress if it is newer than the kept one.
func (a *applier) progress(p *schemas.Progress) error {
	b := a.tx.Bucket(bucketProgress)
	np := Progress{
		EventID: p.ID, Attempt: p.Attempt, Seq: p.Seq,
		BytesDone: p.BytesDone, BytesTotal: p.BytesTotal, Time: p.Time.UTC(),
	}
	if raw := b.Get([]byte(p.JobID)); raw != nil {
		var old Progress
		if err := json.Unmarshal(raw, &old); err != nil {
			return fmt.Errorf("decode progress of job %s: %w", p.JobID, err)
		}
		if !newerProgress(&np, &old) {
			return nil
		}
	}
	v, err := json.Marshal(np)
	if err != nil {
		return fmt.Errorf("encode progress of job %s: %w", p.JobID, err)
	}
	if err := b.Put([]byte(p.JobID), v); err != nil {
		return fmt.Errorf("put progress of job %s: %w", p.JobID, err)
	}
	if _, ok := a.dirty[p.JobID]; !ok {
		a.dirty[p.JobID] = nil
	}
	return nil
}

func newerProgress(p, old *Progress) bool {
	if p.Attempt != old.Attempt {
		return p.Attempt > old.Attempt
	}
	if p.Seq != old.Seq {
		return p.Seq > old.Seq
	}
	if !p.Time.Equal(old.Time) {
		return p.Time.After(old.Time)
	}
	return p.EventID > old.EventID
}

// flush files the batch's events and re-derives every job the batch
// touched, in job id order.
func (a *applier) flush() error {
	ids := make([]string, 0, len(a.dirty))
	for id := range a.dirty {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if err := a.rederive(id, a.dirty[id]); err != nil {
			return err
		}
	}
	return nil
}

// rederive files a job's new events (those whose id is not in the job's
// range yet), recomputes the job from all its stored events and progress,
// moves completed events that break invariant 2 to the poison records
// (leaving an empty value, a tombstone, so the id stays applied), and
// rewrites the job record, its index entry and its chain links.
func (a *applier) rederive(jobID string, news []record) error {
	key := []byte(jobID)
	events := a.tx.Bucket(bucketEvents)
	prefix := appendPart(nil, jobID)
	var recs []record
	var have map[string]bool
	if len(news) > 0 {
		have = map[string]bool{}
	}
	cur := events.Cursor()
	for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
		_, id, code, ok := splitEventKey(k)
		if !ok {
			return fmt.Errorf("job %s: event key %x is malformed", jobID, k)
		}
		if have != nil {
			have[id] = true
		}
		if len(v) == 0 {
			continue // tombstone
		}
		r, err := decodeRecord([]byte(id), code, v)
		if err != nil {
			return fmt.Errorf("job %s: %w", jobID, err)
		}
		recs = append(recs, r)
	}
	for _, r := range news {
		id := r.ev.EventHeader().ID
		if have[id] {
			continue // duplicate: no-op
		}
		if err := events.Put(eventKey(jobID, id, eventCode(r.name)), r.raw); err != nil {
			return fmt.Errorf("put event %s of job %s: %w", id, jobID, err)
		}
		recs = append(recs, r)
	}
	var prog *Progress
	if raw := a.tx.Bucket(bucketProgress).Get(key); raw != nil {
		prog = new(Progress)
		if err := json.Unmarshal(raw, prog); err != nil {
			return fmt.Errorf("decode progress of job %s: %w", jobID, err)
		}
	}

	job, bad := derive(jobID, recs, prog)

	for _, b := range bad {
		h := b.rec.ev.EventHeader()
		if err := events.Put(eventKey(jobID, h.ID, eventCode(b.rec.name)), nil); err != nil {
			return fmt.Errorf("remove poisoned event %s of job %s: %w", h.ID, jobID, err)
		}
		err := putPoison(a.tx, PoisonRecord{
			Subject: b.rec.name, EventID: h.ID, JobID: jobID, Reason: b.reason, Raw: b.rec.raw,
		}, a.c.now)
		if err != nil {
			return fmt.Errorf("poison event %s of job %s: %w", h.ID, jobID, err)
		}
		perr := fmt.Errorf("apply %s %s of job %s: %w: %s", b.rec.name, h.ID, jobID, ErrIncomplete, b.reason)
		if b.rec.pos >= 0 {
			a.errs[b.rec.pos] = perr
		} else {
			a.c.log.Warn().Str("job_id", jobID).Str("event_id", h.ID).Str("reason", b.reason).
				Msg("applied completed event moved to poison records")
		}
	}
	return a.writeJob(jobID, job)
}

// writeJob replaces the stored record of a job (nil: the job has no events
// left) together with its index entry and chain links.
func (a *applier) writeJob(jobID string, job *Job) error {
	key := []byte(jobID)
	jobs := a.tx.Bucket(bucketJobs)
	idx := a.tx.Bucket(bucketJobsByTime)
	var v []byte
	if job != nil {
		var ok bool
		size := 512 + 512*len(job.Disks) + 64*len(job.EventIDs) // most records fit: one allocation
		if v, ok = appendJob(make([]byte, 0, size), job); !ok {
			var err error
			if v, err = json.Marshal(job); err != nil {
				return fmt.Errorf("encode job %s: %w", jobID, err)
			}
		}
	}
	raw := jobs.Get(key)
	if raw != nil && bytes.Equal(raw, v) {
		return nil // unchanged: so are its index entry and links
	}
	var old *Job
	if raw != nil {
		old = new(Job)
		if err := json.Unmarshal(raw, old); err != nil {
			return fmt.Errorf("decode job %s: %w", jobID, err)
		}
	}
	if oldKey, newKey := jobLinkKey(old), jobLinkKey(job); !bytes.Equal(oldKey, newKey) {
		links := a.tx.Bucket(bucketLinks)
		if oldKey != nil {
			if err := links.Delete(oldKey); err != nil {
				return fmt.Errorf("unlink job %s: %w", jobID, err)
			}
		}
		if newKey != nil {
			if err := links.Put(newKey, nil); err != nil {
				return fmt.Errorf("link job %s: %w", jobID, err)
			}
		}
	}
	if old != nil && (job == nil || !old.CreatedAt.Equal(job.CreatedAt)) {
		if err := idx.Delete(append(timeKey(old.CreatedAt), jobID...)); err != nil {
			return fmt.Errorf("unindex job %s: %w", jobID, err)
		}
	}
	if job == nil {
		if old == nil {
			return nil
		}
		if err := jobs.Delete(key); err != nil {
			return fmt.Errorf("delete job %s: %w", jobID, err)
		}
		return nil
	}
	if err := jobs.Put(key, v); err != nil {
		return fmt.Errorf("put job %s: %w", jobID, err)
	}
	if err := idx.Put(append(timeKey(job.CreatedAt), jobID...), nil); err != nil {
		return fmt.Errorf("index job %s: %w", jobID, err)
	}
	return nil
}

// eventKey is the key of an event in the job_events bucket: part(job id),
// part(event id), then the event's type code (eventCode).
func eventKey(jobID, eventID string, code byte) []byte {
	k := make([]byte, 0, len(jobID)+len(eventID)+5)
	return append(appendPart(appendPart(k, jobID), eventID), code)
}

// splitEventKey reads an eventKey back.
func splitEventKey(k []byte) (jobID, eventID string, code byte, ok bool) {
	jobID, rest, ok := cutPart(k)
	if ok {
		eventID, rest, ok = cutPart(rest)
	}
	if !ok || len(rest) != 1 {
		return "", "", 0, false
	}
	return jobID, eventID, rest[0], true
}

// eventNames are the event types by the code that ends their key; code 0
// is a tombstone of unknown type (migrated from version 1).
var eventNames = [...]string{
	1: schemas.NameStarted, 2: schemas.NameChangeID, 3: schemas.NameCompleted,
	4: schemas.NameFailed, 5: schemas.NameRejected,
}

// eventCode is the key code of an event type name, 0 for none.
func eventCode(name string) byte {
	for i, n := range eventNames {
		if n == name && n != "" {
			return byte(i)
		}
	}
	return 0
}

// record is one event of a job, decoded.
type record struct {
	name string
	raw  []byte // the event's JSON, the value filed
	ev   schemas.Event
	pos  int // position in the batch; -1 for an event filed earlier
}

// encodeRecord returns the JSON json.Marshal gives for ev, for an event
// Apply got without its payload. It encodes into the applier's buffer and
// copies once.
func (a *applier) encodeRecord(ev schemas.Event) ([]byte, error) {
	if a.enc == nil {
		a.enc = json.NewEncoder(&a.buf)
	}
	a.buf.Reset()
	if err := a.enc.Encode(ev); err != nil {
		return nil, err
	}
	return bytes.Clone(bytes.TrimSuffix(a.buf.Bytes(), []byte{'\n'})), nil
}

// decodeRecord decodes a stored event of type code; it copies what it
// keeps, so the record outlives the transaction.
func decodeRecord(id []byte, code byte, v []byte) (record, error) {
	var name string
	if int(code) < len(eventNames) {
		name = eventNames[code]
	}
	ev := newEvent(name)
	if ev == nil {
		return record{}, fmt.Errorf("stored event %s has unknown type code %d", id, code)
	}
	raw := bytes.Clone(v)
	if err := json.Unmarshal(raw, ev); err != nil {
		return record{}, fmt.Errorf("decode stored event %s: %w", id, err)
	}
	return record{name: name, raw: raw, ev: ev, pos: -1}, nil
}

func eventName(ev schemas.Event) string {
	switch ev.(type) {
	case *schemas.Started:
		return schemas.NameStarted
	case *schemas.Progress:
		return schemas.NameProgress
	case *schemas.ChangeID:
		return schemas.NameChangeID
	case *schemas.Completed:
		return schemas.NameCompleted
	case *schemas.Failed:
		return schemas.NameFailed
	case *schemas.Rejected:
		return schemas.NameRejected
	}
	return ""
}

func newEvent(name string) schemas.Event {
	switch name {
	case schemas.NameStarted:
		return new(schemas.Started)
	case schemas.NameChangeID:
		return new(schemas.ChangeID)
	case schemas.NameCompleted:
		return new(schemas.Completed)
	case schemas.NameFailed:
		return new(schemas.Failed)
	case schemas.NameRejected:
		return new(schemas.Rejected)
	}
	return nil
}

func isNil(ev schemas.Event) bool {
	if ev == nil {
		return true
	}
	v := reflect.ValueOf(ev)
	return v.Kind() == reflect.Pointer && v.IsNil()
}
