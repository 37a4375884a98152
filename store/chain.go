package store

import (
	"encoding/binary"
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
		b := chainBucket(tx, vmUUID, repo, diskKey)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var l Link
			if err := json.Unmarshal(v, &l); err != nil {
				return fmt.Errorf("decode link %x: %w", k, err)
			}
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
		b := chainBucket(tx, vmUUID, repo, diskKey)
		if b == nil {
			return ErrNotFound
		}
		_, v := b.Cursor().Last()
		if v == nil {
			return ErrNotFound
		}
		return json.Unmarshal(v, &l)
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
	err := c.db.View(func(tx *bolt.Tx) error {
		vb := tx.Bucket(bucketChains).Bucket([]byte(vmUUID))
		if vb == nil {
			return nil
		}
		return vb.ForEachBucket(func(rk []byte) error {
			if repo != "" && string(rk) != repo {
				return nil
			}
			rb := vb.Bucket(rk)
			return rb.ForEachBucket(func(dk []byte) error {
				ch := Chain{VMUUID: vmUUID, Repository: string(rk), DiskKey: decodeDiskKey(dk)}
				err := rb.Bucket(dk).ForEach(func(k, v []byte) error {
					var l Link
					if err := json.Unmarshal(v, &l); err != nil {
						return fmt.Errorf("decode link %x: %w", k, err)
					}
					ch.Links = append(ch.Links, l)
					return nil
				})
				if err != nil {
					return err
				}
				if len(ch.Links) > 0 {
					chains = append(chains, ch)
				}
				return nil
			})
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
	root := tx.Bucket(bucketChains)
	err := root.ForEachBucket(func(vk []byte) error {
		vb := root.Bucket(vk)
		return vb.ForEachBucket(func(rk []byte) error {
			rb := vb.Bucket(rk)
			return rb.ForEachBucket(func(dk []byte) error {
				return rb.Bucket(dk).ForEach(func(k, v []byte) error {
					var l Link
					if err := json.Unmarshal(v, &l); err != nil {
						return fmt.Errorf("decode link %x: %w", k, err)
					}
					links = append(links, l)
					return nil
				})
			})
		})
	})
	return links, err
}

func chainBucket(tx *bolt.Tx, vmUUID, repo string, diskKey int32) *bolt.Bucket {
	b := tx.Bucket(bucketChains).Bucket([]byte(vmUUID))
	if b == nil {
		return nil
	}
	if b = b.Bucket([]byte(repo)); b == nil {
		return nil
	}
	return b.Bucket(encodeDiskKey(diskKey))
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

func linkKey(l *Link) []byte {
	return append(timeKey(l.Time), l.JobID...)
}

func putLink(tx *bolt.Tx, l *Link) error {
	b := tx.Bucket(bucketChains)
	for _, name := range [][]byte{[]byte(l.VMUUID), []byte(l.Repository), encodeDiskKey(l.DiskKey)} {
		var err error
		if b, err = b.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("put link of job %s disk %d: bucket %q: %w", l.JobID, l.DiskKey, name, err)
		}
	}
	b.FillPercent = appendFill
	v, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("encode link of job %s disk %d: %w", l.JobID, l.DiskKey, err)
	}
	if err := b.Put(linkKey(l), v); err != nil {
		return fmt.Errorf("put link of job %s disk %d: %w", l.JobID, l.DiskKey, err)
	}
	return nil
}

// deleteLink removes a link and prunes the buckets it leaves empty.
func deleteLink(tx *bolt.Tx, l *Link) error {
	root := tx.Bucket(bucketChains)
	vb := root.Bucket([]byte(l.VMUUID))
	if vb == nil {
		return nil
	}
	rb := vb.Bucket([]byte(l.Repository))
	if rb == nil {
		return nil
	}
	dk := encodeDiskKey(l.DiskKey)
	db := rb.Bucket(dk)
	if db == nil {
		return nil
	}
	if err := db.Delete(linkKey(l)); err != nil {
		return fmt.Errorf("delete link of job %s disk %d: %w", l.JobID, l.DiskKey, err)
	}
	if k, _ := db.Cursor().First(); k != nil {
		return nil
	}
	if err := rb.DeleteBucket(dk); err != nil {
		return fmt.Errorf("prune chain of disk %d: %w", l.DiskKey, err)
	}
	if k, _ := rb.Cursor().First(); k != nil {
		return nil
	}
	if err := vb.DeleteBucket([]byte(l.Repository)); err != nil {
		return fmt.Errorf("prune chains of repository %s: %w", l.Repository, err)
	}
	if k, _ := vb.Cursor().First(); k != nil {
		return nil
	}
	if err := root.DeleteBucket([]byte(l.VMUUID)); err != nil {
		return fmt.Errorf("prune chains of vm %s: %w", l.VMUUID, err)
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

const timeKeyLen = 12

// timeKey encodes t so that byte order is time order: seconds since 1970
// with the sign bit flipped (8 bytes), then nanoseconds (4 bytes).
func timeKey(t time.Time) []byte {
	k := make([]byte, timeKeyLen, timeKeyLen+64)
	binary.BigEndian.PutUint64(k, uint64(t.Unix())^(1<<63))
	binary.BigEndian.PutUint32(k[8:], uint32(t.Nanosecond()))
	return k
}

func encodeDiskKey(k int32) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, uint32(k)^(1<<31))
	return b
}

func decodeDiskKey(b []byte) int32 {
	if len(b) != 4 {
		return 0
	}
	return int32(binary.BigEndian.Uint32(b) ^ (1 << 31))
}
