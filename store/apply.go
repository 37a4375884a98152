package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/schemas"
)

// maxIDLen bounds event ids, job ids, VM UUIDs and repository names, which
// become bbolt keys and bucket names. An event over it is ErrInvalid (or
// ErrIncomplete for a completed event's VM UUID or repository) instead of a
// failed transaction.
const maxIDLen = 512

// Applied events are stored in job_events under eventKey (job id, event
// id, type code, agent) with the event's JSON as the value: the payload it
// was decoded from (WithSource), or else what json.Marshal gives.

// WithSource pairs ev with where it came from, for Apply:
//
//   - payload is the JSON schemas.Decode decoded ev from. Apply then
//     stores payload as the event's record instead of encoding ev again
//     (encoding is about a sixth of Apply's work). payload must be exactly
//     those bytes and must not change until Apply returns: a later
//     re-derivation of the job decodes the stored payload and must find the
//     same event. schemas.Decode mirrors encoding/json.Unmarshal, which is
//     what the catalog decodes stored events with, so it does. nil: Apply
//     encodes ev, as for an event passed without WithSource.
//   - agent is the name of the agent that published ev, which the bus puts
//     in the subject (backup.completed.<agent>). "" means a legacy event,
//     published on the subject without that token before agents had
//     identities; so is an event passed without WithSource. The agent is
//     part of the event's identity (job id, event id, agent), and a
//     backup.completed counts only with the backup.started and
//     backup.changeid events of the same agent (see consistency.go).
func WithSource(ev schemas.Event, payload []byte, agent string) schemas.Event {
	if isNil(ev) || (payload == nil && agent == "") {
		return ev
	}
	return &sourced{Event: ev, payload: payload, agent: agent}
}

// sourced is an event with its payload and agent (WithSource).
type sourced struct {
	schemas.Event
	payload []byte
	agent   string
}

// Apply files a batch of events in one bbolt transaction, committed and
// synced to disk before it returns.
//
// The fatal error is non-nil when the transaction failed (disk full, file
// closed, ...); then nothing of the batch was applied and the per-event
// slice is nil. Otherwise the per-event slice has one entry per event: nil
// when the event was applied or is a duplicate (filed before, in an earlier
// batch or earlier in this one: a no-op), or an error wrapping
//
//   - ErrIncomplete: a backup.completed that breaks "completed means
//     complete" (see ErrIncomplete). It is kept as a poison record and not
//     applied; the job keeps the status its other events give it.
//   - ErrInconsistent: an event that does not fit its job's history
//     (design invariant 10, see consistency.go): a non-canonical id, a
//     target outside the job's path, a backup.completed without matching
//     backup.started and backup.changeid events of its attempt from the
//     same agent, or an event that would rewrite a completed job. Kept as
//     a poison record and not applied.
//   - ErrInvalid: a nil or unknown event, or an empty or oversized id,
//     job id or agent. Kept as a poison record when there is anything to
//     keep.
//
// Events with a per-event error never fail the batch: the others are
// applied. Every event with a usable job id is filed (its bytes kept in the
// job's range, applied or not) in the same transaction, so redelivery is a
// no-op. An event's identity is its job id, event id and agent (see
// WithSource): the publisher's ids (bus.EventID) start with the job id, so
// this is the event id and agent in practice; two events that share an id
// but not an agent are both filed, whatever their order.
//
// Order does not matter: after the events are filed, every job the batch
// touched is re-derived from its complete event set (see Job), and which of
// its events are poison is decided from that set too (consistency.go). So
// a backup.completed applied before its backup.started gives the same job
// as the reverse. The per-event errors can differ, though: a completed
// that arrives first is poison (ErrInconsistent, "no backup.started ...")
// until its started and changeid events arrive; the batch that brings them
// applies it, removes its poison record, logs that, and gives nil errors.
// The other way round, when a later event shows that an already applied
// event is poison (a backup.started of the same attempt lacks one of the
// completed event's disks), the job's status and chain links are derived
// again without it; that later event gets a nil error (it was applied), and
// the poisoned one gets the error if it is in the same batch, else a
// warning is logged.
//
// backup.progress events are applied differently: the job keeps only the
// newest one (highest attempt, seq, time, id) as Job.Progress, their ids
// are not recorded (keeping the newest is idempotent by itself), and they
// never create a job on their own: a job appears with its first other
// event. A progress event with a non-canonical id is ErrInconsistent.
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
		a := &applier{tx: tx, log: c.log, now: c.now, errs: errs, dirty: map[string][]record{}}
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

// applier holds the state of one Apply transaction (or of Open's
// migration, which re-derives every job).
type applier struct {
	tx   *bolt.Tx
	log  zerolog.Logger
	now  func() time.Time
	errs []error // per event of the batch; nil in a migration
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
	var agent string
	if d, ok := ev.(*sourced); ok {
		ev, payload, agent = d.Event, d.payload, d.agent
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
	refuse := func(sentinel error, reason string) error {
		what := name
		if what == "" {
			what = fmt.Sprintf("%T", ev)
		}
		a.errs[i] = fmt.Errorf("apply %s %.64q of job %.64q from agent %.64s: %w: %s", what, h.ID, h.JobID, agentName(agent), sentinel, reason)
		return putPoison(a.tx, PoisonRecord{
			Subject: what, EventID: h.ID, JobID: h.JobID, Agent: agent, Reason: reason, Raw: raw,
		}, a.now)
	}
	invalid := func(reason string) error { return refuse(ErrInvalid, reason) }
	switch {
	case name == "":
		return invalid(fmt.Sprintf("unknown event type %T", ev))
	case merr != nil:
		return invalid(fmt.Sprintf("encode event: %v", merr))
	case h.ID == "":
		return invalid("no event id")
	case len(h.ID) > maxIDLen:
		return invalid(fmt.Sprintf("event id longer than %d bytes", maxIDLen))
	case len(agent) > maxIDLen:
		return invalid(fmt.Sprintf("agent longer than %d bytes", maxIDLen))
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
		// Not stored, so judged alone: only its id can be wrong.
		if reason := checkShape(h.JobID, record{name: name, ev: ev}); reason != "" {
			return refuse(ErrInconsistent, reason)
		}
		return a.progress(p)
	}

	// Filed by flush, which reads the job's stored ids anyway: an event
	// already in the job's range is a duplicate. Within the batch the
	// first of the same (job, id, agent) wins.
	pe := a.dirty[h.JobID]
	for _, r := range pe {
		if r.agent == agent && r.ev.EventHeader().ID == h.ID {
			return nil
		}
	}
	// Keep the decoded event for rederive, unless json.Marshal replaced
	// invalid UTF-8 (it writes the escape): then rederive must decode what
	// is stored, or a later re-derivation would see other strings. A
	// payload decodes to ev by WithSource's contract.
	r := record{name: name, agent: agent, raw: raw, ev: ev, pos: i}
	if payload == nil && bytes.Contains(raw, []byte(`\ufffd`)) {
		d, err := decodeRecord([]byte(h.ID), eventCode(name), agent, raw)
		if err != nil {
			return fmt.Errorf("job %s: %w", h.JobID, err)
		}
		d.pos = i
		r = d
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

// eventIdent is an event's identity within its job.
type eventIdent struct{ id, agent string }

// rederive files a job's new events (those whose (id, agent) is not in the
// job's range yet), recomputes the job from all its stored events and
// progress, brings the poison records of its events in line with the
// verdicts (judge), and rewrites the job record, its index entry and its
// chain links.
func (a *applier) rederive(jobID string, news []record) error {
	key := []byte(jobID)
	events := a.tx.Bucket(bucketEvents)
	prefix := appendPart(nil, jobID)
	var recs []record
	var tombs []string // ids of tombstones: poison for good, their bytes are gone
	var have map[eventIdent]bool
	if len(news) > 0 {
		have = map[eventIdent]bool{}
	}
	cur := events.Cursor()
	for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
		_, id, code, agent, ok := splitEventKey(k)
		if !ok {
			return fmt.Errorf("job %s: event key %x is malformed", jobID, k)
		}
		if have != nil {
			have[eventIdent{id, agent}] = true
		}
		if len(v) == 0 {
			// A tombstone of layout 2 (or 1): the event was moved to
			// the poison records, which keep it.
			tombs = append(tombs, id)
			continue
		}
		r, err := decodeRecord([]byte(id), code, agent, v)
		if err != nil {
			return fmt.Errorf("job %s: %w", jobID, err)
		}
		recs = append(recs, r)
	}
	stored := len(recs)
	for _, r := range news {
		id := eventIdent{r.ev.EventHeader().ID, r.agent}
		if have[id] {
			continue // duplicate: no-op
		}
		if err := events.Put(eventKey(jobID, id.id, eventCode(r.name), r.agent), r.raw); err != nil {
			return fmt.Errorf("put event %s of job %s: %w", id.id, jobID, err)
		}
		have[id] = true
		recs = append(recs, r)
	}
	var prog *Progress
	if raw := a.tx.Bucket(bucketProgress).Get(key); raw != nil {
		prog = new(Progress)
		if err := json.Unmarshal(raw, prog); err != nil {
			return fmt.Errorf("decode progress of job %s: %w", jobID, err)
		}
	}

	// Which events were poison before this batch: the job record says
	// (PoisonedEventIDs). Without a record, every event stored before was
	// poison (or there was none): their records say.
	raw := a.tx.Bucket(bucketJobs).Get(key)
	var storedIDs []string
	if raw == nil {
		for _, r := range recs[:stored] {
			storedIDs = append(storedIDs, r.ev.EventHeader().ID)
		}
	}

	job, bad := derive(jobID, recs, prog)
	if job != nil && len(tombs) > 0 {
		job.PoisonedEventIDs = append(job.PoisonedEventIDs, tombs...)
		slices.Sort(job.PoisonedEventIDs)
		job.PoisonedEventIDs = slices.Compact(job.PoisonedEventIDs)
	}

	old, changed, err := a.writeJob(jobID, job, raw)
	if err != nil {
		return err
	}
	var was []string
	switch {
	case raw == nil:
		if was, err = a.ownPoison(jobID, storedIDs); err != nil {
			return err
		}
	case changed:
		was = old.PoisonedEventIDs
	default:
		was = job.PoisonedEventIDs // the same record
	}
	return a.settlePoison(jobID, bad, was, tombs)
}

// settlePoison writes a poison record for each of a job's refused events
// (one per event id: the first by agent), sets their per-event errors or
// logs the ones applied by an earlier batch, and removes the records of
// the job's events that were poison before (was) and are applied now;
// tombstones (tombs) stay poison.
func (a *applier) settlePoison(jobID string, bad []badRecord, was, tombs []string) error {
	if len(bad) == 0 && len(was) == 0 {
		return nil
	}
	wasPoison := make(map[string]bool, len(was))
	for _, id := range was {
		wasPoison[id] = true
	}
	isPoison := make(map[string]bool, len(bad)+len(tombs))
	for _, id := range tombs {
		isPoison[id] = true
	}
	for _, b := range bad { // sorted by (id, agent)
		h := b.rec.ev.EventHeader()
		if !isPoison[h.ID] {
			isPoison[h.ID] = true
			err := a.putJobPoison(PoisonRecord{
				Subject: b.rec.name, EventID: h.ID, JobID: jobID, Agent: b.rec.agent, Reason: b.reason, Raw: b.rec.raw,
			})
			if err != nil {
				return fmt.Errorf("poison event %s of job %s: %w", h.ID, jobID, err)
			}
		}
		switch {
		case b.rec.pos >= 0:
			a.errs[b.rec.pos] = fmt.Errorf("apply %s %s of job %s from agent %s: %w: %s",
				b.rec.name, h.ID, jobID, agentName(b.rec.agent), b.err, b.reason)
		case !wasPoison[h.ID]:
			a.log.Warn().Str("job_id", jobID).Str("event_id", h.ID).Str("agent", b.rec.agent).
				Str("reason", b.reason).Msg("applied event moved to poison records")
		}
	}
	poison := a.tx.Bucket(bucketPoison)
	for _, id := range was {
		if isPoison[id] {
			continue
		}
		k := poisonIDKey(id)
		p, ok, err := jobPoison(poison, k, jobID)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if err := poison.Delete(k); err != nil {
			return fmt.Errorf("remove poison record of event %s of job %s: %w", id, jobID, err)
		}
		a.log.Info().Str("job_id", jobID).Str("event_id", id).Str("agent", p.Agent).
			Msg("poisoned event applied, its poison record removed")
	}
	return nil
}

// putJobPoison writes the poison record of a job's refused event, keyed by
// its event id, keeping the time of a record already there. A record of
// the same id kept for another job, or by RecordPoison, is left alone:
// the first one stays, as with putPoison.
func (a *applier) putJobPoison(p PoisonRecord) error {
	if len(p.Raw) > MaxPoisonRaw {
		p.Raw = p.Raw[:MaxPoisonRaw]
		p.Truncated = true
	}
	b := a.tx.Bucket(bucketPoison)
	k := poisonIDKey(p.EventID)
	if raw := b.Get(k); raw != nil {
		var o PoisonRecord
		if err := json.Unmarshal(raw, &o); err != nil {
			return fmt.Errorf("decode poison record %q: %w", k, err)
		}
		if o.JobID != p.JobID || o.Seq != 0 {
			return nil
		}
		if o.Subject == p.Subject && o.Agent == p.Agent && o.Reason == p.Reason && o.Truncated == p.Truncated && bytes.Equal(o.Raw, p.Raw) {
			return nil // unchanged
		}
		p.Time = o.Time
	}
	if p.Time.IsZero() {
		p.Time = a.now()
	}
	p.Time = p.Time.UTC()
	v, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode poison record: %w", err)
	}
	return b.Put(k, v)
}

// ownPoison returns those of ids whose poison record belongs to job jobID.
func (a *applier) ownPoison(jobID string, ids []string) ([]string, error) {
	poison := a.tx.Bucket(bucketPoison)
	var own []string
	for _, id := range ids {
		if _, ok, err := jobPoison(poison, poisonIDKey(id), jobID); err != nil {
			return nil, err
		} else if ok && !slices.Contains(own, id) {
			own = append(own, id)
		}
	}
	return own, nil
}

// jobPoison reads the poison record at k if it is one Apply kept for an
// event of job jobID.
func jobPoison(b *bolt.Bucket, k []byte, jobID string) (PoisonRecord, bool, error) {
	raw := b.Get(k)
	if raw == nil {
		return PoisonRecord{}, false, nil
	}
	var p PoisonRecord
	if err := json.Unmarshal(raw, &p); err != nil {
		return PoisonRecord{}, false, fmt.Errorf("decode poison record %q: %w", k, err)
	}
	return p, p.JobID == jobID && p.Seq == 0, nil
}

// writeJob replaces the stored record of a job (raw; nil when there is
// none) by job (nil: the job has no applied events left), together with
// its index entry and chain links. It returns whether the record changed
// and, when it did, the old record decoded (nil if there was none).
func (a *applier) writeJob(jobID string, job *Job, raw []byte) (old *Job, changed bool, err error) {
	key := []byte(jobID)
	jobs := a.tx.Bucket(bucketJobs)
	idx := a.tx.Bucket(bucketJobsByTime)
	var v []byte
	if job != nil {
		var ok bool
		size := 512 + 512*len(job.Disks) + 64*(len(job.EventIDs)+len(job.PoisonedEventIDs)) // most records fit: one allocation
		if v, ok = appendJob(make([]byte, 0, size), job); !ok {
			if v, err = json.Marshal(job); err != nil {
				return nil, false, fmt.Errorf("encode job %s: %w", jobID, err)
			}
		}
	}
	if (raw == nil) == (v == nil) && bytes.Equal(raw, v) {
		return nil, false, nil // unchanged: so are its index entry and links
	}
	if raw != nil {
		old = new(Job)
		if err := json.Unmarshal(raw, old); err != nil {
			return nil, false, fmt.Errorf("decode job %s: %w", jobID, err)
		}
	}
	if oldKey, newKey := jobLinkKey(old), jobLinkKey(job); !bytes.Equal(oldKey, newKey) {
		links := a.tx.Bucket(bucketLinks)
		if oldKey != nil {
			if err := links.Delete(oldKey); err != nil {
				return nil, false, fmt.Errorf("unlink job %s: %w", jobID, err)
			}
		}
		if newKey != nil {
			if err := links.Put(newKey, nil); err != nil {
				return nil, false, fmt.Errorf("link job %s: %w", jobID, err)
			}
		}
	}
	if old != nil && (job == nil || !old.CreatedAt.Equal(job.CreatedAt)) {
		if err := idx.Delete(append(timeKey(old.CreatedAt), jobID...)); err != nil {
			return nil, false, fmt.Errorf("unindex job %s: %w", jobID, err)
		}
	}
	if job == nil {
		if err := jobs.Delete(key); err != nil {
			return nil, false, fmt.Errorf("delete job %s: %w", jobID, err)
		}
		return old, true, nil
	}
	if err := jobs.Put(key, v); err != nil {
		return nil, false, fmt.Errorf("put job %s: %w", jobID, err)
	}
	if err := idx.Put(append(timeKey(job.CreatedAt), jobID...), nil); err != nil {
		return nil, false, fmt.Errorf("index job %s: %w", jobID, err)
	}
	return old, true, nil
}

// eventKey is the key of an event in the job_events bucket: part(job id),
// part(event id), the event's type code (eventCode), then the agent's
// bytes (none for the agent "", and in every key of layout 2).
func eventKey(jobID, eventID string, code byte, agent string) []byte {
	k := make([]byte, 0, len(jobID)+len(eventID)+len(agent)+5)
	return append(append(appendPart(appendPart(k, jobID), eventID), code), agent...)
}

// splitEventKey reads an eventKey back.
func splitEventKey(k []byte) (jobID, eventID string, code byte, agent string, ok bool) {
	jobID, rest, ok := cutPart(k)
	if ok {
		eventID, rest, ok = cutPart(rest)
	}
	if !ok || len(rest) < 1 {
		return "", "", 0, "", false
	}
	return jobID, eventID, rest[0], string(rest[1:]), true
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
	name  string
	agent string // who published it (WithSource); "" for a legacy event
	raw   []byte // the event's JSON, the value filed
	ev    schemas.Event
	pos   int // position in the batch; -1 for an event filed earlier
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

// decodeRecord decodes a stored event of type code from agent; it copies
// what it keeps, so the record outlives the transaction.
func decodeRecord(id []byte, code byte, agent string, v []byte) (record, error) {
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
	return record{name: name, agent: agent, raw: raw, ev: ev, pos: -1}, nil
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
