package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// maxIDLen bounds event ids, job ids, VM UUIDs and repository names, which
// become bbolt keys and bucket names. An event over it is ErrInvalid (or
// ErrIncomplete for a completed event's VM UUID or repository) instead of a
// failed transaction.
const maxIDLen = 512

// Applied events are stored in job_events under eventKey (job id, event
// id, type code, agent, stream sequence) with the event's JSON as the
// value: the payload it was decoded from (Source.Payload), or else what
// json.Marshal gives.

// Source is where an event came from: what the catalog consumer knows of
// the message it decoded the event from. The zero Source is an event of
// unknown origin: the legacy agent "", no payload, no sequence.
type Source struct {
	// Payload is the JSON schemas.Decode decoded the event from. Apply
	// then stores Payload as the event's record instead of encoding the
	// event again (encoding is about a sixth of Apply's work). It must be
	// exactly those bytes and must not change until Apply returns: a later
	// re-derivation of the job decodes the stored payload and must find
	// the same event. schemas.Decode mirrors encoding/json.Unmarshal,
	// which is what the catalog decodes stored events with, so it does.
	// nil: Apply encodes the event.
	Payload []byte
	// Agent is the name of the agent that published the event, which the
	// bus puts in the subject (backup.completed.<agent>). "" means a
	// legacy event, published on the subject without that token before
	// agents had identities. The agent is part of the event's identity
	// (job id, event id, agent), and the consistency rules judge an event
	// by its agent (consistency.go).
	Agent string
	// Seq is the stream sequence the event was stored at (JetStream
	// message metadata). It is the event's place in the job's history:
	// which agent an attempt belongs to and which backup.completed makes
	// the job completed follow it, never the publisher's times
	// (consistency.go). 0 means unknown: such events (applied without a
	// Source, or filed by a build of layout 2) come before every event
	// with a sequence, and among themselves in canonical order.
	Seq uint64
}

// WithSource pairs ev with where it came from, for Apply. An event
// without a Source is one of the zero Source.
func WithSource(ev schemas.Event, src Source) schemas.Event {
	if isNil(ev) || (src.Payload == nil && src.Agent == "" && src.Seq == 0) {
		return ev
	}
	return &sourced{Event: ev, src: src}
}

// sourced is an event with its Source (WithSource).
type sourced struct {
	schemas.Event
	src Source
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
//     same agent, an event of an attempt another agent started first, or
//     an event that would rewrite a completed job. Kept as a poison record
//     and not applied.
//   - ErrInvalid: a nil or unknown event, or an empty or oversized id,
//     job id or agent. Kept as a poison record when there is anything to
//     keep.
//
// Events with a per-event error never fail the batch: the others are
// applied. Every event with a usable job id is filed (its bytes kept in the
// job's range, applied or not) in the same transaction, so redelivery is a
// no-op. An event's identity is its job id, event id and agent (see
// Source): the publisher's ids (bus.EventID) start with the job id, so
// this is the event id and agent in practice; two events that share an id
// but not an agent are both filed, whatever their order. Of two events of
// the same identity the one stored first in the stream (the lower
// Source.Seq) is kept and the other is a no-op: a re-publish under the
// same id after the stream's duplicate window, which the stream stores
// again under a new sequence, changes nothing, and if it is applied
// before the first one, the first replaces it. With equal sequences (0,
// unknown, included) the one filed first stays.
//
// Apply order does not matter: after the events are filed, every job the
// batch touched is re-derived from its complete event set (see Job), and
// which of its events are poison is decided from that set and the events'
// stream sequences (consistency.go). So a backup.completed applied before
// its backup.started gives the same job as the reverse. The per-event
// errors can differ, though: a completed
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
	var src Source
	if d, ok := ev.(*sourced); ok {
		ev, src = d.Event, d.src
	}
	payload, agent := src.Payload, src.Agent
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
		return putPoison(a.tx, backup.PoisonRecord{
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
	// already in the job's range is a duplicate. Within the batch, of the
	// same (job, id, agent) the lowest sequence wins, then the first.
	pe := a.dirty[h.JobID]
	dup := -1
	for k, r := range pe {
		if r.agent == agent && r.ev.EventHeader().ID == h.ID {
			if src.Seq >= r.seq {
				return nil
			}
			dup = k
			break
		}
	}
	// Keep the decoded event for rederive, unless json.Marshal replaced
	// invalid UTF-8 (it writes the escape): then rederive must decode what
	// is stored, or a later re-derivation would see other strings. A
	// payload decodes to ev by WithSource's contract.
	r := record{name: name, agent: agent, seq: src.Seq, raw: raw, ev: ev, pos: i}
	if payload == nil && bytes.Contains(raw, []byte(`\ufffd`)) {
		d, err := decodeRecord([]byte(h.ID), eventCode(name), agent, src.Seq, raw)
		if err != nil {
			return fmt.Errorf("job %s: %w", h.JobID, err)
		}
		d.pos = i
		r = d
	}
	if dup >= 0 {
		pe[dup] = r // stored earlier in the stream: the other is the duplicate
		return nil
	}
	a.dirty[h.JobID] = append(pe, r)
	return nil
}

// progress keeps p as the job's progress if it is newer than the kept one.
func (a *applier) progress(p *schemas.Progress) error {
	b := a.tx.Bucket(bucketProgress)
	np := backup.Progress{
		EventID: p.ID, Attempt: p.Attempt, Seq: p.Seq,
		BytesDone: p.BytesDone, BytesTotal: p.BytesTotal, Time: p.Time.UTC(),
	}
	if raw := b.Get([]byte(p.JobID)); raw != nil {
		var old backup.Progress
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

func newerProgress(p, old *backup.Progress) bool {
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

// filed is where rederive found a stored event of a job: its index in
// recs (-1 for a tombstone), type code and sequence, which with its
// identity make its key.
type filed struct {
	idx  int
	code byte
	seq  uint64
}

// rederive files a job's new events (those whose (id, agent) is not in the
// job's range yet, or is there with a higher sequence: see Apply),
// recomputes the job from all its stored events and progress, brings the
// poison records of its events in line with the verdicts (judge), and
// rewrites the job record, its index entry and its chain links.
func (a *applier) rederive(jobID string, news []record) error {
	key := []byte(jobID)
	events := a.tx.Bucket(bucketEvents)
	prefix := appendPart(nil, jobID)
	var recs []record
	var tombs []string // ids of tombstones: poison for good, their bytes are gone
	var have map[eventIdent]filed
	if len(news) > 0 {
		have = map[eventIdent]filed{}
	}
	cur := events.Cursor()
	for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
		_, id, code, agent, seq, ok := splitEventKey(k)
		if !ok {
			return fmt.Errorf("job %s: event key %x is malformed", jobID, k)
		}
		f := filed{idx: -1, code: code, seq: seq}
		if len(v) == 0 {
			// A tombstone of layout 2 (or 1): the event was moved to
			// the poison records, which keep it.
			tombs = append(tombs, id)
		} else {
			r, err := decodeRecord([]byte(id), code, agent, seq, v)
			if err != nil {
				return fmt.Errorf("job %s: %w", jobID, err)
			}
			f.idx = len(recs)
			recs = append(recs, r)
		}
		if have != nil {
			have[eventIdent{id, agent}] = f // one key per identity: Apply keeps it so
		}
	}
	stored := len(recs)
	for _, r := range news {
		id := eventIdent{r.ev.EventHeader().ID, r.agent}
		f, dup := have[id]
		if dup && (f.idx < 0 || r.seq >= f.seq) {
			continue // duplicate: no-op
		}
		if dup {
			// The stream stored r before the filed one: r replaces it.
			if err := events.Delete(eventKey(jobID, id.id, f.code, r.agent, f.seq)); err != nil {
				return fmt.Errorf("replace event %s of job %s: %w", id.id, jobID, err)
			}
		}
		code := eventCode(r.name)
		if err := events.Put(eventKey(jobID, id.id, code, r.agent, r.seq), r.raw); err != nil {
			return fmt.Errorf("put event %s of job %s: %w", id.id, jobID, err)
		}
		if dup {
			recs[f.idx] = r
		} else {
			f.idx = len(recs)
			recs = append(recs, r)
		}
		have[id] = filed{idx: f.idx, code: code, seq: r.seq}
	}
	var prog *backup.Progress
	if raw := a.tx.Bucket(bucketProgress).Get(key); raw != nil {
		prog = new(backup.Progress)
		if err := json.Unmarshal(raw, prog); err != nil {
			return fmt.Errorf("decode progress of job %s: %w", jobID, err)
		}
	}

	raw := a.tx.Bucket(bucketJobs).Get(key)
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
	// Whether the job had poison records before this batch: its record
	// says (PoisonedEventIDs); without one, every event stored before was
	// poison (or there was none).
	var hadPoison bool
	switch {
	case raw == nil:
		hadPoison = stored > 0 || len(tombs) > 0
	case changed:
		hadPoison = len(old.PoisonedEventIDs) > 0
	default:
		hadPoison = len(job.PoisonedEventIDs) > 0 // the same record
	}
	if len(bad) == 0 && !hadPoison {
		return nil
	}
	return a.settlePoison(jobID, bad, tombs)
}

// settlePoison makes the job's poison records (poisonJobKey, one per
// refused event's (id, agent)) those of bad and of the tombstones (tombs,
// which stay): it writes the new ones, keeping the time of a record that
// was there, removes those of events that are applied now, sets the
// per-event errors of this batch's refused events and logs the ones that
// an earlier batch applied.
func (a *applier) settlePoison(jobID string, bad []badRecord, tombs []string) error {
	poison := a.tx.Bucket(bucketPoison)
	prefix := poisonJobPrefix(jobID)
	type kept struct {
		key   []byte
		p     backup.PoisonRecord
		still bool // the event is poison still
	}
	var was []kept // in key order
	byID := map[eventIdent]int{}
	cur := poison.Cursor()
	for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
		var p backup.PoisonRecord
		if err := json.Unmarshal(v, &p); err != nil {
			return fmt.Errorf("decode poison record %q: %w", k, err)
		}
		byID[eventIdent{p.EventID, p.Agent}] = len(was)
		was = append(was, kept{key: bytes.Clone(k), p: p, still: slices.Contains(tombs, p.EventID)})
	}
	for _, b := range bad {
		h := b.rec.ev.EventHeader()
		var o backup.PoisonRecord
		i, wasPoison := byID[eventIdent{h.ID, b.rec.agent}]
		if wasPoison {
			o, was[i].still = was[i].p, true
		}
		p := backup.PoisonRecord{
			Subject: b.rec.name, EventID: h.ID, JobID: jobID, Agent: b.rec.agent, Reason: b.reason, Raw: b.rec.raw,
		}
		if len(p.Raw) > backup.MaxPoisonRaw {
			p.Raw = p.Raw[:backup.MaxPoisonRaw]
			p.Truncated = true
		}
		if !wasPoison || o.Subject != p.Subject || o.Reason != p.Reason || o.Truncated != p.Truncated || !bytes.Equal(o.Raw, p.Raw) {
			p.Time = o.Time
			if p.Time.IsZero() {
				p.Time = a.now()
			}
			p.Time = p.Time.UTC()
			v, err := json.Marshal(p)
			if err != nil {
				return fmt.Errorf("encode poison record of event %s of job %s: %w", h.ID, jobID, err)
			}
			if err := poison.Put(poisonJobKey(jobID, h.ID, b.rec.agent), v); err != nil {
				return fmt.Errorf("poison event %s of job %s: %w", h.ID, jobID, err)
			}
		}
		switch {
		case b.rec.pos >= 0:
			a.errs[b.rec.pos] = fmt.Errorf("apply %s %s of job %s from agent %s: %w: %s",
				b.rec.name, h.ID, jobID, agentName(b.rec.agent), b.err, b.reason)
		case !wasPoison:
			a.log.Warn().Str("job_id", jobID).Str("event_id", h.ID).Str("agent", b.rec.agent).
				Str("reason", b.reason).Msg("applied event moved to poison records")
		}
	}
	for _, w := range was {
		if w.still { // poison still, or a tombstone's record: its only copy
			continue
		}
		if err := poison.Delete(w.key); err != nil {
			return fmt.Errorf("remove poison record of event %s of job %s: %w", w.p.EventID, jobID, err)
		}
		a.log.Info().Str("job_id", jobID).Str("event_id", w.p.EventID).Str("agent", w.p.Agent).
			Msg("poisoned event applied, its poison record removed")
	}
	return nil
}

// writeJob replaces the stored record of a job (raw; nil when there is
// none) by job (nil: the job has no applied events left), together with
// its index entry and chain links. It returns whether the record changed
// and, when it did, the old record decoded (nil if there was none).
func (a *applier) writeJob(jobID string, job *backup.Job, raw []byte) (old *backup.Job, changed bool, err error) {
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
		old = new(backup.Job)
		if err := json.Unmarshal(raw, old); err != nil {
			return nil, false, fmt.Errorf("decode job %s: %w", jobID, err)
		}
		old.ID = jobID // the key is the id: records before layout 4 name it "id", not "job_id"
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
// part(event id), the event's type code (eventCode), part(agent), then the
// stream sequence (Source.Seq), 8 bytes big-endian.
func eventKey(jobID, eventID string, code byte, agent string, seq uint64) []byte {
	k := make([]byte, 0, len(jobID)+len(eventID)+len(agent)+15)
	k = append(appendPart(appendPart(k, jobID), eventID), code)
	return binary.BigEndian.AppendUint64(appendPart(k, agent), seq)
}

// splitEventKey reads an eventKey back.
func splitEventKey(k []byte) (jobID, eventID string, code byte, agent string, seq uint64, ok bool) {
	jobID, rest, ok := cutPart(k)
	if ok {
		eventID, rest, ok = cutPart(rest)
	}
	if !ok || len(rest) < 1 {
		return "", "", 0, "", 0, false
	}
	code = rest[0]
	agent, rest, ok = cutPart(rest[1:])
	if !ok || len(rest) != 8 {
		return "", "", 0, "", 0, false
	}
	return jobID, eventID, code, agent, binary.BigEndian.Uint64(rest), true
}

// eventNames are the event types by the code that ends their key; code 0
// is a tombstone of unknown type (migrated from version 1). Codes are
// stored: a new type takes the next free one.
var eventNames = [...]string{
	1: schemas.NameStarted, 2: schemas.NameChangeID, 3: schemas.NameCompleted,
	4: schemas.NameFailed, 5: schemas.NameRejected,
	6: schemas.NamePruning, 7: schemas.NamePruned, 8: schemas.NameVerified,
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
	agent string // who published it (Source.Agent); "" for a legacy event
	seq   uint64 // stream sequence (Source.Seq); 0 when unknown
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

// decodeRecord decodes a stored event of type code from agent, filed at
// stream sequence seq; it copies what it keeps, so the record outlives the
// transaction.
func decodeRecord(id []byte, code byte, agent string, seq uint64, v []byte) (record, error) {
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
	return record{name: name, agent: agent, seq: seq, raw: raw, ev: ev, pos: -1}, nil
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
	case *schemas.Pruning:
		return schemas.NamePruning
	case *schemas.Pruned:
		return schemas.NamePruned
	case *schemas.Verified:
		return schemas.NameVerified
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
	case schemas.NamePruning:
		return new(schemas.Pruning)
	case schemas.NamePruned:
		return new(schemas.Pruned)
	case schemas.NameVerified:
		return new(schemas.Verified)
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
