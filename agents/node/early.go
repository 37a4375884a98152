package node

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// earlyTargets are the disks' targets opened while vCenter makes the
// snapshot. What a target needs (the disk's capacity, the base and its
// manifest) comes from the VM's configuration and the catalog's chain
// heads, not from the snapshot, so the hub's qemu-img create and qemu-nbd
// start need not wait for it. plan still decides (invariant 3): run takes
// an early target only when the plan wants exactly that target, and every
// other one is aborted, on every path, once the opens have answered.
type earlyTargets struct {
	a  *Agent
	r  *request
	wg sync.WaitGroup
	mu sync.Mutex
	// runs are the targets opened and not taken, by disk key.
	runs map[int32]*diskRun
}

// openEarly starts opening a target for each disk of the VM's
// configuration, planned as plan would from heads (the chain heads looked
// up for those disks). A VM without changed block tracking gets none: its
// backup fails on the snapshot's change ids. An open that fails is left
// to run's own open of that disk, which falls back to a full when the
// base is unusable.
func (a *Agent) openEarly(ctx context.Context, r *request, heads map[int32]*backup.Link) *earlyTargets {
	e := &earlyTargets{a: a, r: r, runs: map[int32]*diskRun{}}
	if !r.vm.CBTEnabled {
		return e
	}
	for _, d := range r.vm.Disks {
		head := heads[d.Key]
		guess := d
		if guess.ChangeID == "" && head != nil {
			// The configuration's change id may be unset until the
			// first snapshot: guess the head's epoch still holds (the
			// snapshot's change id decides).
			guess.ChangeID = head.ChangeID
		}
		p := &diskPlan{disk: d}
		p.backupType, p.reason = Plan(r.req.BackupType, guess, head)
		if p.backupType == schemas.TypeIncremental {
			p.backing, p.baseManifest = head.JobID, head.ManifestSHA256
		}
		e.wg.Go(func() {
			ref, out, err := a.open(ctx, r, p)
			if err != nil {
				r.log.Debug().Err(err).Int32("disk_key", d.Key).Msg("early target open failed; opening after the plan")
				return
			}
			e.mu.Lock()
			e.runs[d.Key] = &diskRun{plan: p, target: out, ref: ref}
			e.mu.Unlock()
		})
	}
	return e
}

// take waits for the early opens and returns the target opened for p's
// disk when it is the one p wants (same capacity, base and base
// manifest), as p's run; nil when there is none. An early target p does
// not want is aborted first, so the disk's own open makes a new one.
func (e *earlyTargets) take(ctx context.Context, p *diskPlan) *diskRun {
	e.wg.Wait()
	e.mu.Lock()
	d := e.runs[p.disk.Key]
	delete(e.runs, p.disk.Key)
	e.mu.Unlock()
	if d == nil {
		return nil
	}
	if d.plan.disk.CapacityBytes != p.disk.CapacityBytes || d.plan.backing != p.backing || d.plan.baseManifest != p.baseManifest {
		e.r.log.Info().Int32("disk_key", p.disk.Key).Str("early_backing", d.plan.backing).Str("backing", p.backing).
			Msg("early target is not the planned one; aborting it")
		e.a.abortTargets(withJobTimes(ctx, nil), e.r, []*diskRun{d}) // inside the open phase, whose wall time counts
		return nil
	}
	d.plan = p
	return d
}

// abortRest waits for the early opens and aborts every target not taken.
func (e *earlyTargets) abortRest(ctx context.Context) {
	e.wg.Wait()
	e.mu.Lock()
	var rest []*diskRun
	for _, d := range e.runs {
		rest = append(rest, d)
	}
	clear(e.runs)
	e.mu.Unlock()
	if len(rest) > 0 {
		e.a.abortTargets(ctx, e.r, rest)
	}
}

// chainHeads looks up the catalog's chain head of each configured disk of the
// job's repository (nil: the chain is empty); none for a requested full.
func (a *Agent) chainHeads(ctx context.Context, r *request) (map[int32]*backup.Link, error) {
	heads := map[int32]*backup.Link{}
	if r.req.BackupType == schemas.TypeFull {
		return heads, nil
	}
	for _, d := range r.vm.Disks {
		h, err := a.chainHead(ctx, r, d.Key)
		if err != nil {
			return nil, err
		}
		heads[d.Key] = h
	}
	return heads, nil
}

// chainHead is the catalog's chain head of a disk in the job's
// repository, nil when the chain is empty.
func (a *Agent) chainHead(ctx context.Context, r *request, key int32) (*backup.Link, error) {
	h, err := a.deps.Catalog.ChainHead(ctx, r.vm.InstanceUUID, key, r.req.Repository)
	switch {
	case errors.Is(err, backup.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, fail(schemas.FailInternal, true, fmt.Errorf("chain head of disk %d of vm %s: %w", key, r.vm.InstanceUUID, err))
	}
	return &h, nil
}

// open asks the hub for p's target, as planned.
func (a *Agent) open(ctx context.Context, r *request, p *diskPlan) (repoapi.TargetRef, repoapi.OpenReply, error) {
	ref := repoapi.TargetRef{Repository: r.req.Repository, JobID: r.jobID, VMUUID: r.vm.InstanceUUID, DiskKey: p.disk.Key}
	out, err := a.deps.Targets.Open(ctx, repoapi.OpenRequest{
		TargetRef: ref, Attempt: r.attempt, CapacityBytes: p.disk.CapacityBytes,
		BackingJobID: p.backing, BaseManifestSHA256: p.baseManifest, Agent: a.cfg.AgentID,
	})
	return ref, out, err
}
