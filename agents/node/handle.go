package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
	"github.com/sendense/sendense/vmware"
)

// request is one delivery of backup.requested, resolved enough to run.
type request struct {
	msg     jetstream.Msg
	req     schemas.Request
	jobID   string
	attempt int // delivery count: makes event ids unique per delivery
	// failures is how many attempts of this job already failed, from the
	// catalog. The retry limit counts these, not deliveries: a request
	// that waited for a busy VM's lease was redelivered without running.
	failures int
	vm       *vmware.VM
	log      zerolog.Logger
}

// handle runs one delivered request to its end: ack, nak or term.
func (a *Agent) handle(ctx context.Context, msg jetstream.Msg) {
	attempt, err := bus.Attempt(msg)
	if err != nil {
		a.log.Error().Err(err).Msg("request without metadata")
		_ = msg.Term()
		return
	}
	md, _ := msg.Metadata()
	log := a.log.With().Uint64("stream_seq", md.Sequence.Stream).Int("attempt", attempt).Logger()
	stop := bus.KeepInProgress(ctx, msg, a.cfg.InProgressInterval, log)
	defer stop()

	r := &request{msg: msg, attempt: attempt}
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

	// A redelivery of a job the catalog already has as completed (the ack
	// was lost) must not run it again.
	if job, err := a.deps.Catalog.Job(ctx, r.jobID); err == nil {
		if job.Status == store.StatusCompleted {
			r.log.Info().Msg("job already completed; acking redelivered request")
			stop()
			_ = msg.Ack()
			return
		}
		r.failures = failures(job)
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

	holder := fmt.Sprintf("%s/%s/%d", a.cfg.AgentID, r.jobID, r.attempt)
	lease, err := a.deps.Leases.Acquire(ctx, bus.VMLeaseKey(r.vm.InstanceUUID), holder)
	if errors.Is(err, bus.ErrLeaseHeld) {
		r.log.Info().Err(err).Dur("delay", a.cfg.LeaseWait).Msg("vm busy; request waits")
		stop()
		_ = msg.NakWithDelay(a.cfg.LeaseWait)
		return
	}
	if err != nil {
		a.failAndSettle(ctx, r, nil, stop, fail(schemas.FailInternal, true, fmt.Errorf("take lease of vm %s: %w", r.vm.InstanceUUID, err)))
		return
	}
	r.log.Info().Str("holder", holder).Msg("lease taken")

	began := time.Now()
	done := a.metrics.started()
	completed, err := a.run(lease.Context(), r)
	if err == nil {
		// The copy is done and the targets are closed: finish reporting it
		// even if shutdown began meanwhile.
		cctx, cancel := a.cleanupCtx(ctx)
		err = a.publish(cctx, schemas.NameCompleted, completed)
		cancel()
	}
	done()
	if err != nil {
		if lerr := lease.Err(); lerr != nil && ctx.Err() == nil {
			// The lease was lost while the agent was not shutting down.
			err = fail(schemas.FailInternal, true, fmt.Errorf("%w (lease lost: %v)", err, lerr))
		}
		a.failAndSettle(ctx, r, lease, stop, err)
		return
	}
	r.log.Info().Int("disks", len(completed.Disks)).Msg("backup completed")
	a.metrics.completed(completed, time.Since(began))
	a.awaitCatalog(ctx, r, store.StatusCompleted)
	a.release(lease, r)
	stop()
	if err := msg.DoubleAck(ctx); err != nil {
		r.log.Warn().Err(err).Msg("ack request")
	}
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
		if errors.Is(err, hub.ErrUnknownRepository) {
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
// catalog would refuse; that is a bug, not worth a retry.
func (a *Agent) publish(ctx context.Context, subject string, ev schemas.Event) error {
	if _, err := a.deps.Publisher.PublishEvent(ctx, subject, ev); err != nil {
		return fail(schemas.FailInternal, !errors.Is(err, bus.ErrInvalidEvent), fmt.Errorf("publish %s: %w", subject, err))
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
	if err := a.publish(cctx, schemas.NameRejected, ev); err != nil {
		// Not terminated: a redelivery gets another chance to say why.
		r.log.Error().Err(err).Msg("publish rejection")
		_ = r.msg.NakWithDelay(a.cfg.RetryBackoff)
		return
	}
	_ = r.msg.TermWithReason(rj.reason)
}

// failAndSettle publishes backup.failed, then acks (permanent or out of
// attempts) or naks with backoff (retryable).
func (a *Agent) failAndSettle(ctx context.Context, r *request, lease *bus.Lease, stop func(), err error) {
	cctx, cancel := a.cleanupCtx(ctx)
	defer cancel()
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
	r.log.Error().Err(err).Str("reason", reason).Bool("retryable", ev.Retryable).Msg("backup failed")
	a.metrics.outcome(OutcomeFailed)
	if perr := a.publish(cctx, schemas.NameFailed, ev); perr != nil {
		r.log.Error().Err(perr).Msg("publish failure")
	} else {
		a.awaitCatalog(cctx, r, store.StatusFailed)
	}
	if lease != nil {
		a.release(lease, r)
	}
	stop()
	if final {
		_ = r.msg.Ack()
		return
	}
	delay := a.backoff(r.failures + 1)
	if reason == schemas.FailShutdown {
		delay = time.Second // another agent may take it at once
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
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CatalogWait)
	defer cancel()
	for {
		job, err := a.deps.Catalog.Job(ctx, r.jobID)
		if err == nil && (job.Status == status || job.Status == store.StatusCompleted) {
			return // completed wins over a later failure of the same job
		}
		select {
		case <-ctx.Done():
			r.log.Warn().Str("want_status", status).Msg("catalog did not show the job's outcome in time")
			return
		case <-time.After(50 * time.Millisecond):
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

// failures counts the job's backup.failed events (one per failed attempt)
// from their ids, <job>.<attempt>.failed.<disk>.<seq> (bus.EventID).
func failures(job store.Job) int {
	n := 0
	for _, id := range job.EventIDs {
		if strings.HasPrefix(id, job.ID+".") && strings.Contains(id[len(job.ID):], "."+schemas.NameFailed[len("backup."):]+".") {
			n++
		}
	}
	return n
}
