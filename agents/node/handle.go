package node

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/vmware"
)

// request is one delivery of backup.requested, resolved enough to run.
type request struct {
	msg jetstream.Msg
	seq uint64 // the request message's stream sequence: its identity
	// requestedAt is when the request was stored: the job's created time.
	requestedAt time.Time
	req         schemas.Request
	jobID       string
	attempt     int // this run's attempt: see attemptOf
	// failures is how many attempts of this job already failed, from the
	// catalog. The retry limit counts these, not deliveries: a request
	// that waited for a busy VM's lease was redelivered without running.
	failures int
	vm       *vmware.VM
	log      zerolog.Logger
}

// handle runs one delivered request to its end: ack, nak or term.
func (a *Agent) handle(ctx context.Context, msg jetstream.Msg) {
	times := &jobTimes{began: time.Now()}
	ctx = withJobTimes(ctx, times)
	delivered, err := bus.Attempt(msg)
	if err != nil {
		a.log.Error().Err(err).Msg("request without metadata")
		_ = msg.Term()
		return
	}
	md, _ := msg.Metadata()
	log := a.log.With().Uint64("stream_seq", md.Sequence.Stream).Int("delivered", delivered).Logger()
	stop := bus.KeepInProgress(ctx, msg, a.cfg.InProgressInterval, log)
	defer stop()

	r := &request{msg: msg, seq: md.Sequence.Stream, requestedAt: md.Timestamp.UTC(), attempt: delivered}
	r.req, err = schemas.DecodeRequest(msg.Data())
	r.jobID = a.jobID(r.req, msg, md)
	r.log = log.With().Str("job_id", r.jobID).Logger()
	if err != nil {
		reason := schemas.RejectSchema
		if errors.Is(err, schemas.ErrInvalidJSON) {
			reason = schemas.RejectInvalidJSON
		}
		a.rejectAndTerm(ctx, r, stop, &rejection{reason: reason, err: err})
		return
	}
	r.log = r.log.With().Str("vm", r.req.VM).Logger()

	// What the catalog knows of the job decides whether this delivery runs
	// at all, and its attempt number.
	job, err := a.deps.Catalog.Job(ctx, r.jobID)
	switch {
	case errors.Is(err, backup.ErrNotFound):
	case err == nil && job.Status == backup.StatusQueued:
		// Only its request, waiting in the queue (this message, or another
		// under the same id): the catalog has no record of it yet.
	case err != nil:
		// Without the catalog the agent can neither plan nor tell a
		// redelivery from a new job: wait for it, running nothing.
		r.log.Warn().Err(err).Dur("delay", a.cfg.RetryBackoff).Msg("catalog unreachable; request waits")
		stop()
		_ = msg.NakWithDelay(a.cfg.RetryBackoff)
		return
	case job.RequestSeq != 0 && job.RequestSeq != r.seq:
		// Another request runs, or ran, under this job id: this message is
		// not a redelivery of it, and must neither run as its attempt nor
		// be dropped without an answer.
		a.reusedJobID(ctx, r, stop, md, job)
		return
	case job.Status == backup.StatusCompleted:
		// A redelivery of a completed job (its ack was lost) must not run
		// it again.
		r.log.Info().Msg("job already completed; acking redelivered request")
		stop()
		_ = msg.Ack()
		return
	case job.Ended():
		a.endedJob(ctx, r, stop, md, job)
		return
	default:
		r.failures = job.FailedAttempts
		r.attempt = attemptOf(delivered, job)
	}
	r.log = r.log.With().Int("attempt", r.attempt).Logger()

	// From here the job can be canceled (Cancel): jctx ends with cause
	// ErrCanceled, and failAndSettle ends the job as canceled.
	jctx, untrack := a.track(ctx, r)
	defer untrack()
	// A job canceled for good (its earlier attempt's agent died before it
	// recorded the cancel, or cancel took a queued request an agent had
	// already fetched) ends here, as canceled, without running.
	if rec, canceled, err := a.deps.Cancels.Canceled(ctx, r.jobID); err != nil {
		r.log.Warn().Err(err).Dur("delay", a.cfg.RetryBackoff).Msg("cancel records unreadable; request waits")
		stop()
		_ = msg.NakWithDelay(a.cfg.RetryBackoff)
		return
	} else if canceled {
		a.failAndSettle(ctx, r, nil, stop, canceledError(fmt.Errorf("recorded by %s at %s; attempt %d did not run", rec.By, rec.At.Format(time.RFC3339), r.attempt)))
		return
	}

	if err := a.resolve(ctx, r); err != nil {
		var rj *rejection
		if errors.As(err, &rj) {
			a.rejectAndTerm(ctx, r, stop, rj)
			return
		}
		a.failAndSettle(ctx, r, nil, stop, err)
		return
	}
	r.log = r.log.With().Str("vm_uuid", r.vm.InstanceUUID).Logger()
	holder := bus.Holder{Agent: a.cfg.AgentID, JobID: r.jobID, Attempt: r.attempt}
	lease, err := a.deps.Leases.Acquire(ctx, bus.VMLeaseKey(r.vm.InstanceUUID), holder)
	if errors.Is(err, bus.ErrLeaseHeld) {
		if a.settle(r.jobID) {
			a.failAndSettle(ctx, r, nil, stop, canceledError(err))
			return
		}
		r.log.Info().Err(err).Dur("delay", a.cfg.LeaseWait).Msg("vm busy; request waits")
		stop()
		_ = msg.NakWithDelay(a.cfg.LeaseWait)
		return
	}
	if err != nil {
		a.failAndSettle(ctx, r, nil, stop, a.natsFailure(fmt.Errorf("take lease of vm %s: %w", r.vm.InstanceUUID, err)))
		return
	}
	r.log.Info().Str("holder", holder.String()).Msg("lease taken")

	began := time.Now()
	done := a.metrics.started()
	// The run ends when the lease is lost or the job is canceled.
	rctx, rcancel := context.WithCancelCause(lease.Context())
	stopCancel := context.AfterFunc(jctx, func() { rcancel(context.Cause(jctx)) })
	completed, runs, err := a.run(rctx, r)
	stopCancel()
	rcancel(nil)
	if err == nil && a.settle(r.jobID) {
		// Canceled after the copy, before its outcome was decided: the
		// closed targets go, and no completed event is published.
		a.abortTargets(ctx, r, runs)
		err = canceledError(errors.New("the copy was done; its closed targets were removed"))
	}
	if err == nil {
		err = a.publishCompleted(ctx, r, lease, completed, runs)
	}
	done()
	if errors.Is(err, errAttemptTaken) {
		r.log.Warn().Err(err).Dur("delay", a.cfg.RetryBackoff).Msg("attempt taken by another run; request waits")
		a.release(lease, r)
		stop()
		_ = msg.NakWithDelay(a.cfg.RetryBackoff)
		return
	}
	if err != nil {
		a.failAndSettle(ctx, r, lease, stop, a.whyStopped(ctx, lease, err))
		return
	}
	a.metrics.completed(completed, time.Since(began))
	a.storeUp()
	waited := time.Now()
	a.awaitCatalog(ctx, r, backup.StatusCompleted)
	// Logged once the catalog shows it, with what the job spent where.
	r.log.Info().Int("disks", len(completed.Disks)).Dur("job_ms", time.Since(times.began)).Dur("vcenter_ms", times.vcenter).
		Dur("copy_ms", times.copy).Dur("hub_ms", times.hub).Dur("catalog_ms", times.catalog).Dur("catalog_wait_ms", time.Since(waited)).
		Msg("backup completed")
	a.release(lease, r)
	stop()
	if err := msg.DoubleAck(ctx); err != nil {
		r.log.Warn().Err(err).Msg("ack request")
	}
}

// attemptOf numbers a run of a job: its delivery count, but always above
// every attempt the catalog has seen. Delivery counts alone can repeat (a
// consumer recreated after a cluster lost its state counts from 1 again),
// and a repeated attempt would repeat event ids: the stream would drop the
// new events as duplicates of the old ones.
func attemptOf(delivered int, job backup.Job) int {
	return max(delivered, job.Attempt+1)
}

// endedJob settles a request for a job that already ended. A redelivery
// of the job's own request (the ack or term of the last attempt was lost)
// is dropped. Another request reusing the job id is rejected
// (reusedJobID). Jobs recorded before started events carried the request's
// sequence are told apart by the delivery count only.
func (a *Agent) endedJob(ctx context.Context, r *request, stop func(), md *jetstream.MsgMetadata, job backup.Job) {
	if job.RequestSeq == r.seq || job.RequestSeq == 0 && r.attempt > 1 {
		r.log.Info().Str("status", job.Status).Msg("job already ended; dropping redelivered request")
		stop()
		_ = r.msg.Term()
		return
	}
	a.reusedJobID(ctx, r, stop, md, job)
}

// reusedJobID answers a request whose job id names another request's job:
// backup.rejected with job_id_reused, under a job id derived from this
// message, so the other job's history is never touched.
func (a *Agent) reusedJobID(ctx context.Context, r *request, stop func(), md *jetstream.MsgMetadata, job backup.Job) {
	reused := r.jobID
	r.jobID = bus.DeriveJobID(md.Stream, md.Sequence.Stream, md.Timestamp)
	r.log = r.log.With().Str("job_id", r.jobID).Str("reused_job_id", reused).Logger()
	a.rejectAndTerm(ctx, r, stop, &rejection{reason: schemas.RejectJobIDReused, err: fmt.Errorf(
		"job id %s names the job of another request (%s, vm %s); a new request needs a new job id", reused, job.Status, job.VM.Name)})
}

// publishCompleted publishes backup.completed only while the lease is
// certainly held: it renews the lease first (Confirm) and publishes within
// the time that renewal guarantees. A lease it cannot confirm ends the job
// without a completed event, and the closed targets are removed.
func (a *Agent) publishCompleted(ctx context.Context, r *request, lease *bus.Lease, completed *schemas.Completed, runs []*diskRun) error {
	// The copy is done and the targets are closed: finish reporting it
	// even if shutdown began meanwhile.
	cctx, cancel := a.cleanupCtx(ctx)
	defer cancel()
	valid, err := lease.Confirm(cctx)
	if err != nil {
		a.abortTargets(ctx, r, runs)
		return a.leaseFailure(fmt.Errorf("confirm lease before backup.completed: %w", err))
	}
	pctx, pcancel := context.WithTimeout(cctx, valid)
	defer pcancel()
	// On an error the event may still have been stored (the ack was lost):
	// the targets stay, and the hub removes them only once the catalog has
	// everything the stream holds and does not show the job completed.
	return a.publish(pctx, completed)
}

// whyStopped classifies the error that ended a run from what ended it: the
// agent shutting down, or the lease lost (taken or deleted, or not
// renewable because NATS could not store).
func (a *Agent) whyStopped(ctx context.Context, lease *bus.Lease, err error) error {
	switch lerr := lease.Err(); {
	case ctx.Err() != nil:
		return fail(schemas.FailShutdown, true, err)
	case lerr != nil && errors.Is(lerr, bus.ErrLeaseLost):
		// Whatever failed after the lease ended failed because it ended.
		return a.leaseFailure(fmt.Errorf("%w: %w", lerr, err))
	}
	return err
}

// leaseFailure classifies a lost lease: nats_unavailable when it could not
// be renewed (NATS could not store), else lease_lost (deleted or taken).
func (a *Agent) leaseFailure(err error) error {
	if errors.Is(err, bus.ErrUnavailable) {
		return a.natsFailure(err)
	}
	return fail(schemas.FailLeaseLost, true, err)
}

// natsFailure classifies an error of a NATS operation: nats_unavailable
// (retryable, and the agent pauses, see storeDown) when JetStream could
// not store, internal and retryable otherwise.
func (a *Agent) natsFailure(err error) error {
	if errors.Is(err, bus.ErrUnavailable) {
		return fail(schemas.FailNATS, true, err)
	}
	return fail(schemas.FailInternal, true, err)
}

// jobID is the request's job id or, for a raw publish, one derived from the
// message so every redelivery gets the same id.
func (a *Agent) jobID(req schemas.Request, msg jetstream.Msg, md *jetstream.MsgMetadata) string {
	if id, err := bus.RequestJobID(req, msg); err == nil {
		return id
	}
	return bus.DeriveJobID(md.Stream, md.Sequence.Stream, md.Timestamp)
}

// resolve finds the VM and checks the repository; unknown names are
// rejections, an unreachable vCenter or hub is retryable.
func (a *Agent) resolve(ctx context.Context, r *request) error {
	vm, err := a.deps.VCenter.FindVM(ctx, r.req.VM)
	switch {
	case errors.Is(err, vmware.ErrVMNotFound):
		return reject(schemas.RejectUnknownVM, "vm %q not found in vcenter", r.req.VM)
	case errors.Is(err, vmware.ErrVMAmbiguous):
		return reject(schemas.RejectImpossible, "vm name %q is ambiguous; use its instance uuid or moref", r.req.VM)
	case err != nil:
		return fail(schemas.FailVCenter, true, fmt.Errorf("find vm %s: %w", r.req.VM, err))
	}
	r.vm = vm
	if _, err := a.deps.Targets.Info(ctx, r.req.Repository); err != nil {
		if errors.Is(err, repoapi.ErrUnknownRepository) {
			return reject(schemas.RejectUnknownRepository, "repository %q is not configured on the hub", r.req.Repository)
		}
		return fail(schemas.FailRepository, true, fmt.Errorf("reach repository %s: %w", r.req.Repository, err))
	}
	return nil
}

func (a *Agent) header(r *request, name string, diskKey int32, seq int64) schemas.Header {
	h := schemas.Header{
		ID:      bus.EventID(r.jobID, r.attempt, name, diskKey, seq),
		Time:    time.Now().UTC(),
		JobID:   r.jobID,
		Attempt: r.attempt,
	}
	if r.vm != nil {
		h.VM = schemas.VMRef{Name: r.vm.Name, UUID: r.vm.InstanceUUID, Moref: r.vm.Moref()}
	}
	schemas.Stamp(&h, name)
	return h
}

// publish publishes an event. The publisher refuses one that fails its
// schema (bus.ErrInvalidEvent), so the agent can never emit something the
// catalog would refuse; that is a bug, not worth a retry. JetStream not
// storing is nats_unavailable; an event id already used by another run
// (bus.ErrDuplicateMsgID) is retried under the next attempt.
func (a *Agent) publish(ctx context.Context, ev schemas.Event) error {
	name := schemas.NameOf(ev)
	if _, err := a.deps.Publisher.PublishEvent(ctx, ev); err != nil {
		err = fmt.Errorf("publish %s: %w", name, err)
		if errors.Is(err, bus.ErrInvalidEvent) {
			return fail(schemas.FailInternal, false, err)
		}
		return a.natsFailure(err)
	}
	return nil
}

// cleanupCtx is for work that must happen even when the job's context has
// ended (publishing the failure, removing snapshots).
func (a *Agent) cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ShutdownTimeout)
}

func (a *Agent) rejectAndTerm(ctx context.Context, r *request, stop func(), rj *rejection) {
	cctx, cancel := a.cleanupCtx(ctx)
	defer cancel()
	ev := &schemas.Rejected{
		Header:  a.header(r, schemas.NameRejected, 0, 0),
		Reason:  rj.reason,
		Message: cut(rj.err.Error(), 4000),
		Request: cut(string(r.msg.Data()), 4096),
	}
	if r.vm == nil && validName(r.req.VM) {
		ev.VM.Name = r.req.VM
	}
	r.log.Warn().Str("reason", rj.reason).Err(rj.err).Msg("request rejected")
	a.metrics.outcome(OutcomeRejected)
	stop()
	if err := a.publish(cctx, ev); err != nil {
		// Not terminated: a redelivery gets another chance to say why.
		r.log.Error().Err(err).Msg("publish rejection")
		if errors.Is(err, bus.ErrUnavailable) {
			a.storeDown(err)
		}
		_ = r.msg.NakWithDelay(a.cfg.RetryBackoff)
		return
	}
	_ = r.msg.TermWithReason(rj.reason)
}

// failAndSettle publishes backup.failed, then acks (permanent or out of
// attempts) or naks with backoff (retryable). A failure it could not
// publish is never acked: the request comes back once NATS stores again.
// A job admin canceled before its outcome was decided (Cancel) fails as
// canceled, whatever err.
func (a *Agent) failAndSettle(ctx context.Context, r *request, lease *bus.Lease, stop func(), err error) {
	cctx, cancel := a.cleanupCtx(ctx)
	defer cancel()
	if a.settle(r.jobID) && !errors.Is(err, ErrCanceled) {
		err = canceledError(err) // canceled first: whatever it interrupted
	}
	reason, retryable := classify(err)
	final := !retryable || r.failures+1 >= a.cfg.MaxAttempts
	ev := &schemas.Failed{
		Header:     a.header(r, schemas.NameFailed, 0, 0),
		Repository: r.req.Repository,
		Reason:     reason,
		Message:    cut(err.Error(), 4000),
		Retryable:  retryable && !final,
	}
	if ev.VM.UUID == "" && validName(r.req.VM) {
		ev.VM.Name = r.req.VM // failed before the VM was resolved
	}
	if reason == schemas.FailCanceled {
		r.log.Info().Err(err).Msg("backup canceled")
	} else {
		r.log.Error().Err(err).Str("reason", reason).Bool("retryable", ev.Retryable).Msg("backup failed")
	}
	a.metrics.outcome(OutcomeFailed)
	perr := a.publish(cctx, ev)
	if perr != nil {
		r.log.Error().Err(perr).Msg("publish failure")
	} else {
		a.awaitCatalog(cctx, r, backup.StatusFailed)
	}
	if reason == schemas.FailNATS || errors.Is(perr, bus.ErrUnavailable) {
		a.storeDown(err)
	}
	if lease != nil {
		a.release(lease, r)
	}
	stop()
	if final && perr == nil {
		_ = r.msg.Ack()
		return
	}
	delay := a.backoff(r.failures + 1)
	switch reason {
	case schemas.FailShutdown:
		delay = time.Second // another agent may take it at once
	case schemas.FailRepositoryFull:
		delay = max(delay, a.cfg.RepositoryFullBackoff) // space comes back slowly, if at all
	}
	_ = r.msg.NakWithDelay(delay)
}

func (a *Agent) backoff(attempt int) time.Duration {
	d := a.cfg.RetryBackoff
	for i := 1; i < attempt && d < 8*a.cfg.RetryBackoff; i++ {
		d *= 2
	}
	return d
}

// awaitCatalog waits until the catalog shows the job with status, so that
// the next job of this VM (which can start once the lease is released) sees
// this one. Bounded by Config.CatalogWait.
func (a *Agent) awaitCatalog(ctx context.Context, r *request, status string) {
	ctx, cancel := context.WithTimeout(withJobTimes(ctx, nil), a.cfg.CatalogWait) // timed as a whole by the caller
	defer cancel()
	// The catalog commits an event within milliseconds: poll soon, then
	// back off to 50 ms (the lease, and so the VM, is held meanwhile).
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		job, err := a.deps.Catalog.Job(ctx, r.jobID)
		if err == nil && (job.Status == status || job.Status == backup.StatusCompleted) {
			return // completed wins over a later failure of the same job
		}
		select {
		case <-ctx.Done():
			r.log.Warn().Str("want_status", status).Msg("catalog did not show the job's outcome in time")
			return
		case <-time.After(wait):
		}
	}
}

func (a *Agent) release(lease *bus.Lease, r *request) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := lease.Release(ctx); err != nil {
		r.log.Warn().Err(err).Msg("release lease")
	}
}

// cut shortens s to at most n bytes on a rune boundary.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func validName(s string) bool {
	if s == "" || len(s) > 255 || !utf8.ValidString(s) {
		return false
	}
	return schemas.Validate(schemas.NameRequested, []byte(fmt.Sprintf(`{"vm":%q}`, s))) == nil
}
