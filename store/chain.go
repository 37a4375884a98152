package store

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/backup"
)

// Chain returns the completed backups of (vmUUID, diskKey, repo), oldest
// first, ordered by the completed event's time and then job id, so the
// order does not depend on the order events were applied in. No backup
// gives an empty slice and no error. A pruned job is in no chain, and each
// link's Backing is the link it backs onto now (resolveBackings).
func (c *Catalog) Chain(vmUUID string, diskKey int32, repo string) ([]backup.Link, error) {
	links := []backup.Link{}
	err := c.db.View(func(tx *bolt.Tx) error {
		err := forEachJobLinks(tx, repoPrefix(vmUUID, repo), false, func(ls []backup.Link) (bool, error) {
			if l, ok := diskLink(ls, diskKey); ok {
				links = append(links, l)
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		return resolveBackings(tx, links)
	})
	if err != nil {
		return nil, fmt.Errorf("get chain of disk %d of vm %s in repository %s: %w", diskKey, vmUUID, repo, err)
	}
	return links, nil
}

// ChainHead returns the newest completed backup of (vmUUID, diskKey, repo):
// the base of the next incremental. Its Backing is resolved as in Chain. It returns ErrNotFound when there is none.
func (c *Catalog) ChainHead(vmUUID string, diskKey int32, repo string) (backup.Link, error) {
	var head backup.Link
	err := c.db.View(func(tx *bolt.Tx) error {
		found := false
		err := forEachJobLinks(tx, repoPrefix(vmUUID, repo), true, func(ls []backup.Link) (bool, error) {
			head, found = diskLink(ls, diskKey)
			return !found, nil
		})
		if err == nil && !found {
			err = backup.ErrNotFound
		}
		if err != nil {
			return err
		}
		one := []backup.Link{head}
		if err := resolveBackings(tx, one); err != nil {
			return err
		}
		head = one[0]
		return nil
	})
	if err != nil {
		return backup.Link{}, fmt.Errorf("get chain head of disk %d of vm %s in repository %s: %w", diskKey, vmUUID, repo, err)
	}
	return head, nil
}

// Chains returns every disk's chain of a VM in repo, or in every repository
// when repo is empty, ordered by repository and disk key.
func (c *Catalog) Chains(vmUUID, repo string) ([]backup.Chain, error) {
	p := appendPart(nil, vmUUID)
	if repo != "" {
		p = appendPart(p, repo)
	}
	var links []backup.Link
	err := c.db.View(func(tx *bolt.Tx) error {
		var err error
		links, err = linksUnder(tx, p)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("get chains of vm %s in repository %q: %w", vmUUID, repo, err)
	}
	chains := []backup.Chain{}
	for _, l := range links {
		if n := len(chains); n == 0 || chains[n-1].Repository != l.Repository || chains[n-1].DiskKey != l.DiskKey {
			chains = append(chains, backup.Chain{VMUUID: vmUUID, Repository: l.Repository, DiskKey: l.DiskKey})
		}
		ch := &chains[len(chains)-1]
		ch.Links = append(ch.Links, l)
	}
	return chains, nil
}

// allLinks returns every link in (vm, repository, disk, time, job) order.
func allLinks(tx *bolt.Tx) ([]backup.Link, error) {
	links, err := linksUnder(tx, nil)
	if links == nil {
		links = []backup.Link{}
	}
	return links, err
}

// linksUnder returns the links of every job whose index key starts with
// prefix, in (vm, repository, disk, time, job) order.
func linksUnder(tx *bolt.Tx, prefix []byte) ([]backup.Link, error) {
	var links []backup.Link
	err := forEachJobLinks(tx, prefix, false, func(ls []backup.Link) (bool, error) {
		links = append(links, ls...)
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	// The index is in (vm, repository, time, job) order: a stable sort by
	// disk within each repository gives chain order.
	slices.SortStableFunc(links, func(a, b backup.Link) int {
		return cmp.Or(strings.Compare(a.VMUUID, b.VMUUID), strings.Compare(a.Repository, b.Repository),
			cmp.Compare(a.DiskKey, b.DiskKey))
	})
	for i := 0; i < len(links); {
		n := i + 1
		for n < len(links) && sameChain(links[i], links[n]) {
			n++
		}
		if err := resolveBackings(tx, links[i:n]); err != nil {
			return nil, err
		}
		i = n
	}
	return links, nil
}

func sameChain(a, b backup.Link) bool {
	return a.VMUUID == b.VMUUID && a.Repository == b.Repository && a.DiskKey == b.DiskKey
}

// resolveBackings sets each link's Backing, in one chain's links, to the
// job whose file its file backs onto now: the recorded base while that job
// is not pruned; once the hub pruned it, the pruned job's own base,
// resolved the same way ("" when that is none). That is what every prune
// operation does to the child of a removed point X: a merge (X has no
// base) makes the child a full, a rebase makes it back onto X's base. A
// full (no recorded base) stays a full. In a chain of one line (no full
// in the middle) this is the previous kept link.
func resolveBackings(tx *bolt.Tx, links []backup.Link) error {
	jobs := tx.Bucket(bucketJobs)
	for i := range links {
		b := links[i].Backing
		for hops := 0; b != "" && hops < maxResolveHops; hops++ {
			raw := jobs.Get([]byte(b))
			if raw == nil {
				break // not in the catalog: left as recorded, for repo check to see
			}
			var base struct {
				Status string        `json:"status"`
				Disks  []backup.Disk `json:"disks"`
			}
			if err := json.Unmarshal(raw, &base); err != nil {
				return fmt.Errorf("decode job %s, base of job %s: %w", b, links[i].JobID, err)
			}
			if base.Status != backup.StatusPruned {
				break
			}
			next := ""
			for _, d := range base.Disks {
				if d.Disk.Key == links[i].DiskKey {
					next = d.Backing
				}
			}
			b = next
		}
		links[i].Backing = b
	}
	return nil
}

// maxResolveHops bounds resolveBackings' walk through pruned bases (a
// cycle can only come from forged history).
const maxResolveHops = 1 << 16

// forEachJobLinks calls fn with the links of each completed job whose
// index key starts with prefix, oldest first (newest first with reverse),
// until fn returns false. The links bucket is an index: a key names a
// completed job, whose links are derived from its record (linksOf).
func forEachJobLinks(tx *bolt.Tx, prefix []byte, reverse bool, fn func([]backup.Link) (bool, error)) error {
	cur := tx.Bucket(bucketLinks).Cursor()
	jobs := tx.Bucket(bucketJobs)
	var k []byte
	switch end := prefixEnd(prefix); {
	case !reverse:
		k, _ = cur.Seek(prefix)
	case end == nil:
		k, _ = cur.Last()
	default:
		if k, _ = cur.Seek(end); k == nil {
			k, _ = cur.Last()
		} else {
			k, _ = cur.Prev()
		}
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k = step(cur, reverse) {
		links, err := readJobLinks(jobs, k)
		if err != nil {
			return err
		}
		more, err := fn(links)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

func step(cur *bolt.Cursor, reverse bool) []byte {
	if reverse {
		k, _ := cur.Prev()
		return k
	}
	k, _ := cur.Next()
	return k
}

// readJobLinks returns the links of the completed job that index key k
// names, from its record.
func readJobLinks(jobs *bolt.Bucket, k []byte) ([]backup.Link, error) {
	_, rest, ok := cutPart(k)
	if ok {
		_, rest, ok = cutPart(rest)
	}
	if !ok || len(rest) <= timeKeyLen {
		return nil, fmt.Errorf("link key %x is malformed", k)
	}
	jobID := rest[timeKeyLen:]
	raw := jobs.Get(jobID)
	if raw == nil {
		return nil, fmt.Errorf("link %x names job %s, which has no record", k, jobID)
	}
	var j backup.Job
	if err := json.Unmarshal(raw, &j); err != nil {
		return nil, fmt.Errorf("decode job %s of link %x: %w", jobID, k, err)
	}
	links := linksOf(&j)
	if len(links) == 0 {
		return nil, fmt.Errorf("link %x names job %s, which is not completed", k, jobID)
	}
	return links, nil
}

// diskLink returns the link of diskKey among one job's links.
func diskLink(links []backup.Link, diskKey int32) (backup.Link, bool) {
	for _, l := range links {
		if l.DiskKey == diskKey {
			return l, true
		}
	}
	return backup.Link{}, false
}

// repoPrefix is the index key prefix of a VM's completed jobs in one
// repository.
func repoPrefix(vmUUID, repo string) []byte {
	return appendPart(appendPart(make([]byte, 0, len(vmUUID)+len(repo)+8+timeKeyLen+64), vmUUID), repo)
}

// linksOf returns the chain links a job record implies: one per disk of a
// completed job, none otherwise.
func linksOf(j *backup.Job) []backup.Link {
	if j == nil || j.Status != backup.StatusCompleted {
		return nil
	}
	links := make([]backup.Link, 0, len(j.Disks))
	for _, d := range j.Disks {
		links = append(links, backup.Link{
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
			ManifestSHA256:  d.ManifestSHA256,
			Verified:        d.Verified,
		})
	}
	return links
}

// jobLinkKey is the index key of a completed job in the links bucket:
// VM, repository, completed time and job id, so a VM's backups in one
// repository read in chain order. nil for a job that is not completed.
// One key per job, not per disk: a batch touches one place per VM.
func jobLinkKey(j *backup.Job) []byte {
	if j == nil || j.Status != backup.StatusCompleted {
		return nil
	}
	return append(appendTime(repoPrefix(j.VM.UUID, j.Repository), j.FinishedAt), j.ID...)
}
