package hub

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/repository"
	"github.com/sendense/sendense/retention"
	"github.com/sendense/sendense/schemas"
)

// EventPublisher publishes the hub's events about completed jobs;
// bus.NewHubPublisher's *bus.Publisher implements it. Safe for concurrent
// use.
type EventPublisher interface {
	PublishEvent(ctx context.Context, ev schemas.Event) (*jetstream.PubAck, error)
}

// LeaseTaker takes a VM's lease, as agents do; *bus.Leases implements it.
type LeaseTaker interface {
	Acquire(ctx context.Context, key string, holder bus.Holder) (*bus.Lease, error)
}

// Prune steps the service calls RepoOptions.PruneHook with, besides the
// repository's (repository.PruneHook): after the intent is stored, and
// before the done event is published.
const (
	StepIntent = "intent-published"
	StepDone   = "before-done"
)

// pruneWait bounds the wait for the catalog to show a pruned point.
const pruneWait = 30 * time.Second

// forget answers sendense.repo.forget (see SubjectForget).
func (s *RepoService) forget(ctx context.Context, data []byte) (any, error) {
	var req repoapi.ForgetRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	return s.Forget(ctx, req)
}

// Forget plans (DryRun) or runs a retention policy over the completed
// points of one VM (req.VM, its name or instance UUID) or of every VM
// (req.All) in one repository: each point is kept or removed as
// retention.Apply decides, and every removed point is pruned under the
// VM's lease, oldest first, in the crash-safe order: backup.pruning (the
// intent, stored before any file is touched), the image operation of each
// disk (repository.Prune), backup.pruned. It answers CodeBadRequest for a
// bad request or policy, CodeNotFound for a VM with no completed point in
// the repository, CodeBusy while a backup holds the VM's lease or a
// restore of the VM is open, CodeUnavailable while the catalog is behind
// or the service cannot publish, and CodeRepositoryFull when the file
// system is full; nothing is lost then, and what was begun is finished by
// the next Forget or at the hub's next start.
func (s *RepoService) Forget(ctx context.Context, req repoapi.ForgetRequest) (repoapi.ForgetReply, error) {
	if req.Repository == "" {
		req.Repository = schemas.DefaultRepository
	}
	reply := repoapi.ForgetReply{Repository: req.Repository, DryRun: req.DryRun, VMs: []repoapi.ForgetVM{}}
	switch {
	case req.All && req.VM != "":
		return reply, coded(repoapi.CodeBadRequest, errors.New("forget: give a vm or all, not both"))
	case !req.All && req.VM == "":
		return reply, coded(repoapi.CodeBadRequest, errors.New("forget: give a vm (name or instance uuid) or all"))
	}
	if err := req.Policy.Validate(); err != nil {
		return reply, coded(repoapi.CodeBadRequest, fmt.Errorf("forget: %w", err))
	}
	r, err := s.repo(req.Repository)
	if err != nil {
		return reply, err
	}
	if err := s.canPrune(req.DryRun); err != nil {
		return reply, err
	}
	vms, err := s.completedByVM(ctx, req.VM, req.Repository)
	if err != nil {
		return reply, err
	}
	if len(vms) == 0 && !req.All {
		return reply, coded(repoapi.CodeNotFound, fmt.Errorf("forget: vm %q has no completed backup in repository %s", req.VM, req.Repository))
	}
	for _, uuid := range sortedKeys(vms) {
		fv, err := s.forgetVM(ctx, r, req, uuid)
		if err != nil {
			if !req.All {
				return reply, err
			}
			fv.Error = err.Error()
			if ce := (*codedError)(nil); errors.As(err, &ce) {
				fv.Code = ce.code
			}
		}
		reply.VMs = append(reply.VMs, fv)
	}
	return reply, nil
}

// canPrune says why the service cannot plan (dryRun) or prune now.
func (s *RepoService) canPrune(dryRun bool) error {
	switch {
	case s.opts.Catalog == nil || s.opts.Progress == nil:
		return coded(repoapi.CodeUnavailable, errors.New("forget: the repository service has no catalog configured"))
	case dryRun:
		return nil
	case s.opts.Publisher == nil || s.opts.LeaseTaker == nil:
		return coded(repoapi.CodeUnavailable, errors.New("forget: the repository service has no event publisher or leases configured"))
	}
	return nil
}

// completedByVM returns the completed jobs (pending prunes included) of
// the VM named vm ("" for every VM) in repo, by VM UUID, once the catalog
// has applied everything stored.
func (s *RepoService) completedByVM(ctx context.Context, vm, repo string) (map[string][]backup.Job, error) {
	if err := awaitCaughtUp(ctx, s.opts.Progress, catalogWait); err != nil {
		return nil, coded(repoapi.CodeUnavailable, fmt.Errorf("forget: catalog not caught up: %w", err))
	}
	jobs, err := s.opts.Catalog.Jobs(ctx, backup.JobFilter{Status: backup.StatusCompleted, VM: vm})
	if err != nil {
		return nil, coded(repoapi.CodeUnavailable, fmt.Errorf("forget: list completed jobs: %w", err))
	}
	out := map[string][]backup.Job{}
	for _, j := range jobs {
		if j.Status == backup.StatusCompleted && repoName(j.Repository) == repo && j.VM.UUID != "" {
			out[j.VM.UUID] = append(out[j.VM.UUID], j)
		}
	}
	return out, nil
}

// forgetVM plans and (unless DryRun) runs the policy for one VM.
func (s *RepoService) forgetVM(ctx context.Context, r *repository.Repo, req repoapi.ForgetRequest, vmUUID string) (repoapi.ForgetVM, error) {
	fv := repoapi.ForgetVM{VM: schemas.VMRef{UUID: vmUUID}, Points: []repoapi.ForgetPoint{}}
	log := s.log.With().Str("vm_uuid", vmUUID).Str("repository", req.Repository).Logger()
	var lease *bus.Lease
	if !req.DryRun {
		release, err := s.beginPrune(vmUUID)
		if err != nil {
			return fv, err
		}
		defer release()
		if lease, err = s.takeLease(ctx, vmUUID); err != nil {
			return fv, err
		}
		defer func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = lease.Release(rctx)
		}()
		ctx = lease.Context()
	}
	// Plan under the lease: no backup completes meanwhile.
	vms, err := s.completedByVM(ctx, vmUUID, req.Repository)
	if err != nil {
		return fv, err
	}
	jobs := vms[vmUUID]
	if len(jobs) == 0 {
		return fv, coded(repoapi.CodeNotFound, fmt.Errorf("forget: vm %s has no completed backup in repository %s", vmUUID, req.Repository))
	}
	fv.VM = jobs[0].VM
	points := make([]retention.Point, 0, len(jobs))
	byID := map[string]backup.Job{}
	var pending []string
	for _, j := range jobs {
		byID[j.ID] = j
		if j.Prune != nil && j.Prune.State == backup.PrunePending {
			pending = append(pending, j.ID)
			continue
		}
		points = append(points, retention.Point{ID: j.ID, Time: j.FinishedAt})
	}
	decisions, err := retention.Apply(points, req.Policy, time.Local)
	if err != nil {
		return fv, coded(repoapi.CodeBadRequest, fmt.Errorf("forget: %w", err))
	}
	remove := slices.Clone(pending)
	for _, id := range pending {
		j := byID[id]
		fv.Points = append(fv.Points, repoapi.ForgetPoint{JobID: id, Time: j.FinishedAt, Reasons: []string{"prune pending"}})
	}
	for _, d := range decisions {
		fv.Points = append(fv.Points, repoapi.ForgetPoint{JobID: d.Point.ID, Time: d.Point.Time, Keep: d.Keep, Reasons: d.Reasons})
		if !d.Keep {
			remove = append(remove, d.Point.ID)
		}
	}
	slices.SortStableFunc(fv.Points, func(a, b repoapi.ForgetPoint) int {
		return cmp.Or(b.Time.Compare(a.Time), strings.Compare(b.JobID, a.JobID))
	})
	if req.DryRun || len(remove) == 0 {
		return fv, nil
	}
	log.Info().Int("points", len(jobs)).Int("remove", len(remove)).Msg("pruning")
	removed, err := s.prunePoints(ctx, r, req.Repository, vmUUID, byID, remove, log)
	for i := range fv.Points {
		if slices.Contains(removed, fv.Points[i].JobID) {
			fv.Points[i].Removed = true
			fv.Removed++
		}
	}
	return fv, err
}

// beginPrune marks vmUUID as being pruned, or answers CodeBusy when a
// restore export of it is open or being opened, or another prune of it
// runs. release ends the mark.
func (s *RepoService) beginPrune(vmUUID string) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pruning[vmUUID] {
		return nil, coded(repoapi.CodeBusy, fmt.Errorf("vm %s is being pruned already", vmUUID))
	}
	if n := s.restoring[vmUUID]; n > 0 {
		return nil, coded(repoapi.CodeBusy, fmt.Errorf("vm %s has %d restore export(s) open or verification(s) running: let them end first", vmUUID, n))
	}
	s.pruning[vmUUID] = true
	return func() {
		s.mu.Lock()
		delete(s.pruning, vmUUID)
		s.mu.Unlock()
	}, nil
}

// beginRead waits until no prune of vmUUID runs in this service, then
// counts one reader of its chains, as an open restore export does, so no
// prune of it starts until release (a verification reads whole chains).
func (s *RepoService) beginRead(ctx context.Context, vmUUID string) (release func(), err error) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		s.mu.Lock()
		if !s.pruning[vmUUID] {
			s.restoring[vmUUID]++
			s.mu.Unlock()
			return func() { s.restoreDone(vmUUID) }, nil
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the prune of vm %s to end: %w", vmUUID, ctx.Err())
		case <-t.C:
		}
	}
}

// isPruning reports whether a prune of vmUUID runs in this service.
func (s *RepoService) isPruning(vmUUID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pruning[vmUUID]
}

// takeLease takes vmUUID's lease for a prune; a held lease answers
// CodeBusy naming its holder.
func (s *RepoService) takeLease(ctx context.Context, vmUUID string) (*bus.Lease, error) {
	holder := bus.Holder{Agent: bus.HubAgent, JobID: "prune-" + strings.ToLower(nuid.Next()), Attempt: 1}
	lease, err := s.opts.LeaseTaker.Acquire(ctx, bus.VMLeaseKey(vmUUID), holder)
	var held *bus.HeldError
	switch {
	case errors.As(err, &held):
		return nil, coded(repoapi.CodeBusy, fmt.Errorf("vm %s is busy: its lease is held by %s (a backup runs); try again later", vmUUID, held.Holder))
	case err != nil:
		return nil, coded(repoapi.CodeUnavailable, fmt.Errorf("take the lease of vm %s: %w", vmUUID, err))
	}
	return lease, nil
}

// link is one disk's point in a chain being pruned, with the job it backs
// onto now.
type link struct {
	job, backing string
}

// prunePoints removes the points remove of one VM, oldest first, and
// returns those the catalog shows pruned. byID holds the VM's completed
// jobs. The caller holds the VM's lease (ctx ends when it is lost).
func (s *RepoService) prunePoints(ctx context.Context, r *repository.Repo, repo, vmUUID string, byID map[string]backup.Job, remove []string, log zerolog.Logger) ([]string, error) {
	chains, err := s.opts.Catalog.Chains(ctx, vmUUID, repo)
	if err != nil {
		return nil, coded(repoapi.CodeUnavailable, fmt.Errorf("get the chains of vm %s: %w", vmUUID, err))
	}
	disks := map[int32][]link{}
	for _, c := range chains {
		if repoName(c.Repository) != repo {
			continue
		}
		for _, l := range c.Links {
			disks[c.DiskKey] = append(disks[c.DiskKey], link{job: l.JobID, backing: l.Backing})
		}
	}
	slices.SortFunc(remove, func(a, b string) int {
		return cmp.Or(byID[a].FinishedAt.Compare(byID[b].FinishedAt), strings.Compare(a, b))
	})
	var done []string
	var errs []error
	for _, id := range remove {
		j := byID[id]
		steps := plan(j, disks)
		if err := s.prunePoint(ctx, r, j, steps, log.With().Str("job_id", id).Logger()); err != nil {
			errs = append(errs, err)
			break // later points may depend on this one's files
		}
		for _, st := range steps {
			disks[st.Disk.Disk.Key] = unlink(disks[st.Disk.Disk.Key], id)
		}
		done = append(done, id)
	}
	// An outcome is shown once the catalog has it (design invariant 11).
	var shown []string
	for _, id := range done {
		if err := s.waitPruned(ctx, id); err != nil {
			errs = append(errs, err)
			continue
		}
		shown = append(shown, id)
	}
	return shown, errors.Join(errs...)
}

// pruneStep is one disk's operation for a point.
type pruneStep struct {
	Disk backup.Disk
	Op   schemas.PruneDisk
}

// plan returns the operation of each disk of job j given the VM's chains
// now: with a child backing onto it, a merge when j has no base (the
// chain's first full) and a rebase onto its base otherwise; with none, a
// delete. A pending prune keeps the operations its intent recorded.
func plan(j backup.Job, disks map[int32][]link) []pruneStep {
	var steps []pruneStep
	for _, d := range j.Disks {
		op := schemas.PruneDisk{Disk: d.Disk, Target: d.Target, Operation: schemas.PruneDelete}
		if j.Prune != nil {
			for _, pd := range j.Prune.Disks {
				if pd.Disk.Key == d.Disk.Key {
					op = pd
				}
			}
			steps = append(steps, pruneStep{Disk: d, Op: op})
			continue
		}
		chain := disks[d.Disk.Key]
		i := slices.IndexFunc(chain, func(l link) bool { return l.job == j.ID })
		if i >= 0 && i+1 < len(chain) && chain[i+1].backing == j.ID {
			op.Child = chain[i+1].job
			op.Operation = schemas.PruneMerge
			if chain[i].backing != "" {
				op.Operation, op.Parent = schemas.PruneRebase, chain[i].backing
			}
		}
		steps = append(steps, pruneStep{Disk: d, Op: op})
	}
	return steps
}

// unlink removes job from a chain; its child then backs onto its base.
func unlink(chain []link, job string) []link {
	i := slices.IndexFunc(chain, func(l link) bool { return l.job == job })
	if i < 0 {
		return chain
	}
	if i+1 < len(chain) && chain[i+1].backing == job {
		chain[i+1].backing = chain[i].backing
	}
	return slices.Delete(chain, i, i+1)
}

// prunePoint removes one point: intent, image operations, done.
func (s *RepoService) prunePoint(ctx context.Context, r *repository.Repo, j backup.Job, steps []pruneStep, log zerolog.Logger) error {
	disks := make([]schemas.PruneDisk, 0, len(steps))
	for _, st := range steps {
		disks = append(disks, st.Op)
	}
	hook := s.opts.PruneHook
	if j.Prune == nil {
		intent := &schemas.Pruning{Header: pruneHeader(j, schemas.NamePruning), Repository: repoName(j.Repository), Disks: disks}
		if _, err := s.opts.Publisher.PublishEvent(ctx, intent); err != nil {
			return coded(repoapi.CodeUnavailable, fmt.Errorf("publish the intent to prune job %s (no file touched): %w", j.ID, err))
		}
		log.Info().Msg("prune intent stored")
		if err := callHook(hook, StepIntent); err != nil {
			return err
		}
	} else {
		log.Info().Msg("resuming prune")
	}
	pctx := ctx
	if hook != nil {
		pctx = repository.WithPruneHook(ctx, hook)
	}
	for _, st := range steps {
		step := repository.PruneStep{
			VMUUID: j.VM.UUID, DiskKey: st.Disk.Disk.Key, JobID: j.ID,
			Op: st.Op.Operation, Child: st.Op.Child, Parent: st.Op.Parent,
		}
		if err := r.Prune(pctx, step); err != nil {
			return classify(fmt.Errorf("prune job %s (its intent is stored; the next forget or hub start finishes it): %w", j.ID, err))
		}
		log.Info().Int32("disk_key", step.DiskKey).Str("op", step.Op).Str("child", step.Child).Str("parent", step.Parent).Msg("disk pruned")
	}
	if err := callHook(hook, StepDone); err != nil {
		return err
	}
	done := &schemas.Pruned{Header: pruneHeader(j, schemas.NamePruned), Repository: repoName(j.Repository), Disks: disks}
	if _, err := s.opts.Publisher.PublishEvent(ctx, done); err != nil {
		return coded(repoapi.CodeUnavailable, fmt.Errorf("publish that job %s is pruned (its files are; the next forget or hub start publishes it): %w", j.ID, err))
	}
	log.Info().Msg("point pruned")
	return nil
}

func callHook(hook repository.PruneHook, step string) error {
	if hook == nil {
		return nil
	}
	return hook(step)
}

// pruneHeader is the header of a hub event about completed job j.
func pruneHeader(j backup.Job, name string) schemas.Header {
	h := schemas.Header{
		ID: bus.EventID(j.ID, j.Attempt, name, 0, 0), Time: time.Now().UTC(),
		JobID: j.ID, Attempt: j.Attempt, VM: j.VM,
	}
	schemas.Stamp(&h, name)
	return h
}

// waitPruned waits (bounded) until the catalog shows job id pruned.
func (s *RepoService) waitPruned(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, pruneWait)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		j, err := s.opts.Catalog.Job(ctx, id)
		if err == nil && j.Status == backup.StatusPruned {
			return nil
		}
		select {
		case <-ctx.Done():
			return coded(repoapi.CodeUnavailable, fmt.Errorf("job %s is pruned, but the catalog does not show it yet: %w", id, ctx.Err()))
		case <-t.C:
		}
	}
}

// resumeLoop finishes, at start and then every PruneRetry until none is
// left, every prune whose intent the catalog holds without its done event
// (a hub that stopped mid-prune): it is always possible from the files'
// state (repository.Prune).
func (s *RepoService) resumeLoop(ctx context.Context) {
	for {
		left, err := s.ResumePrunes(ctx)
		if err == nil && left == 0 {
			return
		}
		if err != nil && ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("resuming prunes, will try again")
		}
		t := time.NewTimer(s.opts.PruneRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// ResumePrunes finishes every pending prune (see resumeLoop) and returns
// how many are left (their VM busy, or an error).
func (s *RepoService) ResumePrunes(ctx context.Context) (left int, err error) {
	if err := s.canPrune(false); err != nil {
		return 0, err
	}
	if err := s.opts.Progress.CaughtUp(ctx); err != nil {
		return 0, fmt.Errorf("catalog not caught up: %w", err)
	}
	jobs, err := s.opts.Catalog.Jobs(ctx, backup.JobFilter{Status: backup.StatusCompleted})
	if err != nil {
		return 0, fmt.Errorf("list completed jobs: %w", err)
	}
	type vmRepo struct{ vm, repo string }
	pending := map[vmRepo][]string{}
	for _, j := range jobs {
		if j.Prune != nil && j.Prune.State == backup.PrunePending {
			k := vmRepo{j.VM.UUID, repoName(j.Repository)}
			pending[k] = append(pending[k], j.ID)
		}
	}
	var errs []error
	for k, ids := range pending {
		r, err := s.repo(k.repo)
		if err != nil {
			errs = append(errs, err)
			left += len(ids)
			continue
		}
		log := s.log.With().Str("vm_uuid", k.vm).Str("repository", k.repo).Logger()
		log.Info().Strs("job_ids", ids).Msg("resuming pending prunes")
		n, err := s.resumeVM(ctx, r, k.repo, k.vm, ids, log)
		left += len(ids) - n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return left, errors.Join(errs...)
}

// resumeVM finishes the pending prunes ids of one VM under its lease.
func (s *RepoService) resumeVM(ctx context.Context, r *repository.Repo, repo, vmUUID string, ids []string, log zerolog.Logger) (int, error) {
	release, err := s.beginPrune(vmUUID)
	if err != nil {
		return 0, err
	}
	defer release()
	lease, err := s.takeLease(ctx, vmUUID)
	if err != nil {
		return 0, err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = lease.Release(rctx)
	}()
	ctx = lease.Context()
	byID := map[string]backup.Job{}
	for _, id := range ids {
		j, err := s.opts.Catalog.Job(ctx, id)
		if err != nil {
			return 0, fmt.Errorf("get job %s: %w", id, err)
		}
		byID[id] = j
	}
	done, err := s.prunePoints(ctx, r, repo, vmUUID, byID, ids, log)
	return len(done), err
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
