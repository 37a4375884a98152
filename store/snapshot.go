package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/backup"
)

// Snapshot is the catalog's whole content in a canonical form: what a
// replay of the same events (in any order, in any batches, into an empty
// catalog or one holding part of them) reproduces exactly. Compare two with
// Equal.
type Snapshot struct {
	SchemaVersion int `json:"schema_version"`
	// Jobs by id.
	Jobs []backup.Job `json:"jobs"`
	// Links by VM UUID, repository, disk key, then chain order.
	Links []backup.Link `json:"links"`
	// Poison records by identity, with Time cleared (the recording time
	// is the only thing a replay does not reproduce).
	Poison []backup.PoisonRecord `json:"poison"`
	// Applied event ids, sorted.
	Applied []string `json:"applied"`
}

// Equal reports whether two snapshots have the same content.
func (s Snapshot) Equal(o Snapshot) bool {
	a, errA := json.Marshal(s)
	b, errB := json.Marshal(o)
	return errA == nil && errB == nil && bytes.Equal(a, b)
}

// Dump returns the catalog's content in one read transaction. It reads
// everything; it is meant for tests, `catalog rebuild` and diagnostics, not
// for hot paths.
func (c *Catalog) Dump() (Snapshot, error) {
	s := Snapshot{Jobs: []backup.Job{}, Poison: []backup.PoisonRecord{}, Applied: []string{}}
	err := c.db.View(func(tx *bolt.Tx) error {
		v, err := strconv.Atoi(string(tx.Bucket(bucketMeta).Get(keySchemaVersion)))
		if err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		s.SchemaVersion = v
		err = tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
			var j backup.Job
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("decode job %s: %w", k, err)
			}
			s.Jobs = append(s.Jobs, j)
			return nil
		})
		if err != nil {
			return err
		}
		if s.Links, err = allLinks(tx); err != nil {
			return err
		}
		err = tx.Bucket(bucketPoison).ForEach(func(k, v []byte) error {
			var p backup.PoisonRecord
			if err := json.Unmarshal(v, &p); err != nil {
				return fmt.Errorf("decode poison record %q: %w", k, err)
			}
			p.Time = time.Time{}
			s.Poison = append(s.Poison, p)
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketApplied).ForEach(func(k, _ []byte) error {
			s.Applied = append(s.Applied, string(k))
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketEvents).ForEach(func(k, _ []byte) error {
			_, id, _, _, _, ok := splitEventKey(k)
			if !ok {
				return fmt.Errorf("event key %x is malformed", k)
			}
			s.Applied = append(s.Applied, id)
			return nil
		})
		slices.Sort(s.Applied)
		return err
	})
	if err != nil {
		return Snapshot{}, fmt.Errorf("dump catalog %s: %w", c.db.Path(), err)
	}
	return s, nil
}

// Stats counts jobs (by status), chain links, applied event ids and poison
// records. It reads every job record, so it costs O(jobs).
func (c *Catalog) Stats() (backup.Stats, error) {
	st := backup.Stats{ByStatus: map[string]int{}}
	err := c.db.View(func(tx *bolt.Tx) error {
		st.SchemaVersion, _ = strconv.Atoi(string(tx.Bucket(bucketMeta).Get(keySchemaVersion)))
		st.FileBytes = tx.Size()
		err := tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
			var j struct {
				Status string     `json:"status"`
				Disks  []struct{} `json:"disks"`
			}
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("decode job %s: %w", k, err)
			}
			st.Jobs++
			st.ByStatus[j.Status]++
			if j.Status == backup.StatusCompleted {
				st.Links += len(j.Disks) // a completed job's disks are its links (linksOf)
			}
			return nil
		})
		if err != nil {
			return err
		}
		st.Applied = tx.Bucket(bucketApplied).Stats().KeyN + tx.Bucket(bucketEvents).Stats().KeyN
		st.Poison = tx.Bucket(bucketPoison).Stats().KeyN
		return nil
	})
	if err != nil {
		return backup.Stats{}, fmt.Errorf("stats of catalog %s: %w", c.db.Path(), err)
	}
	return st, nil
}
