package node

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/vmware"
)

// diskPlan is the decision for one disk and the extents to copy.
type diskPlan struct {
	disk         vmware.Disk
	ref          schemas.DiskRef
	backupType   string
	reason       string
	baseChangeID string
	backing      string // job id of the base backup
	baseManifest string // manifest_sha256 of the base backup
	extents      []vmware.Extent
}

// Plan decides full or incremental for one disk. It is the one place that
// decides (design invariant 3), and runs while the VM's lease is held.
// head is the catalog's chain head for (VM, disk, repository), nil when the
// chain is empty. A head without a manifest (made before manifests), or
// whose latest verification failed, is never a base: reason
// base_unverified.
func Plan(requested string, disk vmware.Disk, head *backup.Link) (backupType, reason string) {
	switch {
	case requested == schemas.TypeFull:
		return schemas.TypeFull, schemas.ReasonRequestedFull
	case head == nil || head.DiskUUID != disk.UUID || head.ChangeID == "":
		return schemas.TypeFull, schemas.ReasonNoBase
	case head.CapacityBytes != disk.CapacityBytes:
		return schemas.TypeFull, schemas.ReasonDiskResized
	}
	base, err1 := vmware.ParseChangeID(head.ChangeID)
	cur, err2 := vmware.ParseChangeID(disk.ChangeID)
	if err1 != nil || err2 != nil || !vmware.SameEpoch(base, cur) {
		return schemas.TypeFull, schemas.ReasonCBTReset
	}
	if head.ManifestSHA256 == "" || head.Verified == schemas.VerifyFailed {
		// Made before manifests (an incremental on it could have no
		// manifest either, and nothing could ever verify it), or its
		// latest verification failed: never a base.
		return schemas.TypeFull, schemas.ReasonBaseUnverified
	}
	return schemas.TypeIncremental, schemas.ReasonBaseUsable
}

// plan decides every disk and asks VMware for its changed areas. An
// incremental whose base change id VMware rejects becomes a full. heads
// holds chain heads already looked up under the lease (chainHeads; nil
// for an empty chain); a disk not in it is looked up here.
func (a *Agent) plan(ctx context.Context, r *request, snap types.ManagedObjectReference, disks []vmware.Disk, heads map[int32]*backup.Link) ([]*diskPlan, error) {
	var plans []*diskPlan
	for _, d := range disks {
		if d.ChangeID == "" {
			return nil, fail(schemas.FailChangeIDMissing, false,
				fmt.Errorf("disk %d of vm %s has no change id at snapshot %s: enable changed block tracking", d.Key, r.vm.InstanceUUID, snap.Value))
		}
		if _, err := vmware.ParseChangeID(d.ChangeID); err != nil {
			return nil, fail(schemas.FailChangeIDMissing, false, fmt.Errorf("disk %d of vm %s: %w", d.Key, r.vm.InstanceUUID, err))
		}
		p := &diskPlan{disk: d, ref: schemas.DiskRef{Key: d.Key, UUID: d.UUID, CapacityBytes: d.CapacityBytes}}
		head, ok := heads[d.Key]
		if !ok && r.req.BackupType != schemas.TypeFull {
			h, err := a.chainHead(ctx, r, d.Key)
			if err != nil {
				return nil, err
			}
			head = h
		}
		p.backupType, p.reason = Plan(r.req.BackupType, d, head)
		if p.backupType == schemas.TypeIncremental {
			ext, err := a.deps.VCenter.ChangedAreas(ctx, r.vm, snap, d.Key, head.ChangeID, d.CapacityBytes)
			switch {
			case errors.Is(err, vmware.ErrChangeIDRejected):
				r.log.Warn().Int32("disk_key", d.Key).Str("base_change_id", head.ChangeID).Err(err).Msg("base change id rejected; taking a full")
				p.backupType, p.reason = schemas.TypeFull, schemas.ReasonChangeIDRejected
			case err != nil:
				return nil, fail(schemas.FailVCenter, true, fmt.Errorf("changed areas of disk %d of vm %s since %s: %w", d.Key, r.vm.InstanceUUID, head.ChangeID, err))
			default:
				p.extents, p.baseChangeID, p.backing, p.baseManifest = ext, head.ChangeID, head.JobID, head.ManifestSHA256
			}
		}
		if p.backupType == schemas.TypeFull {
			if err := a.planFull(ctx, r, snap, p, p.reason); err != nil {
				return nil, err
			}
		}
		r.log.Info().Int32("disk_key", d.Key).Str("backup_type", p.backupType).Str("reason", p.reason).
			Str("base_change_id", p.baseChangeID).Int("extents", len(p.extents)).Msg("disk planned")
		plans = append(plans, p)
	}
	return plans, nil
}

// planFull makes p a full backup for reason: no base, and every allocated
// area of the disk to copy.
func (a *Agent) planFull(ctx context.Context, r *request, snap types.ManagedObjectReference, p *diskPlan, reason string) error {
	d := p.disk
	ext, err := a.deps.VCenter.ChangedAreas(ctx, r.vm, snap, d.Key, vmware.FullChangeID, d.CapacityBytes)
	if err != nil {
		return fail(schemas.FailVCenter, true, fmt.Errorf("allocated areas of disk %d of vm %s: %w", d.Key, r.vm.InstanceUUID, err))
	}
	p.backupType, p.reason, p.baseChangeID, p.backing, p.baseManifest, p.extents = schemas.TypeFull, reason, "", "", "", ext
	return nil
}
