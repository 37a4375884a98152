package store

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// MaxPoisonRaw is the most bytes of a payload a poison record keeps; the
// rest is cut and Truncated is set.
const MaxPoisonRaw = 1 << 20

// PoisonRecord is an event the catalog did not apply and keeps for
// inspection: one that failed schema validation upstream (RecordPoison), or
// one Apply refused (ErrIncomplete, ErrInconsistent, ErrInvalid). The
// records of a job's events follow the job's event set: one that a later
// event makes consistent (a completed that arrived before its started) is
// applied and its record removed.
type PoisonRecord struct {
	// Subject is the NATS subject, or the event name for records made by
	// Apply.
	Subject string `json:"subject"`
	// Seq is the stream sequence, when RecordPoison's caller knows it.
	// Records made by Apply leave it 0: they are kept by the event's
	// identity, and its sequence is in job_events.
	Seq     uint64 `json:"seq,omitempty"`
	EventID string `json:"event_id,omitempty"`
	JobID   string `json:"job_id,omitempty"`
	// Agent published the event (WithSource); empty for a legacy event.
	Agent  string `json:"agent,omitempty"`
	Reason string `json:"reason"`
	// Raw is the payload as received (RecordPoison), or the event's JSON
	// as Apply stored it: the payload given to WithSource, else the event
	// re-encoded. It is base64 in JSON output.
	Raw       []byte `json:"raw"`
	Truncated bool   `json:"truncated,omitempty"`
	// Time is when the record was first written (Options.Now). Dump
	// leaves it out: a replay writes the same records at another time.
	Time time.Time `json:"time,omitzero"`
}

// key is the record's identity: re-recording the same poison is a no-op.
// Records of a job's filed events are keyed by poisonJobKey instead (see
// settlePoison).
func (p *PoisonRecord) key() []byte {
	switch {
	case p.Seq > 0:
		return fmt.Appendf(nil, "seq/%s/%020d", p.Subject, p.Seq)
	case p.EventID != "" && len(p.EventID) <= maxIDLen:
		return poisonEventKey(p.JobID, p.EventID, p.Agent)
	default:
		h := sha256.New()
		h.Write([]byte(p.Subject))
		h.Write([]byte{0})
		h.Write(p.Raw)
		return []byte("raw/" + hex.EncodeToString(h.Sum(nil)))
	}
}

// poisonEventKey is the key of the poison record of an event that was not
// filed (Apply refused it before, or RecordPoison got it with an event id
// and no sequence): event/part(job id) part(event id) part(agent).
func poisonEventKey(jobID, eventID, agent string) []byte {
	return appendPart(appendPart(appendPart([]byte("event/"), jobID), eventID), agent)
}

// poisonJobPrefix starts the keys of the poison records of a job's filed
// events, which re-deriving the job writes and removes.
func poisonJobPrefix(jobID string) []byte {
	return appendPart([]byte("job/"), jobID)
}

// poisonJobKey is the key of the poison record of a job's filed event:
// job/part(job id) part(event id) part(agent).
func poisonJobKey(jobID, eventID, agent string) []byte {
	return appendPart(appendPart(poisonJobPrefix(jobID), eventID), agent)
}

// RecordPoison keeps p, typically an event that failed schema validation:
// the catalog consumer passes the subject, stream sequence, raw payload and
// reason. A record with the same identity (subject and sequence; else job
// id, event id and agent; else subject and payload) that is already kept
// is left as it is, so
// recording a redelivered message again is a no-op. A zero Time is set to
// Options.Now(). It commits and syncs before returning. Events that Apply
// refused are already kept by Apply; do not record them again.
func (c *Catalog) RecordPoison(p PoisonRecord) error {
	err := c.db.Update(func(tx *bolt.Tx) error {
		return putPoison(tx, p, c.now)
	})
	if err != nil {
		return fmt.Errorf("record poison from %s seq %d: %w", p.Subject, p.Seq, err)
	}
	return nil
}

func putPoison(tx *bolt.Tx, p PoisonRecord, now func() time.Time) error {
	if len(p.Raw) > MaxPoisonRaw {
		p.Raw = p.Raw[:MaxPoisonRaw]
		p.Truncated = true
	}
	if p.Time.IsZero() {
		p.Time = now()
	}
	p.Time = p.Time.UTC()
	b := tx.Bucket(bucketPoison)
	k := p.key()
	if len(k) > bolt.MaxKeySize {
		sum := sha256.Sum256(k)
		k = []byte("raw/" + hex.EncodeToString(sum[:]))
	}
	if b.Get(k) != nil {
		return nil
	}
	v, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode poison record: %w", err)
	}
	return b.Put(k, v)
}

// Poison returns every poison record, oldest first (by Time, then identity).
func (c *Catalog) Poison() ([]PoisonRecord, error) {
	type keyed struct {
		k string
		p PoisonRecord
	}
	var recs []keyed
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPoison).ForEach(func(k, v []byte) error {
			var p PoisonRecord
			if err := json.Unmarshal(v, &p); err != nil {
				return fmt.Errorf("decode poison record %q: %w", k, err)
			}
			recs = append(recs, keyed{string(k), p})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list poison records: %w", err)
	}
	sort.SliceStable(recs, func(i, j int) bool {
		if !recs[i].p.Time.Equal(recs[j].p.Time) {
			return recs[i].p.Time.Before(recs[j].p.Time)
		}
		return recs[i].k < recs[j].k
	})
	out := make([]PoisonRecord, len(recs))
	for i := range recs {
		out[i] = recs[i].p
	}
	return out, nil
}
