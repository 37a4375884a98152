package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Link is one completed backup of one disk: a link in the chain of
// (VM UUID, disk key, repository). Only completed jobs have links; a failed
// or partial backup is never in a chain.
type Link struct {
	JobID           string    `json:"job_id"`
	VMUUID          string    `json:"vm_uuid"`
	Repository      string    `json:"repository"`
	DiskKey         int32     `json:"disk_key"`
	DiskUUID        string    `json:"disk_uuid"`
	CapacityBytes   int64     `json:"capacity_bytes"`
	ChangeID        string    `json:"change_id"`
	BackupType      string    `json:"backup_type"`
	Target          string    `json:"target"`
	Backing         string    `json:"backing,omitempty"` // job id of the base; empty for a full
	ActualSizeBytes int64     `json:"actual_size_bytes"`
	Time            time.Time `json:"time"` // time of the backup.completed event
}

// Chain is the ordered links of one disk in one repository.
type Chain struct {
	VMUUID     string `json:"vm_uuid"`
	Repository string `json:"repository"`
	DiskKey    int32  `json:"disk_key"`
	Links      []Link `json:"links"` // oldest first
}

// Chain returns the completed backups of (vmUUID, diskKey, repo), oldest
// first, ordered by the completed event's time and then job id, so the
// order does not depend on the order events were applied in. No backup
// gives an empty slice and no error.
func (c *Catalog) Chain(vmUUID string, diskKey int32, repo string) ([]Link, error) {
	links := []Link{}
	err := c.db.View(func(tx *bolt.Tx) error {
		return forEachLink(tx, chainPrefix(vmUUID, repo, diskKey), func(l Link) error {
			links = append(links, l)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("get chain of disk %d of vm %s in repository %s: %w", diskKey, vmUUID, repo, err)
	}
	return links, nil
}

// ChainHead returns the newest completed backup of (vmUUID, diskKey, repo):
// the base of the next incremental. It returns ErrNotFound when there is none.
func (c *Catalog) ChainHead(vmUUID string, diskKey int32, repo string) (Link, error) {
	var l Link
	err := c.db.View(func(tx *bolt.Tx) error {
		p := chainPrefix(vmUUID, repo, diskKey)
		cur := tx.Bucket(bucketLinks).Cursor()
		var k []byte
		if end := prefixEnd(p); end == nil {
			k, _ = cur.Last()
		} else if k, _ = cur.Seek(end); k == nil {
			k, _ = cur.Last()
		} else {
			k, _ = cur.Prev()
		}
		if k == nil || !bytes.HasPrefix(k, p) {
			return ErrNotFound
		}
		var err error
		l, err = readLink(tx.Bucket(bucketJobs), map[string][]Link{}, k)
		return err
	})
	if err != nil {
		return Link{}, fmt.Errorf("get chain head of disk %d of vm %s in repository %s: %w", diskKey, vmUUID, repo, err)
	}
	return l, nil
}

// Chains returns every disk's chain of a VM in repo, or in every repository
// when repo is empty, ordered by repository and disk key.
func (c *Catalog) Chains(vmUUID, repo string) ([]Chain, error) {
	chains := []Chain{}
	p := appendPart(nil, vmUUID)
	if repo != "" {
		p = appendPart(p, repo)
	}
	err := c.db.View(func(tx *bolt.Tx) error {
		return forEachLink(tx, p, func(l Link) error {
			if n := len(chains); n == 0 || chains[n-1].Repository != l.Repository || chains[n-1].DiskKey != l.DiskKey {
				chains = append(chains, Chain{VMUUID: vmUUID, Repository: l.Repository, DiskKey: l.DiskKey})
			}
			ch := &chains[len(chains)-1]
			ch.Links = append(ch.Links, l)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("get chains of vm %s in repository %q: %w", vmUUID, repo, err)
	}
	return chains, nil
}

// allLinks returns every link in key order (vm, repository, disk, time, job).
func allLinks(tx *bolt.Tx) ([]Link, error) {
	links := []Link{}
	err := forEachLink(tx, nil, func(l Link) error {
		links = append(links, l)
		return nil
	})
	return links, err
}

// forEachLink calls fn with every link whose key starts with prefix, in
// key order. The links bucket is an index: a key names a completed job and
// one of its disks, and the link is derived from the job's record
// (linksOf), read once per job.
func forEachLink(tx *bolt.Tx, prefix []byte, fn func(Link) error) error {
	cur := tx.Bucket(bucketLinks).Cursor()
	jobs := tx.Bucket(bucketJobs)
	byJob := map[string][]Link{}
	for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
		l, err := readLink(jobs, byJob, k)
		if err != nil {
			return err
		}
		if err := fn(l); err != nil {
			return err
		}
	}
	return nil
}

// readLink returns the link that index key k names, from the job record
// in jobs; byJob caches the links of the jobs read so far.
func readLink(jobs *bolt.Bucket, byJob map[string][]Link, k []byte) (Link, error) {
	vm, rest, ok := cutPart(k)
	var repo string
	if ok {
		repo, rest, ok = cutPart(rest)
	}
	if !ok || len(rest) <= 4+timeKeyLen {
		return Link{}, fmt.Errorf("link key %x is malformed", k)
	}
	disk := decodeDiskKey(rest[:4])
	jobID := string(rest[4+timeKeyLen:])
	links, ok := byJob[jobID]
	if !ok {
		raw := jobs.Get([]byte(jobID))
		if raw == nil {
			return Link{}, fmt.Errorf("link %x names job %s, which has no record", k, jobID)
		}
		var j Job
		if err := json.Unmarshal(raw, &j); err != nil {
			return Link{}, fmt.Errorf("decode job %s of link %x: %w", jobID, k, err)
		}
		links = linksOf(&j)
		byJob[jobID] = links
	}
	for _, l := range links {
		if l.DiskKey == disk && l.VMUUID == vm && l.Repository == repo {
			return l, nil
		}
	}
	return Link{}, fmt.Errorf("link %x names disk %d of job %s, which is not a completed disk of it", k, disk, jobID)
}

// chainPrefix is the key prefix of every link of one disk's chain.
func chainPrefix(vmUUID, repo string, diskKey int32) []byte {
	return appendDiskKey(appendPart(appendPart(make([]byte, 0, len(vmUUID)+len(repo)+8+timeKeyLen+64), vmUUID), repo), diskKey)
}

// linksOf returns the chain links a job record implies: one per disk of a
// completed job, none otherwise.
func linksOf(j *Job) []Link {
	if j == nil || j.Status != StatusCompleted {
		return nil
	}
	links := make([]Link, 0, len(j.Disks))
	for _, d := range j.Disks {
		links = append(links, Link{
			JobID:           j.ID,
			VMUUID:          j.VM.UUID,
			Repository:      j.Repository,
			DiskKey:         d.Disk.Key,
			DiskUUID:        d.Disk.UUID,
			CapacityBytes:   d.Disk.CapacityBytes,
			ChangeID:        d.ChangeID,
			BackupType:      d.BackupType,
			Target:          d.Target,
			Backing:         d.Backing,
			ActualSizeBytes: d.ActualSizeBytes,
			Time:            j.FinishedAt,
		})
	}
	return links
}

// linkKey is the key of a link in the links bucket: its chain's prefix,
// then the completed time and the job id, so a chain reads in time order.
func linkKey(l *Link) []byte {
	return append(appendTime(chainPrefix(l.VMUUID, l.Repository, l.DiskKey), l.Time), l.JobID...)
}

// putLink indexes a link; its content is the job record's (readLink).
func putLink(tx *bolt.Tx, l *Link) error {
	if err := tx.Bucket(bucketLinks).Put(linkKey(l), nil); err != nil {
		return fmt.Errorf("put link of job %s disk %d: %w", l.JobID, l.DiskKey, err)
	}
	return nil
}

func deleteLink(tx *bolt.Tx, l *Link) error {
	if err := tx.Bucket(bucketLinks).Delete(linkKey(l)); err != nil {
		return fmt.Errorf("delete link of job %s disk %d: %w", l.JobID, l.DiskKey, err)
	}
	return nil
}

// sameLinks reports whether two link lists are identical, so an unchanged
// completed job does not rewrite its links.
func sameLinks(a, b []Link) bool {
	return slices.EqualFunc(a, b, func(x, y Link) bool {
		tx, ty := x.Time, y.Time
		x.Time, y.Time = time.Time{}, time.Time{}
		return x == y && tx.Equal(ty)
	})
}
