package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/backup"
)

// Buckets of layout version 1, which migrate moves into the flat ones.
var (
	bucketEventsV1 = []byte("events")
	bucketChainsV1 = []byte("chains")
)

// migrate upgrades a file of layout version from to schemaVersion, inside
// Open's transaction. The top-level buckets of schemaVersion exist already.
// Warnings (events that the consistency rules now refuse) go to log; new
// poison records are stamped with now.
func migrate(tx *bolt.Tx, from int, log zerolog.Logger, now func() time.Time) error {
	switch from {
	case schemaVersion:
		return nil
	case 1:
		if err := migrateEventsV1(tx); err != nil {
			return fmt.Errorf("migrate from schema version 1: %w", err)
		}
		if err := migrateChainsV1(tx); err != nil {
			return fmt.Errorf("migrate from schema version 1: %w", err)
		}
		if err := migrateAppliedV1(tx); err != nil {
			return fmt.Errorf("migrate from schema version 1: %w", err)
		}
		fallthrough
	case 2:
		if err := rekeyEventsV2(tx); err != nil {
			return fmt.Errorf("migrate from schema version %d: %w", from, err)
		}
		if err := rekeyPoisonV2(tx); err != nil {
			return fmt.Errorf("migrate from schema version %d: %w", from, err)
		}
		fallthrough
	case 3:
		// Version 3's consistency rules may refuse events that version 2
		// applied, and version 4 names a job record's id "job_id", as the
		// events do: re-deriving every job does both, writing each record
		// anew.
		if err := rederiveAll(tx, log, now); err != nil {
			return fmt.Errorf("migrate from schema version %d: %w", from, err)
		}
		return nil
	}
	return fmt.Errorf("migrate from schema version %d: %w", from, ErrSchemaVersion)
}

// rederiveAll re-derives every job that has stored events, which ends the
// migration from layout 2 to 3: the consistency rules of version 3
// (consistency.go) may refuse events that version 2 applied, such as a
// forged backup.completed that was a chain head. Such an event stays in
// job_events, gets a poison record and leaves its chain; the job record
// gets its PoisonedEventIDs. Tombstones stay tombstones.
func rederiveAll(tx *bolt.Tx, log zerolog.Logger, now func() time.Time) error {
	var ids []string
	cur := tx.Bucket(bucketEvents).Cursor()
	for k, _ := cur.First(); k != nil; k, _ = cur.Next() {
		id, _, ok := cutPart(k)
		if !ok {
			return fmt.Errorf("event key %x is malformed", k)
		}
		if n := len(ids); n == 0 || ids[n-1] != id {
			ids = append(ids, id)
		}
	}
	a := &applier{tx: tx, log: log, now: now}
	for _, id := range ids {
		if err := a.rederive(id, nil); err != nil {
			return err
		}
	}
	return nil
}

// migrateEventsV1 moves events/<job id>/<event id> -> <name> 0x00 <JSON>
// to job_events/part(<job id>)part(<event id>)<type code> -> <JSON>.
func migrateEventsV1(tx *bolt.Tx) error {
	old := tx.Bucket(bucketEventsV1)
	if old == nil {
		return nil
	}
	dst := tx.Bucket(bucketEvents)
	err := old.ForEachBucket(func(job []byte) error {
		return old.Bucket(job).ForEach(func(id, v []byte) error {
			name, js, ok := bytes.Cut(v, []byte{0})
			code := eventCode(string(name))
			if !ok || code == 0 {
				return fmt.Errorf("event %s of job %s has no known type name", id, job)
			}
			if err := dst.Put(eventKeyV2(string(job), string(id), code), js); err != nil {
				return fmt.Errorf("move event %s of job %s: %w", id, job, err)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	return tx.DeleteBucket(bucketEventsV1)
}

// migrateChainsV1 turns chains/<vm>/<repository>/<disk key>/<time><job id>
// (one key per disk, the Link JSON as value) into the index key
// links/part(<vm>)part(<repository>)<time><job id> (one per completed job;
// version 2 reads the links from the job record).
func migrateChainsV1(tx *bolt.Tx) error {
	root := tx.Bucket(bucketChainsV1)
	if root == nil {
		return nil
	}
	dst := tx.Bucket(bucketLinks)
	err := root.ForEachBucket(func(vm []byte) error {
		vb := root.Bucket(vm)
		return vb.ForEachBucket(func(repo []byte) error {
			rb := vb.Bucket(repo)
			prefix := repoPrefix(string(vm), string(repo))
			return rb.ForEachBucket(func(disk []byte) error {
				return rb.Bucket(disk).ForEach(func(k, _ []byte) error {
					if err := dst.Put(append(prefix[:len(prefix):len(prefix)], k...), nil); err != nil {
						return fmt.Errorf("move link %x of vm %s disk %d: %w", k, vm, decodeDiskKey(disk), err)
					}
					return nil
				})
			})
		})
	})
	if err != nil {
		return err
	}
	return tx.DeleteBucket(bucketChainsV1)
}

// migrateAppliedV1 moves the applied ids of events with a job id (version
// 1 kept every applied id in applied/<event id> -> <job id>) into the
// job's range of job_events: an id whose event is stored there needs
// nothing more, one whose event was moved to the poison records gets a
// tombstone (an empty value, type code 0). Ids recorded without a job id
// ("-") stay.
func migrateAppliedV1(tx *bolt.Tx) error {
	applied := tx.Bucket(bucketApplied)
	events := tx.Bucket(bucketEvents)
	var moved [][]byte
	err := applied.ForEach(func(id, job []byte) error {
		if string(job) == "-" {
			return nil
		}
		k := eventKeyV2(string(job), string(id), 0)
		if got, _ := events.Cursor().Seek(k[:len(k)-1]); !bytes.HasPrefix(got, k[:len(k)-1]) {
			if err := events.Put(k, nil); err != nil {
				return fmt.Errorf("record applied event %s of job %s: %w", id, job, err)
			}
		}
		moved = append(moved, id)
		return nil
	})
	if err != nil {
		return err
	}
	for _, id := range moved {
		if err := applied.Delete(id); err != nil {
			return fmt.Errorf("move applied event %s: %w", id, err)
		}
	}
	return nil
}

// eventKeyV2 is the key of an event in job_events of layout 2: part(job
// id), part(event id), type code; no agent, no sequence.
func eventKeyV2(jobID, eventID string, code byte) []byte {
	return append(appendPart(appendPart(nil, jobID), eventID), code)
}

// rekeyBatch is how many keys rekeyEventsV2 reads before it writes them.
const rekeyBatch = 1024

// rekeyEventsV2 moves every key of layout 2 in job_events to the key of
// layout 3 with the agent "" and the sequence 0 (unknown), keeping the
// value (a tombstone stays empty). A key of layout 2 is a prefix of its
// new key, so the new keys are skipped as the cursor passes them; it
// works in batches, so it holds no more than rekeyBatch values at once.
func rekeyEventsV2(tx *bolt.Tx) error {
	b := tx.Bucket(bucketEvents)
	var from []byte
	for {
		type kv struct{ k, v []byte }
		var batch []kv
		cur := b.Cursor()
		k, v := cur.First()
		if from != nil {
			k, v = cur.Seek(from)
		}
		for ; k != nil && len(batch) < rekeyBatch; k, v = cur.Next() {
			_, rest, ok := cutPart(k)
			if ok {
				_, rest, ok = cutPart(rest)
			}
			if !ok || len(rest) < 1 {
				return fmt.Errorf("event key %x is malformed", k)
			}
			if len(rest) > 1 {
				continue // moved already
			}
			batch = append(batch, kv{bytes.Clone(k), bytes.Clone(v)})
		}
		if len(batch) == 0 {
			return nil
		}
		for _, e := range batch {
			job, rest, _ := cutPart(e.k)
			id, rest, _ := cutPart(rest)
			if err := b.Delete(e.k); err != nil {
				return fmt.Errorf("move event %s of job %s: %w", id, job, err)
			}
			if err := b.Put(eventKey(job, id, rest[0], "", 0), e.v); err != nil {
				return fmt.Errorf("move event %s of job %s: %w", id, job, err)
			}
		}
		from = batch[len(batch)-1].k
	}
}

// rekeyPoisonV2 moves the poison records layouts 1 and 2 kept by event id
// (id/<event id>), after rekeyEventsV2: the record of a tombstone (an event
// Apply moved out of job_events) to poisonJobKey, where re-deriving its job
// finds and keeps it, the others to their key (poisonEventKey). Records by
// stream sequence or payload stay.
func rekeyPoisonV2(tx *bolt.Tx) error {
	b := tx.Bucket(bucketPoison)
	events := tx.Bucket(bucketEvents)
	tombstone := func(p backup.PoisonRecord) bool {
		if p.JobID == "" || p.EventID == "" || p.Seq != 0 {
			return false
		}
		prefix := appendPart(appendPart(nil, p.JobID), p.EventID)
		c := events.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if len(v) == 0 {
				return true
			}
		}
		return false
	}
	type kv struct{ k, v []byte }
	var moves []kv
	cur := b.Cursor()
	prefix := []byte("id/")
	for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
		moves = append(moves, kv{bytes.Clone(k), bytes.Clone(v)})
	}
	for _, m := range moves {
		var p backup.PoisonRecord
		if err := json.Unmarshal(m.v, &p); err != nil {
			return fmt.Errorf("decode poison record %q: %w", m.k, err)
		}
		k := poisonKey(&p)
		if tombstone(p) {
			k = poisonJobKey(p.JobID, p.EventID, p.Agent)
		}
		if err := b.Delete(m.k); err != nil {
			return fmt.Errorf("move poison record %q: %w", m.k, err)
		}
		if err := b.Put(k, m.v); err != nil {
			return fmt.Errorf("move poison record %q: %w", m.k, err)
		}
	}
	return nil
}
