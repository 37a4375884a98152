package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/agents/node/agentapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

func init() { extraCommands = append(extraCommands, newCancelCmd) }

// CancelAgent is the subject token of the backup.rejected events `cancel`
// publishes (backup.rejected.admin): the admin, not an agent, ended the job.
const CancelAgent = "admin"

// Exit codes of cancel besides 0 (canceled) and 1 (an error).
const (
	// exitCancelEnded: the job ended otherwise before the cancel took
	// effect (completed, failed or rejected): nothing was canceled.
	exitCancelEnded = 6
	// exitCancelTimeout: the cancel is under way (an agent is stopping the
	// job, or it is recorded and waits for the job's request to come again)
	// but the catalog did not show its outcome within --timeout.
	exitCancelTimeout = exitWaitTimeout
)

// cancelAnswerWait bounds the wait for the agent running a job to answer:
// it answers at once; silence means no agent runs the job.
const cancelAnswerWait = 3 * time.Second

type cancelCmd struct {
	timeout time.Duration
	json    bool
}

func newCancelCmd(a *app) *cobra.Command {
	c := &cancelCmd{}
	cmd := &cobra.Command{
		Use:   "cancel JOB",
		Short: "Cancel a queued or running backup job and wait until the catalog shows it ended; needs admin",
		Long: `Cancel a backup job. JOB is a job id or a unique prefix of at least 4 characters.
Needs the admin role.

The cancel is recorded first (KV bucket sendense_cancels): every agent reads the record
before it runs a delivery of the job's request, so a cancel holds even when the agent
running the job dies or hangs before it stops it.

A queued job (no agent started it yet): its request is deleted from BACKUP_REQUESTS and a
backup.rejected with reason canceled records it; the job shows rejected (canceled).

A running job: the agent running it stops the copy, removes the VM's snapshot, aborts the
job's targets in the repository (no partial file is left), releases the VM's lease and
publishes backup.failed with reason canceled (not retryable); the job shows failed
(canceled). The next backup of the VM is an incremental on its last completed backup.

A job between attempts (failed, its request waiting for the retry): its request is deleted
from the queue and a backup.failed with reason canceled ends it.

A job no agent runs now (its agent died or hangs): cancel says the cancel is recorded and
waits; the agent that takes the job's request next ends it as canceled without running it.

cancel waits until the catalog shows the outcome (at most --timeout) and prints it. A job
whose copy is already done completes: cancel says so and exits 6.

Exit codes: 0 canceled; 6 the job already ended (completed, failed or rejected) and nothing
was canceled; 5 the cancel is under way (an agent is stopping the job, or it is recorded and
waits for the job's request to come again) but the catalog did not show the outcome within
--timeout; 1 any other error (unknown job, no server, the cancel could not be recorded).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.run(cmd.Context(), a, args[0])
		},
	}
	cmd.Flags().DurationVar(&c.timeout, "timeout", time.Minute, "stop waiting for the catalog to show the outcome after this long (exit 5)")
	cmd.Flags().BoolVar(&c.json, "json", false, "print the canceled job's record, as the catalog shows it, as one JSON object")
	return cmd
}

func (c *cancelCmd) run(ctx context.Context, a *app, idOrPrefix string) error {
	nc, err := a.connect(ctx, bus.RoleAdmin)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cat := catalog.NewClient(nc)
	j, err := cat.ResolveJob(ctx, idOrPrefix)
	if err != nil {
		return err
	}
	if j.Ended() {
		return &exitError{code: exitCancelEnded, err: fmt.Errorf("cancel job %s: it already ended %s; nothing to cancel", j.ID, outcome(j))}
	}
	// One deadline for the whole cancel: recording it, and waiting for the
	// outcome.
	tctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	// Recorded first, for good: from here no delivery of the job's
	// request runs it, whatever becomes of the agent asked below.
	if err := c.record(tctx, a, js, j.ID); err != nil {
		return err
	}
	recorded := func(err error) error {
		return fmt.Errorf("cancel job %s: the cancel is recorded, so the job ends as canceled at its next delivery, but: %w", j.ID, err)
	}
	// A queued job's request, or that of a job between attempts (failed,
	// retryable, waiting for its redelivery), is taken off the queue
	// first: an agent that took it meanwhile answers the cancel below and
	// ends the job as canceled itself; if none answers, cancel records it.
	var removed []byte
	if (j.Status == backup.StatusQueued || j.Status == backup.StatusFailed) && j.RequestSeq != 0 {
		if removed, err = dequeue(tctx, js, j); err != nil {
			return recorded(err)
		}
	}
	wait := cancelAnswerWait
	if removed != nil {
		wait = time.Second // most likely no agent took it
	}
	reply, err := agentapi.RequestCancel(tctx, nc, j.ID, wait)
	switch {
	case errors.Is(err, agentapi.ErrNoAgent) && removed != nil && j.Status == backup.StatusQueued:
		return c.rejectQueued(tctx, a, js, cat, j, removed)
	case errors.Is(err, agentapi.ErrNoAgent) && removed != nil:
		return c.failBetweenAttempts(tctx, a, js, cat, j)
	case errors.Is(err, agentapi.ErrNoAgent):
		// No agent answered: its agent died or hangs, the answer was lost,
		// or the job waits for a retry whose request's place is unknown.
		// The agent that takes its request next finds the record and ends
		// it; the agents are asked again while cancel waits.
		newLinePrinter(a.stdout, c.json).Notice(fmt.Sprintf("job %s: no agent answered (%s, agent %s); the cancel is recorded, and the agent that takes its request next ends it as canceled: waiting up to %s", j.ID, j.Status, dash(j.Agent), c.timeout))
		return c.awaitOutcome(ctx, tctx, a, nc, cat, j, nil)
	case err != nil:
		return recorded(err)
	}
	return c.awaitOutcome(ctx, tctx, a, nc, cat, j, &reply)
}

// cancelAskAgain is how often cancel asks the agents again while it waits
// for a job no agent answered for (a lost answer, an agent that was busy).
const cancelAskAgain = 5 * time.Second

// awaitOutcome waits until the catalog shows job j ended (tctx bounds the
// wait; ctx is the command's) and prints how. reply is the answer of the
// agent stopping it, nil while none answered: then the agents are asked
// again every cancelAskAgain. A retryable failure does not end the wait:
// the record ends the job's next delivery.
func (c *cancelCmd) awaitOutcome(ctx, tctx context.Context, a *app, nc *nats.Conn, cat *catalog.Client, j backup.Job, reply *agentapi.CancelReply) error {
	var final backup.Job
	asked := time.Now()
	for {
		now, err := cat.Job(tctx, j.ID)
		if err == nil && now.Ended() {
			final = now
			break
		}
		if reply == nil && time.Since(asked) >= cancelAskAgain {
			asked = time.Now()
			if r, err := agentapi.RequestCancel(tctx, nc, j.ID, time.Second); err == nil {
				reply = &r
			}
		}
		select {
		case <-tctx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("cancel job %s: wait for the catalog: %w", j.ID, context.Cause(ctx))
			}
			if reply != nil {
				return &exitError{code: exitCancelTimeout, err: fmt.Errorf("cancel job %s: recorded; agent %s is stopping attempt %d, but the catalog did not show its outcome within %s: see `sendense job %s`", j.ID, reply.Agent, reply.Attempt, c.timeout, j.ID)}
			}
			return &exitError{code: exitCancelTimeout, err: fmt.Errorf("cancel job %s: recorded, but no agent took its request within %s; it ends as canceled when one does: see `sendense job %s`", j.ID, c.timeout, j.ID)}
		case <-time.After(catalog.AwaitInterval):
		}
	}
	if final.Failure == nil || final.Failure.Reason != schemas.FailCanceled {
		return endedFirst(final)
	}
	switch {
	case reply == nil:
		return c.canceled(a, final, fmt.Sprintf(": recorded; its request came again and attempt %d ended as canceled without running", final.Failure.Attempt))
	case final.Failure.Attempt != reply.Attempt:
		// The answering agent's attempt ended otherwise first (it died,
		// hung, or failed retryably); the record ended a later delivery.
		return c.canceled(a, final, fmt.Sprintf(": recorded; agent %s's attempt %d ended first, and attempt %d ended as canceled without running", reply.Agent, reply.Attempt, final.Failure.Attempt))
	}
	return c.canceled(a, final, fmt.Sprintf(": agent %s stopped attempt %d (failed, reason canceled; snapshot removed, targets aborted)", reply.Agent, reply.Attempt))
}

// record writes the durable cancel record of job id (bus.Cancels),
// trying again while NATS does not answer, until ctx ends: a write
// whose answer was lost (a server that died under it) may have been
// stored, and writing it again is harmless. Without the bucket nothing is
// canceled; a write that never got an answer may be stored, and the error
// says so.
func (c *cancelCmd) record(ctx context.Context, a *app, js jetstream.JetStream, id string) error {
	stored := false // a write got no answer: it may be stored
	err := bus.Await(ctx, "the cancel record of job "+id, func(ctx context.Context) error {
		cancels, err := bus.OpenCancels(ctx, js)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return bus.Permanent(err)
		}
		if err != nil {
			return err
		}
		err = cancels.Record(ctx, id, requester())
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			stored = true
		}
		return err
	}, bus.AwaitOptions{Log: a.log})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return fmt.Errorf("cancel job %s: nothing canceled: %w (the hub makes it when it starts: has a hub of this version run?)", id, err)
	case stored:
		return fmt.Errorf("cancel job %s: recording the cancel got no answer: %w; it may be stored, and then the job ends as canceled at its next delivery: run `sendense cancel %s` again to be sure", id, err, id)
	}
	return fmt.Errorf("cancel job %s: nothing canceled: %w", id, err)
}

// canceled prints the canceled job: "job ID canceled" followed by how, or with
// --json the job's record as the catalog shows it.
func (c *cancelCmd) canceled(a *app, j backup.Job, how string) error {
	pr := newLinePrinter(a.stdout, c.json)
	pr.Println(fmt.Sprintf("job %s canceled%s", j.ID, how))
	return pr.Result(j)
}

// endedFirst is cancel's answer when job j ended otherwise before the
// cancel took effect: exit 6.
func endedFirst(j backup.Job) error {
	return &exitError{code: exitCancelEnded, err: fmt.Errorf("cancel job %s: it already ended %s before the cancel took effect; nothing canceled", j.ID, outcome(j))}
}

// outcome describes an ended job: its status and, for a failure or a
// rejection, its reason.
func outcome(j backup.Job) string {
	s := "(" + j.Status + ")"
	if j.Failure != nil && (j.Status == backup.StatusFailed || j.Status == backup.StatusRejected) {
		s += " with reason " + j.Failure.Reason
		if j.Status == backup.StatusFailed && j.Failure.Retryable {
			s += ", to be retried"
		}
	}
	return s
}

// dequeue deletes a queued job's request (at j.RequestSeq, not 0) from
// BACKUP_REQUESTS and returns it; nil when the request already left the
// queue (an agent acked it).
func dequeue(ctx context.Context, js jetstream.JetStream, j backup.Job) (request []byte, err error) {
	st, err := js.Stream(ctx, bus.StreamRequests)
	if err != nil {
		return nil, fmt.Errorf("cancel job %s: stream %s: %w", j.ID, bus.StreamRequests, err)
	}
	m, err := st.GetMsg(ctx, j.RequestSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cancel job %s: read request seq %d: %w", j.ID, j.RequestSeq, err)
	}
	if m.Subject != bus.SubjectRequested {
		return nil, fmt.Errorf("cancel job %s: seq %d is a %s, not its request", j.ID, j.RequestSeq, m.Subject)
	}
	if err := st.DeleteMsg(ctx, j.RequestSeq); err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("cancel job %s: delete request seq %d from %s: %w", j.ID, j.RequestSeq, bus.StreamRequests, err)
	}
	return m.Data, nil
}

// rejectQueued records a queued job whose request cancel removed, and that
// no agent runs: backup.rejected reason canceled on backup.rejected.admin.
func (c *cancelCmd) rejectQueued(ctx context.Context, a *app, js jetstream.JetStream, cat *catalog.Client, j backup.Job, request []byte) error {
	ev := &schemas.Rejected{
		Header: schemas.Header{
			ID:      bus.EventID(j.ID, 1, schemas.NameRejected, 0, 0),
			Time:    time.Now().UTC(),
			JobID:   j.ID,
			Attempt: 1,
		},
		Reason:  schemas.RejectCanceled,
		Message: fmt.Sprintf("canceled by %s before an agent started it (request seq %d removed from the queue)", requester(), j.RequestSeq),
		Request: cut(string(request), 4096),
	}
	ev.VM.Name = j.VM.Name // as the request named it; it passed the request's schema
	schemas.Stamp(&ev.Header, schemas.NameRejected)
	return c.publishOutcome(ctx, a, js, cat, j, ev, " (its request was removed from the queue)")
}

// failBetweenAttempts records a job whose retryable failure left its
// request waiting for a redelivery that cancel removed, and that no agent
// runs: backup.failed reason canceled, not retryable, on
// backup.failed.admin under the next attempt (which no agent started, so
// the catalog files it: an attempt belongs to its first started event's
// agent).
func (c *cancelCmd) failBetweenAttempts(ctx context.Context, a *app, js jetstream.JetStream, cat *catalog.Client, j backup.Job) error {
	attempt := j.Attempt + 1
	ev := &schemas.Failed{
		Header: schemas.Header{
			ID:      bus.EventID(j.ID, attempt, schemas.NameFailed, 0, 0),
			Time:    time.Now().UTC(),
			JobID:   j.ID,
			Attempt: attempt,
			VM:      j.VM,
		},
		Repository: j.Repository,
		Reason:     schemas.FailCanceled,
		Message:    fmt.Sprintf("canceled by %s between attempts (request seq %d removed from the queue)", requester(), j.RequestSeq),
	}
	schemas.Stamp(&ev.Header, schemas.NameFailed)
	return c.publishOutcome(ctx, a, js, cat, j, ev, " between attempts (failed, reason canceled; its request was removed from the queue)")
}

// publishOutcome publishes ev, cancel's record of a job whose request it
// removed, on backup.<type>.admin, waits until the catalog shows the job
// ended, and prints it as canceled (how says how). Had an agent taken the
// request after all, its attempt owns the outcome: exit 6.
func (c *cancelCmd) publishOutcome(ctx context.Context, a *app, js jetstream.JetStream, cat *catalog.Client, j backup.Job, ev schemas.Event, how string) error {
	pub, err := bus.NewAgentPublisher(js, CancelAgent, a.log)
	if err != nil {
		return err
	}
	if _, err := pub.PublishEvent(ctx, ev); err != nil {
		return fmt.Errorf("cancel job %s: its request was removed and the cancel recorded (it will not run), but publishing its outcome failed: %w", j.ID, err)
	}
	actx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	final, err := cat.Await(actx, j.ID, backup.Job.Ended)
	if err != nil {
		return &exitError{code: exitCancelTimeout, err: fmt.Errorf("cancel job %s: removed and recorded, but the catalog does not show it yet: %w", j.ID, err)}
	}
	// canceled is the reason of a rejected and of a failed job alike.
	if final.Failure == nil || final.Failure.Reason != schemas.RejectCanceled && final.Failure.Reason != schemas.FailCanceled {
		return endedFirst(final)
	}
	return c.canceled(a, final, how)
}
