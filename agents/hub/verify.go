package hub

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/copier"
	"github.com/sendense/sendense/manifest"
	"github.com/sendense/sendense/repository"
	"github.com/sendense/sendense/schemas"
)

// verify answers SubjectVerify.
func (s *RepoService) verify(ctx context.Context, data []byte) (any, error) {
	var req repoapi.VerifyRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	return s.Verify(ctx, req)
}

// Verify verifies the completed backups req selects (VerifyDisk for each
// disk, oldest job first) and publishes backup.verified per job. Errors
// carry the service's codes: CodeBadRequest (not exactly one selector, a
// job that did not complete), CodeNotFound (unknown job, a VM without
// completed backups), CodeUnknownRepository, CodeUnavailable (no
// catalog, or it does not answer).
func (s *RepoService) Verify(ctx context.Context, req repoapi.VerifyRequest) (repoapi.VerifyReply, error) {
	n := 0
	for _, set := range []bool{req.JobID != "", req.VM != "", req.All} {
		if set {
			n++
		}
	}
	if n != 1 {
		return repoapi.VerifyReply{}, coded(repoapi.CodeBadRequest, errors.New("verify: name exactly one of job_id, vm or all"))
	}
	if req.Repository != "" {
		if _, err := s.repo(req.Repository); err != nil {
			return repoapi.VerifyReply{}, err
		}
	}
	if s.opts.Catalog == nil {
		return repoapi.VerifyReply{}, coded(repoapi.CodeUnavailable, errors.New("verify: no catalog configured to list completed backups"))
	}
	jobs, err := s.verifyJobs(ctx, req)
	if err != nil {
		return repoapi.VerifyReply{}, err
	}
	reply := repoapi.VerifyReply{Results: []repoapi.VerifyResult{}}
	for _, j := range jobs {
		r, ok := s.opts.Repositories[j.Repository]
		if !ok {
			if req.JobID != "" {
				return repoapi.VerifyReply{}, coded(repoapi.CodeUnknownRepository, fmt.Errorf("job %s is in repository %q, which this hub does not serve", j.ID, j.Repository))
			}
			continue
		}
		// No prune changes the VM's chains while its point is read (a
		// merge rewrites the files under it), and a point pruned since
		// the list was taken is no longer there to verify.
		release, err := s.beginRead(ctx, j.VM.UUID)
		if err != nil {
			return repoapi.VerifyReply{}, fmt.Errorf("verify job %s: %w", j.ID, err)
		}
		if cur, err := s.opts.Catalog.Job(ctx, j.ID); err == nil && cur.Status != backup.StatusCompleted {
			release()
			continue
		}
		var results []repoapi.VerifyResult
		seq := time.Now().UnixMilli()
		for _, d := range j.Disks {
			res := s.VerifyDisk(ctx, r, j, d)
			if ctx.Err() != nil {
				release()
				return repoapi.VerifyReply{}, fmt.Errorf("verify job %s: %w", j.ID, ctx.Err())
			}
			results = append(results, res)
		}
		release()
		reply.Results = append(reply.Results, results...)
		id, err := s.publishVerified(ctx, j, seq, results)
		if err != nil {
			s.log.Error().Err(err).Str("job_id", j.ID).Msg("publish backup.verified")
			reply.PublishErrors = append(reply.PublishErrors, err.Error())
			continue
		}
		reply.Events = append(reply.Events, id)
	}
	return reply, nil
}

// ServeVerifyRequests takes backup.verify.requested messages (verify
// schedules) from c, the hub's consumer bus.ConsumerHubVerify, until ctx
// ends: each runs as Verify (within VerifyTimeout; the results are logged
// and backup.verified published per job) and is acked when done. A
// message that does not decode, or that Verify refuses (an unknown job, a
// VM without backups, no selector), is terminated with a log line: asking
// again would not help. One request at a time.
func (s *RepoService) ServeVerifyRequests(ctx context.Context, c jetstream.Consumer) error {
	log := s.log.With().Str("consumer", bus.ConsumerHubVerify).Logger()
	serveRequests(ctx, c, log, func(m jetstream.Msg) { s.verifyRequest(ctx, m, log) })
	return nil
}

// serveRequests hands c's messages to handle one at a time until ctx ends.
// A fetch waits up to 5 s and no longer than ctx, so a stopping hub does
// not wait for one to time out; a fetch that fails is logged and tried
// again a second later.
func serveRequests(ctx context.Context, c jetstream.Consumer, log zerolog.Logger, handle func(jetstream.Msg)) {
	for ctx.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		m, err := c.Next(jetstream.FetchContext(fctx))
		cancel()
		switch {
		case err == nil:
			handle(m)
		case ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout):
			log.Warn().Err(err).Msg("fetch request")
			_ = sleepCtx(ctx, time.Second)
		}
	}
}

func (s *RepoService) verifyRequest(ctx context.Context, m jetstream.Msg, log zerolog.Logger) {
	req, err := schemas.DecodeVerifyRequest(m.Data())
	if err != nil {
		log.Error().Err(err).Msg("verification request refused")
		_ = m.Term()
		return
	}
	log = log.With().Str("requested_by", req.RequestedBy).Str("vm", req.VM).Str("job_id", req.JobID).Bool("all", req.All).Logger()
	vctx, cancel := context.WithTimeout(ctx, repoapi.VerifyTimeout)
	defer cancel()
	rep, err := s.Verify(vctx, repoapi.VerifyRequest{JobID: req.JobID, VM: req.VM, All: req.All, Repository: req.Repository})
	var ce *codedError
	switch {
	case err != nil && ctx.Err() != nil:
		return // redelivered to the next hub after the ack wait
	case errors.As(err, &ce) && ce.code != repoapi.CodeUnavailable:
		log.Error().Err(err).Msg("verification request refused")
		_ = m.Term()
		return
	case err != nil:
		log.Warn().Err(err).Msg("verification request failed; it is delivered again")
		_ = m.NakWithDelay(time.Minute)
		return
	}
	failed := 0
	for _, r := range rep.Results {
		if r.Status == repoapi.VerifyFailed {
			failed++
		}
	}
	log.Info().Int("disks", len(rep.Results)).Int("failed", failed).Int("events", len(rep.Events)).
		Strs("publish_errors", rep.PublishErrors).Msg("verification request done")
	if err := m.DoubleAck(ctx); err != nil {
		log.Warn().Err(err).Msg("ack verification request")
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// verifyJobs lists the completed jobs a request selects, oldest first.
func (s *RepoService) verifyJobs(ctx context.Context, req repoapi.VerifyRequest) ([]backup.Job, error) {
	if req.JobID != "" {
		j, err := s.opts.Catalog.Job(ctx, req.JobID)
		switch {
		case errors.Is(err, backup.ErrNotFound):
			return nil, coded(repoapi.CodeNotFound, fmt.Errorf("verify: unknown job %s", req.JobID))
		case err != nil:
			return nil, coded(repoapi.CodeUnavailable, fmt.Errorf("verify: ask the catalog for job %s: %w", req.JobID, err))
		case j.Status != backup.StatusCompleted:
			return nil, coded(repoapi.CodeBadRequest, fmt.Errorf("verify: job %s is %s: only completed backups are verified", req.JobID, j.Status))
		case req.Repository != "" && j.Repository != req.Repository:
			return nil, coded(repoapi.CodeNotFound, fmt.Errorf("verify: job %s is in repository %s, not %s", req.JobID, j.Repository, req.Repository))
		}
		return []backup.Job{j}, nil
	}
	jobs, err := s.opts.Catalog.Jobs(ctx, backup.JobFilter{VM: req.VM, Status: backup.StatusCompleted})
	if err != nil {
		return nil, coded(repoapi.CodeUnavailable, fmt.Errorf("verify: ask the catalog for completed jobs: %w", err))
	}
	jobs = slices.DeleteFunc(jobs, func(j backup.Job) bool { return req.Repository != "" && j.Repository != req.Repository })
	if len(jobs) == 0 && req.VM != "" {
		return nil, coded(repoapi.CodeNotFound, fmt.Errorf("verify: vm %s has no completed backup", req.VM))
	}
	slices.Reverse(jobs) // the catalog lists newest first
	return jobs, nil
}

// VerifyDisk verifies one disk of a completed job in r: the file exists
// and qemu-img check finds no corruption, its manifest is the one
// backup.completed named, and the point read through its chain (a
// read-only qemu-nbd export on a unix socket, hashed with copier.Hash)
// matches the manifest chunk for chunk. A disk completed before manifests
// existed gets VerifyNoManifest after its check.
func (s *RepoService) VerifyDisk(ctx context.Context, r *repository.Repo, j backup.Job, d backup.Disk) repoapi.VerifyResult {
	start := time.Now()
	res := repoapi.VerifyResult{
		TargetRef: repoapi.TargetRef{Repository: j.Repository, JobID: j.ID, VMUUID: j.VM.UUID, DiskKey: d.Disk.Key},
		Target:    d.Target, Status: repoapi.VerifyFailed, ChunkSize: manifest.ChunkSize,
	}
	log := s.log.With().Str("job_id", j.ID).Str("vm_uuid", j.VM.UUID).Int32("disk_key", d.Disk.Key).Logger()
	defer func() {
		res.Duration, res.VerifiedAt = time.Since(start), time.Now().UTC()
		ev := log.Info()
		if res.Status == repoapi.VerifyFailed {
			ev = log.Warn()
		}
		ev.Str("status", res.Status).Str("problem", res.Problem).Str("detail", res.Detail).Int64("chunk_offset", res.ChunkOffset).
			Int64("bytes_read", res.BytesRead).Dur("duration", res.Duration).Msg("backup verified")
	}()
	fail := func(problem string, err error) repoapi.VerifyResult {
		res.Problem, res.Detail = problem, err.Error()
		return res
	}
	path, err := r.Path(j.VM.UUID, d.Disk.Key, j.ID)
	if err != nil {
		return fail(repoapi.VerifyProblemMissing, err)
	}
	if _, err := os.Stat(path); err != nil {
		return fail(repoapi.VerifyProblemMissing, err)
	}
	if err := r.Check(ctx, path); err != nil && !errors.Is(err, repository.ErrLeaks) {
		return fail(repoapi.VerifyProblemCheck, err)
	}
	if d.ManifestSHA256 == "" {
		res.Status = repoapi.VerifyNoManifest
		res.Detail = "backup made before manifests existed: its file checks, its data cannot be compared"
		return res
	}
	mpath, err := r.ManifestPath(j.VM.UUID, d.Disk.Key, j.ID)
	if err != nil {
		return fail(repoapi.VerifyProblemManifest, err)
	}
	want, sum, err := manifest.Read(mpath)
	switch {
	case err != nil:
		return fail(repoapi.VerifyProblemManifest, err)
	case sum.String() != d.ManifestSHA256:
		return fail(repoapi.VerifyProblemManifest, fmt.Errorf("manifest %s has SHA-256 %s, backup.completed says %s", mpath, sum, d.ManifestSHA256))
	case want.Capacity != d.Disk.CapacityBytes:
		return fail(repoapi.VerifyProblemManifest, fmt.Errorf("manifest %s is of %d bytes, the disk has %d", mpath, want.Capacity, d.Disk.CapacityBytes))
	}
	// Always a local unix socket: the hub reads its own files.
	exp, err := r.Export(ctx, path, repository.ExportOptions{ReadOnly: true, Shared: copier.DefaultConnections,
		Owner: "verify-" + strings.ToLower(nuid.Next()), SocketDir: s.opts.SocketDir})
	if err != nil {
		return fail(repoapi.VerifyProblemRead, err)
	}
	got, err := copier.Hash(ctx, exp.URI(), copier.HashOptions{})
	if cerr := exp.Close(context.WithoutCancel(ctx)); cerr != nil {
		log.Warn().Err(cerr).Msg("close verify export")
	}
	if err != nil {
		return fail(repoapi.VerifyProblemRead, err)
	}
	res.BytesRead = got.Capacity
	if i, differ := want.FirstMismatch(got); differ {
		res.ChunkIndex, res.ChunkOffset = i, want.Offset(i)
		return fail(repoapi.VerifyProblemData, fmt.Errorf("chunk %d (bytes %d to %d) read through the chain has SHA-256 %s, the manifest %s",
			i, want.Offset(i), want.Offset(i)+want.ChunkLen(i), got.Digests[i], want.Digests[i]))
	}
	res.Status = repoapi.VerifyOK
	return res
}

// publishVerified publishes backup.verified for job j's results (seq
// numbers this verification of j) and returns its id.
func (s *RepoService) publishVerified(ctx context.Context, j backup.Job, seq int64, results []repoapi.VerifyResult) (string, error) {
	ev := VerifiedEvent(j, seq, time.Now(), results)
	if s.opts.Publisher == nil {
		return "", fmt.Errorf("backup.verified of job %s not published: the hub has no event publisher", j.ID)
	}
	if _, err := s.opts.Publisher.PublishEvent(ctx, ev); err != nil {
		return "", fmt.Errorf("publish backup.verified of job %s: %w", j.ID, err)
	}
	return ev.ID, nil
}

// VerifiedEvent is the backup.verified of job j's verification number seq
// finished at, with its disks' results: failed when a disk failed, else
// no_manifest when a disk had none, else ok.
func VerifiedEvent(j backup.Job, seq int64, at time.Time, results []repoapi.VerifyResult) *schemas.Verified {
	h := schemas.Header{
		ID: bus.EventID(j.ID, j.Attempt, schemas.NameVerified, 0, seq), Time: at.UTC(),
		JobID: j.ID, Attempt: j.Attempt, VM: j.VM,
	}
	schemas.Stamp(&h, schemas.NameVerified)
	ev := &schemas.Verified{Header: h, Repository: j.Repository, Seq: seq, Status: schemas.VerifyOK}
	for _, r := range results {
		var ref schemas.DiskRef
		for _, d := range j.Disks {
			if d.Disk.Key == r.DiskKey {
				ref = d.Disk
			}
		}
		vd := schemas.VerifiedDisk{Disk: ref, Target: r.Target, Status: r.Status, Problem: r.Problem,
			Detail: cutText(r.Detail, 4096), BytesRead: r.BytesRead}
		if r.Problem == repoapi.VerifyProblemData {
			vd.ChunkIndex, vd.ChunkOffset = r.ChunkIndex, r.ChunkOffset
		}
		ev.Disks = append(ev.Disks, vd)
		switch {
		case r.Status == repoapi.VerifyFailed:
			ev.Status = schemas.VerifyFailed
		case r.Status == repoapi.VerifyNoManifest && ev.Status == schemas.VerifyOK:
			ev.Status = schemas.VerifyNoManifest
		}
	}
	return ev
}

// cutText cuts s to at most n bytes on a rune boundary.
func cutText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
