package hub

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/repository"
	"github.com/sendense/sendense/schemas"
)

// errReconcileOff: reconciliation needs the catalog, its progress and the
// leases, and one of them is not configured.
var errReconcileOff = errors.New("reconciliation off: the repository service has no catalog, catalog progress or leases configured")

// Why an orphan stayed (Orphan.Kept) other than a removal error.
const (
	keptBacking = "another file uses it as its backing file"
	keptInUse   = "in use: an open or a reconciliation of its target is running"
	keptChanged = "changed since it was found"
	keptGone    = "already gone"
)

// orphan is a file a round found to remove.
type orphan struct {
	repo *repository.Repo
	ref  repoapi.TargetRef
	file repository.File
	temp bool
}

func (o orphan) report() repoapi.Orphan {
	return repoapi.Orphan{
		Repository: o.ref.Repository, JobID: o.ref.JobID, VMUUID: o.ref.VMUUID, DiskKey: o.ref.DiskKey,
		Path: o.file.Path, Bytes: o.file.ActualSize, ModTime: o.file.ModTime, Temp: o.temp,
	}
}

// canReconcile reports whether the service knows enough to call a file an
// orphan.
func (s *RepoService) canReconcile() bool {
	return s.opts.Catalog != nil && s.opts.Progress != nil && s.opts.Leases != nil
}

// repoNames returns the names of the repositories, sorted.
func (s *RepoService) repoNames() []string {
	names := make([]string, 0, len(s.opts.Repositories))
	for n := range s.opts.Repositories {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Reconcile runs one reconciliation round over every repository (design
// invariant 7: nothing is left behind). A backup file is an orphan, and is
// removed, when all of these hold:
//
//   - it was last modified more than ReconcileGrace ago;
//   - it is not an open target of this service (nor being opened);
//   - its job does not hold its VM's lease (a job holding it may still
//     close the target and publish backup.completed);
//   - it is no disk of a completed job in the catalog (same VM, disk key,
//     job id and repository), asked only after the leases were read and
//     the catalog was found caught up with BACKUP_EVENTS, so a completed
//     event stored before the lease was let go is in the answer.
//
// Temporary files of crashed creates (".<job>.qcow2.*.tmp") older than the
// grace go too. A file another file uses as its backing file is never
// removed (repository.ErrIsBacking; an orphan backed by an orphan goes
// first, then its base). Each removal is logged and counted
// (sendense_repo_reconciled_files_total, ..._bytes_total).
//
// When the catalog is behind, or it, the leases or JetStream do not
// answer, the round removes nothing and returns the reason (logged at warn
// level); otherwise it returns every orphan found and what happened to it.
// It runs when Serve starts and every ReconcileInterval; tests call it
// directly. Rounds never overlap.
func (s *RepoService) Reconcile(ctx context.Context) ([]repoapi.Orphan, error) {
	orphans, err := s.reconcile(ctx, s.repoNames(), false)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("reconciliation skipped, nothing removed")
		}
		return nil, err
	}
	var files int
	var bytes int64
	for _, o := range orphans {
		if o.Removed {
			files++
			bytes += o.Bytes
		}
	}
	s.log.Info().Int("orphans", len(orphans)).Int("removed", files).Int64("bytes", bytes).Msg("reconciliation done")
	return orphans, nil
}

// reconcile finds the orphans of the named repositories and removes them
// unless dryRun; an error means nothing was removed.
func (s *RepoService) reconcile(ctx context.Context, names []string, dryRun bool) ([]repoapi.Orphan, error) {
	s.reconcileMu.Lock()
	defer s.reconcileMu.Unlock()
	found, err := s.findOrphans(ctx, names)
	if err != nil {
		s.metrics.round(RoundSkipped)
		return nil, err
	}
	out := s.removeOrphans(found, dryRun)
	s.metrics.round(RoundDone)
	return out, nil
}

// findOrphans returns the orphans of the named repositories (see
// Reconcile), sorted by repository, VM, disk and job.
func (s *RepoService) findOrphans(ctx context.Context, names []string) ([]orphan, error) {
	if !s.canReconcile() {
		return nil, errReconcileOff
	}
	cutoff := time.Now().Add(-s.opts.ReconcileGrace)
	var found []orphan
	for _, name := range names {
		r := s.opts.Repositories[name]
		disks, err := r.Disks()
		if err != nil {
			return nil, err
		}
		for _, d := range disks {
			files, err := r.List(d.VMUUID, d.Key)
			if err != nil {
				// A file whose header cannot be read: Remove would refuse
				// every file of the disk the same way. Keep them all.
				s.log.Warn().Err(err).Str("repository", name).Str("vm_uuid", d.VMUUID).Int32("disk_key", d.Key).
					Msg("reconciliation: cannot list disk, keeping its files")
				continue
			}
			if s.isPruning(d.VMUUID) {
				continue // its files change under a prune: next round
			}
			for _, f := range files {
				ref := repoapi.TargetRef{Repository: name, JobID: f.JobID, VMUUID: d.VMUUID, DiskKey: d.Key}
				if f.ModTime.Before(cutoff) && !s.inUse(ref) {
					found = append(found, orphan{repo: r, ref: ref, file: f})
				}
			}
			temps, err := r.Temps(d.VMUUID, d.Key)
			if err != nil {
				return nil, err
			}
			for _, f := range temps {
				if f.ModTime.Before(cutoff) {
					ref := repoapi.TargetRef{Repository: name, JobID: f.JobID, VMUUID: d.VMUUID, DiskKey: d.Key}
					found = append(found, orphan{repo: r, ref: ref, file: f, temp: true})
				}
			}
		}
	}
	if len(found) == 0 {
		return nil, nil
	}

	// 1. Leases. A job publishes backup.completed only while it holds its
	// VM's lease, so a job not holding it now either has stored its
	// completed event already or never will.
	holders := map[string]string{} // vm uuid -> job id holding the lease, "" for none
	for _, o := range found {
		if _, ok := holders[o.ref.VMUUID]; ok || o.temp {
			continue
		}
		h, held, err := s.opts.Leases.Holder(ctx, bus.VMLeaseKey(o.ref.VMUUID))
		if err != nil {
			return nil, fmt.Errorf("read lease of vm %s: %w", o.ref.VMUUID, err)
		}
		holders[o.ref.VMUUID] = ""
		if held {
			holders[o.ref.VMUUID] = h.JobID
		}
	}
	found = slices.DeleteFunc(found, func(o orphan) bool { return !o.temp && holders[o.ref.VMUUID] == o.ref.JobID })

	// 2. The catalog has applied everything stored, 3. and then says which
	// files are completed backups.
	if err := s.opts.Progress.CaughtUp(ctx); err != nil {
		return nil, fmt.Errorf("catalog not caught up: %w", err)
	}
	type vmRepo struct{ vm, repo string }
	type diskJob struct {
		key int32
		job string
	}
	completed := map[vmRepo]map[diskJob]bool{}
	for _, o := range found {
		k := vmRepo{o.ref.VMUUID, o.ref.Repository}
		if _, ok := completed[k]; ok || o.temp {
			continue
		}
		chains, err := s.opts.Catalog.Chains(ctx, k.vm, k.repo)
		if err != nil {
			return nil, fmt.Errorf("ask the catalog for the chains of vm %s in repository %s: %w", k.vm, k.repo, err)
		}
		set := map[diskJob]bool{}
		for _, c := range chains {
			for _, l := range c.Links {
				if repoName(l.Repository) == k.repo && l.VMUUID == k.vm {
					set[diskJob{l.DiskKey, l.JobID}] = true
				}
			}
		}
		completed[k] = set
	}
	found = slices.DeleteFunc(found, func(o orphan) bool {
		return !o.temp && completed[vmRepo{o.ref.VMUUID, o.ref.Repository}][diskJob{o.ref.DiskKey, o.ref.JobID}]
	})
	sort.SliceStable(found, func(i, j int) bool {
		if c := found[i].ref.Compare(found[j].ref); c != 0 {
			return c < 0
		}
		return !found[i].temp && found[j].temp
	})
	return found, nil
}

// repoName is the repository an event names, "" meaning the default.
func repoName(name string) string {
	if name == "" {
		return schemas.DefaultRepository
	}
	return name
}

// inUse reports whether ref is an open target or an open or removal of it
// is running.
func (s *RepoService) inUse(ref repoapi.TargetRef) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, open := s.targets[ref]
	_, busy := s.busy[ref]
	return open || busy
}

// removeOrphans removes found unless dryRun and reports each. An orphan
// that backs another orphan is retried once that one is gone.
func (s *RepoService) removeOrphans(found []orphan, dryRun bool) []repoapi.Orphan {
	out := make([]repoapi.Orphan, len(found))
	pending := make([]int, len(found))
	for i, o := range found {
		out[i] = o.report()
		pending[i] = i
	}
	if dryRun {
		return out
	}
	for len(pending) > 0 {
		var again []int
		progress := false
		for _, i := range pending {
			o := found[i]
			err := s.removeOrphan(o)
			switch {
			case err == nil:
				out[i].Removed, out[i].Kept = true, ""
				progress = true
				s.metrics.removed(o.ref.Repository, o.file.ActualSize)
				s.log.Info().Str("repository", o.ref.Repository).Str("job_id", o.ref.JobID).Str("vm_uuid", o.ref.VMUUID).
					Int32("disk_key", o.ref.DiskKey).Str("path", o.file.Path).Int64("bytes", o.file.ActualSize).
					Time("mod_time", o.file.ModTime).Bool("temp", o.temp).Msg("orphan removed")
			case errors.Is(err, repository.ErrIsBacking):
				out[i].Kept = keptBacking
				again = append(again, i)
			default:
				out[i].Kept = err.Error()
				if !errors.Is(err, errKept) {
					s.log.Warn().Err(err).Str("job_id", o.ref.JobID).Str("path", o.file.Path).Msg("reconciliation: remove orphan")
				}
			}
		}
		if !progress {
			break
		}
		pending = again
	}
	return out
}

// errKept marks the reasons an orphan stays that are no failure.
var errKept = errors.New("orphan kept")

type keptError string

func (e keptError) Error() string        { return string(e) }
func (e keptError) Is(target error) bool { return target == errKept }

// removeOrphan removes one orphan, if it is still the file that was found
// and nobody is opening its target: the ref stays reserved while the file
// is compared and removed, so no open can make a new file in between.
func (s *RepoService) removeOrphan(o orphan) error {
	if !o.temp {
		release, err := s.reserve(o.ref)
		if err != nil {
			return keptError(keptInUse)
		}
		defer release()
		s.mu.Lock()
		_, open := s.targets[o.ref]
		s.mu.Unlock()
		if open {
			return keptError(keptInUse)
		}
	}
	st, err := os.Lstat(o.file.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return keptError(keptGone)
	}
	if err != nil {
		return err
	}
	if !st.ModTime().Equal(o.file.ModTime) || st.Size() != o.file.Size {
		return keptError(keptChanged)
	}
	if o.temp {
		return o.repo.RemoveTemp(o.file.Path)
	}
	return o.repo.Remove(o.ref.VMUUID, o.ref.DiskKey, o.ref.JobID)
}

// check answers sendense.repo.check (see SubjectCheck).
func (s *RepoService) check(ctx context.Context, data []byte) (any, error) {
	var req repoapi.CheckRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	names := s.repoNames()
	if req.Repository != "" {
		if _, err := s.repo(req.Repository); err != nil {
			return nil, err
		}
		names = []string{req.Repository}
	}
	if s.opts.Catalog == nil {
		return nil, coded(repoapi.CodeUnavailable, errors.New("check: the repository service has no catalog configured"))
	}
	jobs, err := s.opts.Catalog.Jobs(ctx, backup.JobFilter{Status: backup.StatusCompleted})
	if err != nil {
		return nil, coded(repoapi.CodeUnavailable, fmt.Errorf("check: list completed jobs: %w", err))
	}
	reply := repoapi.CheckReply{Repositories: names, DryRun: req.DryRun, Problems: []repoapi.CheckProblem{}, Orphans: []repoapi.Orphan{}}
	// Each disk's base is the link it backs onto now (backup.Chain): after
	// a prune, not always the job its backup named.
	type vmRepo struct{ vm, repo string }
	type diskJob struct {
		key int32
		job string
	}
	bases := map[vmRepo]map[diskJob]string{}
	pending := map[vmRepo]bool{}
	for _, j := range jobs {
		if j.Prune != nil && j.Prune.State == backup.PrunePending {
			pending[vmRepo{j.VM.UUID, repoName(j.Repository)}] = true
		}
	}
	for _, j := range jobs {
		name := repoName(j.Repository)
		if j.Status != backup.StatusCompleted || !slices.Contains(names, name) {
			continue
		}
		k := vmRepo{j.VM.UUID, name}
		if pending[k] {
			reply.Disks += len(j.Disks)
			if j.Prune != nil && j.Prune.State == backup.PrunePending {
				for _, d := range j.Disks {
					p := repoapi.CheckProblem{TargetRef: repoapi.TargetRef{Repository: name, JobID: j.ID, VMUUID: j.VM.UUID, DiskKey: d.Disk.Key},
						Problem: repoapi.ProblemPrunePending, Detail: "a prune of this point is recorded and not done; the hub finishes it"}
					p.Path, _ = s.opts.Repositories[name].Path(j.VM.UUID, d.Disk.Key, j.ID)
					reply.Problems = append(reply.Problems, p)
				}
			}
			continue
		}
		if _, ok := bases[k]; !ok {
			chains, err := s.opts.Catalog.Chains(ctx, k.vm, k.repo)
			if err != nil {
				return nil, coded(repoapi.CodeUnavailable, fmt.Errorf("check: get the chains of vm %s: %w", k.vm, err))
			}
			m := map[diskJob]string{}
			for _, c := range chains {
				for _, l := range c.Links {
					m[diskJob{l.DiskKey, l.JobID}] = l.Backing
				}
			}
			bases[k] = m
		}
		r := s.opts.Repositories[name]
		for _, d := range j.Disks {
			reply.Disks++
			if b, ok := bases[k][diskJob{d.Disk.Key, j.ID}]; ok {
				d.Backing = b
			}
			if p := checkDisk(r, name, j, d); p != nil {
				reply.Problems = append(reply.Problems, *p)
			}
		}
	}
	sort.Slice(reply.Problems, func(i, k int) bool {
		return reply.Problems[i].TargetRef.Compare(reply.Problems[k].TargetRef) < 0
	})
	orphans, err := s.reconcile(ctx, names, req.DryRun)
	if err != nil {
		reply.OrphansSkipped = err.Error()
	} else if orphans != nil {
		reply.Orphans = orphans
	}
	log := s.log.Info()
	if len(reply.Problems) > 0 {
		log = s.log.Warn()
	}
	log.Strs("repositories", names).Bool("dry_run", req.DryRun).Int("disks", reply.Disks).Int("problems", len(reply.Problems)).
		Int("orphans", len(reply.Orphans)).Str("orphans_skipped", reply.OrphansSkipped).Msg("repository checked")
	return reply, nil
}

// checkDisk compares one completed disk with its file: it must exist and
// its backing file must be the file of the job d.Backing names (the link
// it backs onto now; none for a full). It returns nil when they agree.
func checkDisk(r *repository.Repo, repo string, j backup.Job, d backup.Disk) *repoapi.CheckProblem {
	p := &repoapi.CheckProblem{TargetRef: repoapi.TargetRef{Repository: repo, JobID: j.ID, VMUUID: j.VM.UUID, DiskKey: d.Disk.Key}}
	p.Path, _ = r.Path(j.VM.UUID, d.Disk.Key, j.ID)
	f, err := r.File(j.VM.UUID, d.Disk.Key, j.ID)
	switch {
	case errors.Is(err, repository.ErrInvalidID):
		p.Problem, p.Detail = repoapi.ProblemMissing, err.Error()
		return p
	case errors.Is(err, fs.ErrNotExist):
		p.Problem, p.Detail = repoapi.ProblemMissing, "no backup file"
		return p
	case err != nil:
		p.Problem, p.Detail = repoapi.ProblemUnreadable, err.Error()
		return p
	}
	want := ""
	if d.Backing != "" {
		want = d.Backing + ".qcow2"
	}
	if f.BackingFile == want {
		return nil
	}
	p.Problem = repoapi.ProblemBacking
	switch {
	case want == "":
		p.Detail = fmt.Sprintf("backing file %q, the catalog says a full (none)", f.BackingFile)
	case f.BackingFile == "":
		p.Detail = fmt.Sprintf("no backing file, the catalog says %q (job %s)", want, d.Backing)
	default:
		p.Detail = fmt.Sprintf("backing file %q, the catalog says %q (job %s)", f.BackingFile, want, d.Backing)
	}
	return p
}
