package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/vim25/types"
	"golang.org/x/sync/errgroup"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/copier"
	"github.com/sendense/sendense/nbd"
	"github.com/sendense/sendense/repository"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/vmware"
)

// diskRun is one disk's state through a job.
type diskRun struct {
	plan   *diskPlan
	target repoapi.OpenReply
	ref    repoapi.TargetRef
	copied copier.Result
	closed repoapi.CloseReply
}

// run performs one backup while the lease is held (ctx is the lease's
// context: losing the lease cancels the copy). It returns the completed
// event, not yet published, and the disks' runs (their targets closed);
// every exit path removes the snapshot and, on error, aborts the targets.
func (a *Agent) run(ctx context.Context, r *request) (_ *schemas.Completed, _ []*diskRun, err error) {
	// The chain heads of the configured disks first: with them the hub
	// opens the targets while vCenter snapshots (earlyTargets).
	heads, err := a.chainHeads(ctx, r)
	if err != nil {
		return nil, nil, err
	}
	early := a.openEarly(ctx, r, heads)
	defer early.abortRest(ctx)

	a.removeStaleSnapshots(ctx, r)

	snapName := vmware.SnapshotName(r.jobID)
	snap, err := a.deps.VCenter.CreateSnapshot(ctx, r.vm, snapName, a.cfg.Quiesce)
	if err != nil {
		return nil, nil, fail(schemas.FailSnapshot, true, fmt.Errorf("create snapshot %s of vm %s: %w", snapName, r.vm.InstanceUUID, err))
	}
	r.log.Info().Str("snapshot", snapName).Str("snapshot_ref", snap.Value).Msg("snapshot created")
	snapRemoved := false
	defer func() {
		if !snapRemoved {
			a.removeSnapshot(ctx, r, snap)
		}
	}()

	disks, err := a.deps.VCenter.SnapshotDisks(ctx, snap)
	if err != nil {
		return nil, nil, fail(schemas.FailVCenter, true, fmt.Errorf("disks of snapshot %s: %w", snapName, err))
	}
	if len(disks) == 0 {
		return nil, nil, fail(schemas.RejectImpossible, false, fmt.Errorf("vm %s has no disks to back up", r.vm.InstanceUUID))
	}
	plans, err := a.plan(ctx, r, snap, disks, heads)
	if err != nil {
		return nil, nil, err
	}

	runs := make([]*diskRun, len(plans))
	defer func() {
		if err != nil {
			a.abortTargets(ctx, r, runs)
		}
	}()
	// The disks' targets are opened at once: each is a qemu-img create
	// and a qemu-nbd start on the hub. One failing does not cancel the
	// others, so every target opened is in runs and aborted. A disk
	// whose early target is the planned one takes it; the hub time is
	// then only the wait for the early opens to answer.
	openStart := time.Now()
	og := new(errgroup.Group)
	for i, p := range plans {
		og.Go(func() error {
			if d := early.take(ctx, p); d != nil {
				runs[i] = d
				return nil
			}
			d, err := a.openTarget(ctx, r, snap, p)
			runs[i] = d
			return err
		})
	}
	err = og.Wait()
	timesOf(ctx).addHub(openStart)
	if err != nil {
		return nil, nil, err
	}

	started := &schemas.Started{
		Header:        a.header(r, schemas.NameStarted, 0, 0),
		Repository:    r.req.Repository,
		RequestedType: r.req.BackupType,
		RequestedBy:   r.req.RequestedBy,
		RequestSeq:    r.seq,
		RequestedAt:   &r.requestedAt,
		Snapshot:      snapName,
	}
	for _, d := range runs {
		started.Disks = append(started.Disks, schemas.DiskPlan{
			Disk: d.plan.ref, BackupType: d.plan.backupType, Reason: d.plan.reason,
			BaseChangeID: d.plan.baseChangeID, Backing: d.plan.backing, Target: d.target.Target,
		})
	}
	if err := a.publish(ctx, started); err != nil {
		if errors.Is(err, bus.ErrDuplicateMsgID) {
			// Another request under this job id (or another run of this
			// attempt) published its started event first: nothing of this
			// run goes under that attempt, not even its failure.
			return nil, nil, fmt.Errorf("attempt %d of job %s: %w: %w", r.attempt, r.jobID, errAttemptTaken, err)
		}
		return nil, nil, err
	}

	prog := newJobProgress(a, r, runs)
	go prog.run(ctx)
	defer prog.stop()

	copyStart := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(a.cfg.DiskParallel)
	for _, d := range runs {
		g.Go(func() error { return a.copyDisk(gctx, r, snap, d, prog) })
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	timesOf(ctx).setCopy(copyStart)

	// The copy is done: remove the snapshot (consolidating the guest's
	// writes made meanwhile) while the targets close; neither needs the
	// other, and both are done before the outcome is decided.
	snapRemoved = true
	var removing sync.WaitGroup
	var removed time.Duration
	removing.Go(func() {
		began := time.Now()
		a.removeSnapshot(ctx, r, snap)
		removed = time.Since(began)
	})
	// Closed at once too: each stops a qemu-nbd and writes a manifest.
	closeStart := time.Now()
	cg := new(errgroup.Group)
	for _, d := range runs {
		cg.Go(func() error {
			closed, err := a.deps.Targets.Close(ctx, d.ref)
			if err != nil {
				return fail(schemas.FailRepository, true, fmt.Errorf("close target of disk %d of vm %s: %w", d.plan.disk.Key, r.vm.InstanceUUID, err))
			}
			d.closed = closed
			return nil
		})
	}
	err = cg.Wait()
	removing.Wait()
	// The removal counts as vCenter's: the hub's is what the closes took
	// beyond it, so the parts of the job's time still add up.
	timesOf(ctx).addHubDur(max(0, time.Since(closeStart)-removed))
	if err != nil {
		return nil, nil, err
	}
	completed := &schemas.Completed{Header: a.header(r, schemas.NameCompleted, 0, 0), Repository: r.req.Repository}
	for _, d := range runs {
		closed := d.closed
		completed.Disks = append(completed.Disks, schemas.DiskResult{
			Disk: d.plan.ref, ChangeID: d.plan.disk.ChangeID, BackupType: d.plan.backupType, Reason: d.plan.reason,
			BaseChangeID: d.plan.baseChangeID, BytesRead: d.copied.BytesRead, BytesWritten: d.copied.BytesWritten,
			Target: closed.Target, Backing: d.plan.backing, ActualSizeBytes: closed.ActualSizeBytes,
			ManifestSHA256: closed.ManifestSHA256,
		})
	}
	// Completed means complete (invariant 2): refuse to report success
	// with any disk lacking its change id.
	for _, d := range completed.Disks {
		if d.ChangeID == "" {
			return nil, nil, fail(schemas.FailChangeIDMissing, false, fmt.Errorf("disk %d of vm %s has no change id", d.Disk.Key, r.vm.InstanceUUID))
		}
		// Every point this build makes has a manifest, or it could never
		// be verified nor be a base.
		if d.ManifestSHA256 == "" {
			return nil, nil, fail(schemas.FailRepository, true, fmt.Errorf("disk %d of vm %s: the repository wrote no manifest", d.Disk.Key, r.vm.InstanceUUID))
		}
	}
	return completed, runs, nil
}

// openTarget asks the repository for the disk's target. When the hub
// finds an incremental's base missing or broken (its file, or its backing
// chain) or without the manifest the catalog names, the disk becomes a
// full with that reason: a bad base must never
// fail a VM's backups forever.
func (a *Agent) openTarget(ctx context.Context, r *request, snap types.ManagedObjectReference, p *diskPlan) (*diskRun, error) {
	ref, out, err := a.open(ctx, r, p)
	if p.backupType == schemas.TypeIncremental && (errors.Is(err, repoapi.ErrBaseMissing) || errors.Is(err, repoapi.ErrBaseInvalid) || errors.Is(err, repoapi.ErrBaseUnverified)) {
		reason := schemas.ReasonBaseMissing
		switch {
		case errors.Is(err, repoapi.ErrBaseInvalid):
			reason = schemas.ReasonBaseInvalid
		case errors.Is(err, repoapi.ErrBaseUnverified):
			reason = schemas.ReasonBaseUnverified
		}
		r.log.Warn().Err(err).Int32("disk_key", p.disk.Key).Str("backing", p.backing).Str("reason", reason).
			Msg("base of the incremental unusable; taking a full")
		if err := a.planFull(ctx, r, snap, p, reason); err != nil {
			return nil, err
		}
		ref, out, err = a.open(ctx, r, p)
	}
	if err != nil {
		reason := schemas.FailRepository
		if errors.Is(err, repoapi.ErrRepositoryFull) {
			reason = schemas.FailRepositoryFull
		}
		return nil, fail(reason, true, fmt.Errorf("open target for disk %d of vm %s: %w", p.disk.Key, r.vm.InstanceUUID, err))
	}
	return &diskRun{plan: p, target: out, ref: ref}, nil
}

// copyDisk copies one disk's extents from its snapshot source to its target
// and publishes backup.changeid once the target is flushed.
func (a *Agent) copyDisk(ctx context.Context, r *request, snap types.ManagedObjectReference, d *diskRun, prog *jobProgress) error {
	key := d.plan.disk.Key
	log := r.log.With().Int32("disk_key", key).Str("disk_uuid", d.plan.disk.UUID).Logger()
	src, err := a.deps.Sources.Open(ctx, vmware.SourceRequest{VM: r.vm.Ref, Snapshot: snap, Disk: d.plan.disk})
	if err != nil {
		return fail(schemas.FailSourceNBD, true, fmt.Errorf("open source of disk %d of vm %s: %w", key, r.vm.InstanceUUID, err))
	}
	defer func() {
		cctx, cancel := a.cleanupCtx(ctx)
		defer cancel()
		if err := src.Close(cctx); err != nil {
			log.Warn().Err(err).Msg("close source")
		}
	}()
	extents := make([]copier.Extent, len(d.plan.extents))
	for i, e := range d.plan.extents {
		extents[i] = copier.Extent{Offset: e.Offset, Length: e.Length}
	}
	opts := a.cfg.Copy
	if d.target.TLS != nil {
		tls, remove, err := targetTLS(*d.target.TLS, a.cfg.RunDir)
		if err != nil {
			return fail(schemas.FailRepository, true, fmt.Errorf("target of disk %d of vm %s: %w", key, r.vm.InstanceUUID, err))
		}
		defer remove()
		opts.TargetTLS = tls
	}
	opts.Incremental = d.plan.backupType == schemas.TypeIncremental
	opts.Digests = true
	opts.Log = log
	opts.Progress = prog.counter(key)
	copyBegan := time.Now()
	res, err := copier.Copy(ctx, src.URI(), d.target.URI, extents, opts)
	copied := time.Since(copyBegan)
	if err != nil {
		reason := schemas.FailCopy
		switch {
		case errors.Is(err, context.Canceled) && ctx.Err() != nil:
			return err // shutdown or lease lost: classified by the caller
		case errors.Is(err, syscall.ENOSPC):
			reason = schemas.FailRepositoryFull // the target's file system is full
		}
		return fail(reason, true, fmt.Errorf("copy disk %d of vm %s: %w", key, r.vm.InstanceUUID, err))
	}
	d.copied = res
	// The digests of what was read go to the target before anything says
	// the disk is copied; its close writes the manifest.
	if err := a.deps.Targets.Digests(ctx, d.ref, res.Digests); err != nil {
		return fail(schemas.FailRepository, true, fmt.Errorf("send %d chunk digests of disk %d of vm %s: %w", len(res.Digests), key, r.vm.InstanceUUID, err))
	}
	prog.finished(key, res.BytesRead)

	ev := &schemas.ChangeID{
		Header:     a.header(r, schemas.NameChangeID, key, 0),
		Repository: r.req.Repository, Disk: d.plan.ref, ChangeID: d.plan.disk.ChangeID,
		BackupType: d.plan.backupType, BytesRead: res.BytesRead, BytesWritten: res.BytesWritten,
		Target: d.target.Target,
	}
	if err := a.publish(ctx, ev); err != nil {
		return err
	}
	log.Info().Str("change_id", d.plan.disk.ChangeID).Str("backup_type", d.plan.backupType).
		Int64("bytes_read", res.BytesRead).Int64("bytes_written", res.BytesWritten).Dur("copier_ms", copied).Msg("change id stored")
	return nil
}

// targetTLS writes the target's pre-shared key (from the hub's reply) to
// a private file for libnbd, which reads it whenever the copier connects,
// (in a private directory under runDir, default os.TempDir()) and returns
// the copier's TLS option and a func removing the file.
func targetTLS(psk repository.PSK, runDir string) (*nbd.TLS, func(), error) {
	dir, err := psk.WriteDir(runDir)
	if err != nil {
		return nil, nil, err
	}
	tls := &nbd.TLS{PSKFile: filepath.Join(dir, repository.PSKFileName), Username: psk.Identity}
	return tls, func() { os.RemoveAll(dir) }, nil
}

func (a *Agent) removeSnapshot(ctx context.Context, r *request, snap types.ManagedObjectReference) {
	cctx, cancel := a.cleanupCtx(ctx)
	defer cancel()
	if err := a.deps.VCenter.RemoveSnapshot(cctx, snap, true); err != nil {
		r.log.Error().Err(err).Str("snapshot_ref", snap.Value).Msg("remove snapshot; the next backup of this vm removes it")
		return
	}
	r.log.Info().Str("snapshot_ref", snap.Value).Msg("snapshot removed")
}

// removeStaleSnapshots removes sendense-* snapshots of jobs the catalog
// knows are finished, and of an earlier attempt of this job.
func (a *Agent) removeStaleSnapshots(ctx context.Context, r *request) {
	snaps, err := a.deps.VCenter.StaleSnapshots(ctx, r.vm, vmware.SnapshotPrefix)
	if err != nil {
		r.log.Warn().Err(err).Msg("list stale snapshots")
		return
	}
	for _, s := range snaps {
		remove := s.JobID == r.jobID
		if !remove {
			job, err := a.deps.Catalog.Job(ctx, s.JobID)
			// A queued job's snapshot may be one an agent just made,
			// before its backup.started: keep it, as a running job's.
			remove = err == nil && job.Status != backup.StatusRunning && job.Status != backup.StatusQueued
		}
		if !remove {
			r.log.Warn().Str("snapshot", s.Name).Msg("leaving snapshot of a job the catalog does not know as finished")
			continue
		}
		r.log.Info().Str("snapshot", s.Name).Msg("removing stale snapshot")
		if err := a.deps.VCenter.RemoveSnapshot(ctx, s.Ref, true); err != nil {
			r.log.Warn().Err(err).Str("snapshot", s.Name).Msg("remove stale snapshot")
		}
	}
}

func (a *Agent) abortTargets(ctx context.Context, r *request, runs []*diskRun) {
	cctx, cancel := a.cleanupCtx(ctx)
	defer cancel()
	for _, d := range runs {
		if d == nil {
			continue
		}
		if err := a.deps.Targets.Abort(cctx, d.ref); err != nil {
			r.log.Warn().Err(err).Int32("disk_key", d.ref.DiskKey).Msg("abort target")
		}
	}
}
