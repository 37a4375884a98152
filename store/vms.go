package store

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/backup"
)

// vmKey groups a job's VM: its instance UUID, else its name, else moref.
func vmKey(j *backup.Job) string {
	switch {
	case j.VM.UUID != "":
		return "u:" + strings.ToLower(j.VM.UUID)
	case j.VM.Name != "":
		return "n:" + j.VM.Name
	}
	return "m:" + j.VM.Moref
}

// VMs returns every VM with at least one job, by name (then UUID).
func (c *Catalog) VMs() ([]backup.VM, error) {
	byKey := map[string]*backup.VM{}
	err := c.db.View(func(tx *bolt.Tx) error {
		jb := tx.Bucket(bucketJobs)
		cur := tx.Bucket(bucketJobsByTime).Cursor()
		for k, _ := cur.Last(); k != nil; k, _ = cur.Prev() { // newest first
			if len(k) < timeKeyLen {
				return fmt.Errorf("index key %x too short", k)
			}
			id := k[timeKeyLen:]
			raw := jb.Get(id)
			if raw == nil {
				return fmt.Errorf("index names job %s that has no record", id)
			}
			var j backup.Job
			if err := json.Unmarshal(raw, &j); err != nil {
				return fmt.Errorf("decode job %s: %w", id, err)
			}
			v := byKey[vmKey(&j)]
			if v == nil {
				v = &backup.VM{UUID: j.VM.UUID, LastJobID: j.ID, LastStatus: j.Status, LastAt: j.CreatedAt}
				byKey[vmKey(&j)] = v
			}
			if v.Name == "" {
				v.Name = j.VM.Name
			}
			if v.Moref == "" {
				v.Moref = j.VM.Moref
			}
			v.Jobs++
			if j.Status == backup.StatusCompleted {
				v.Points++
				if v.LastCompletedAt.IsZero() {
					v.LastCompletedAt = j.FinishedAt
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	vms := make([]backup.VM, 0, len(byKey))
	for _, v := range byKey {
		vms = append(vms, *v)
	}
	sort.Slice(vms, func(i, k int) bool {
		if vms[i].Name != vms[k].Name {
			return vms[i].Name < vms[k].Name
		}
		return vms[i].UUID < vms[k].UUID
	})
	return vms, nil
}
