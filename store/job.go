package store

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/backup"
)

// Job returns the job with this id, or an error wrapping ErrNotFound.
func (c *Catalog) Job(id string) (backup.Job, error) {
	var j backup.Job
	err := c.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketJobs).Get([]byte(id))
		if raw == nil {
			return backup.ErrNotFound
		}
		return json.Unmarshal(raw, &j)
	})
	if err != nil {
		return backup.Job{}, fmt.Errorf("get job %s: %w", id, err)
	}
	return j, nil
}

// Jobs returns the jobs matching f, newest first (by CreatedAt, then job id
// descending).
func (c *Catalog) Jobs(f backup.JobFilter) ([]backup.Job, error) {
	if f.Status != "" && !slices.Contains(backup.Statuses, f.Status) {
		return nil, fmt.Errorf("list jobs with status %q: %w", f.Status, ErrInvalid)
	}
	jobs := []backup.Job{}
	skip := f.Offset
	err := c.db.View(func(tx *bolt.Tx) error {
		jb := tx.Bucket(bucketJobs)
		cur := tx.Bucket(bucketJobsByTime).Cursor()
		for k, _ := cur.Last(); k != nil; k, _ = cur.Prev() {
			if len(k) < timeKeyLen {
				return fmt.Errorf("index key %x too short", k)
			}
			id := k[timeKeyLen:]
			if !strings.HasPrefix(string(id), f.IDPrefix) {
				continue
			}
			raw := jb.Get(id)
			if raw == nil {
				return fmt.Errorf("index names job %s that has no record", id)
			}
			var j backup.Job
			if err := json.Unmarshal(raw, &j); err != nil {
				return fmt.Errorf("decode job %s: %w", id, err)
			}
			if !f.Match(&j) {
				continue
			}
			if skip > 0 {
				skip--
				continue
			}
			jobs = append(jobs, j)
			if f.Limit > 0 && len(jobs) >= f.Limit {
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	return jobs, nil
}
