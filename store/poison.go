package store

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/backup"
)

// poisonKey is the record's identity: re-recording the same poison is a no-op.
// Records of a job's filed events are keyed by poisonJobKey instead (see
// settlePoison).
func poisonKey(p *backup.PoisonRecord) []byte {
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
func (c *Catalog) RecordPoison(p backup.PoisonRecord) error {
	err := c.db.Update(func(tx *bolt.Tx) error {
		return putPoison(tx, p, c.now)
	})
	if err != nil {
		return fmt.Errorf("record poison from %s seq %d: %w", p.Subject, p.Seq, err)
	}
	return nil
}

func putPoison(tx *bolt.Tx, p backup.PoisonRecord, now func() time.Time) error {
	if len(p.Raw) > backup.MaxPoisonRaw {
		p.Raw = p.Raw[:backup.MaxPoisonRaw]
		p.Truncated = true
	}
	if p.Time.IsZero() {
		p.Time = now()
	}
	p.Time = p.Time.UTC()
	b := tx.Bucket(bucketPoison)
	k := poisonKey(&p)
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
func (c *Catalog) Poison() ([]backup.PoisonRecord, error) {
	type keyed struct {
		k string
		p backup.PoisonRecord
	}
	var recs []keyed
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPoison).ForEach(func(k, v []byte) error {
			var p backup.PoisonRecord
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
	out := make([]backup.PoisonRecord, len(recs))
	for i := range recs {
		out[i] = recs[i].p
	}
	return out, nil
}
