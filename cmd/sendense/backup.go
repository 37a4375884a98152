package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

func init() { extraCommands = append(extraCommands, newBackupCmd) }

// Exit codes of `backup`: 2 the backup failed and 3 it was rejected (with
// --wait), 4 the job id is already used by another job.
const (
	exitFailed   = 2
	exitRejected = 3
	exitConflict = 4
)

type backupCmd struct {
	vm         string
	backupType string
	repository string
	jobID      string
	wait       bool
	timeout    time.Duration
	json       bool
}

func newBackupCmd(a *app) *cobra.Command {
	c := &backupCmd{}
	cmd := &cobra.Command{
		Use:   "backup --vm NAME",
		Short: "Request a backup of a VM (publishes backup.requested); --wait follows it to the end",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.run(cmd.Context(), a)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.vm, "vm", "", "VM name, instance UUID or moref (required)")
	f.StringVar(&c.backupType, "type", schemas.TypeAuto, "auto, full or incremental")
	f.StringVar(&c.repository, "repository", schemas.DefaultRepository, "repository name")
	f.StringVar(&c.jobID, "job-id", "", "job id (default: a new one)")
	f.BoolVar(&c.wait, "wait", false, "show progress per disk and exit 0 only when the backup completed")
	f.DurationVar(&c.timeout, "timeout", 0, "with --wait: stop waiting after this long (exit 5; the backup goes on); 0: wait until it ends")
	f.BoolVar(&c.json, "json", false, `print NDJSON: the request as {"subject":"backup.requested","event":{…}}; with --wait each of the job's events likewise, then {"job":{…}}, the stored outcome`)
	_ = cmd.MarkFlagRequired("vm")
	return cmd
}

func (c *backupCmd) run(ctx context.Context, a *app) error {
	req := schemas.Request{VM: c.vm, BackupType: c.backupType, Repository: c.repository, JobID: c.jobID, RequestedBy: requester()}
	if req.JobID == "" {
		req.JobID = bus.NewJobID()
	}
	data, _ := json.Marshal(req)
	if err := schemas.Validate(schemas.NameRequested, data); err != nil {
		return err
	}
	nc, err := a.connect(ctx, bus.RoleRequester)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cat := catalog.NewClient(nc)
	if c.jobID != "" {
		// A job id names one job for good: never queue a second request
		// under the id of a job the catalog knows.
		switch j, err := cat.Job(ctx, c.jobID); {
		case err == nil:
			return &exitError{code: exitConflict, err: fmt.Errorf("job id %s is taken: job %s of vm %s is %s; use another --job-id", c.jobID, j.ID, vmName(j), j.Status)}
		case !errors.Is(err, backup.ErrNotFound):
			return fmt.Errorf("check job id %s with the catalog: %w", c.jobID, err)
		}
	}
	pr := newLinePrinter(a.stdout, c.json)
	if c.wait {
		pr = newPrinter(a.stdout, c.json) // live bars on a terminal
	}
	var w *waiter
	if c.wait {
		if w, err = newWaiter(nc, cat, req.JobID, req.VM, pr); err != nil {
			return err
		}
		defer w.close()
	}
	if _, err := bus.NewPublisher(js, "sendense-cli", a.log).PublishRequest(ctx, req); err != nil {
		if errors.Is(err, bus.ErrDuplicateMsgID) {
			return &exitError{code: exitConflict, err: fmt.Errorf("job id %s is taken: another request with this id is queued; use another --job-id", req.JobID)}
		}
		return fmt.Errorf("publish backup request for vm %s: %w", c.vm, err)
	}
	if err := pr.Event(&nats.Msg{Subject: bus.SubjectRequested, Data: data}, ""); err != nil {
		return err
	}
	pr.Println(fmt.Sprintf("job %s requested (vm %s, %s)", req.JobID, c.vm, c.backupType))
	if !c.wait {
		return nil
	}
	wctx, cancel := waitContext(ctx, c.timeout)
	defer cancel()
	w.timeout = c.timeout
	defer noticeQueued(wctx, pr, js, cat, req.JobID, queuedNoticeAfter)()
	return w.run(wctx)
}

func requester() string {
	name := "cli"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil {
		name += "@" + h
	}
	return name
}

// waiter follows one job's events for the progress it shows, and takes
// the job's outcome from the catalog: what it prints as the outcome was
// stored, never only seen on the wire. It subscribes before the request is
// published, so no event can be missed.
type waiter struct {
	jobID  string
	vm     string // as requested: name, instance uuid or moref
	cat    *catalog.Client
	events chan *nats.Msg
	subs   []*nats.Subscription
	pr     printer
	// timeout is --timeout, for the message when it passes.
	timeout time.Duration
}

// outcomePoll is how often the waiter asks the catalog whether the job
// ended, in case its terminal event passed while the connection was down.
const outcomePoll = 2 * time.Second

func newWaiter(nc *nats.Conn, cat *catalog.Client, jobID, vm string, pr printer) (*waiter, error) {
	w := &waiter{jobID: jobID, vm: vm, cat: cat, pr: pr, events: make(chan *nats.Msg, 1024)}
	for _, subj := range []string{bus.SubjectAll} {
		s, err := nc.ChanSubscribe(subj, w.events)
		if err != nil {
			w.close()
			return nil, fmt.Errorf("subscribe %s: %w", subj, err)
		}
		w.subs = append(w.subs, s)
	}
	return w, nc.Flush()
}

func (w *waiter) close() {
	for _, s := range w.subs {
		_ = s.Unsubscribe()
	}
}

func (w *waiter) run(ctx context.Context) error {
	pr := w.pr
	count := newProgressCounter(nil)
	// finish ends the live view with the summary, before the outcome line.
	finished := false
	finish := func(outcome string) {
		if !finished {
			finished = true
			pr.Finish(count.summary("backup of vm "+w.vm, outcome))
		}
	}
	defer finish("interrupted")
	poll := time.NewTicker(outcomePoll)
	defer poll.Stop()
	for {
		var m *nats.Msg
		select {
		case <-ctx.Done():
			finish("interrupted")
			return w.stopped(ctx, w.timeout)
		case <-poll.C:
			qctx, cancel := context.WithTimeout(ctx, outcomePoll)
			j, err := w.cat.Job(qctx, w.jobID)
			cancel()
			if err == nil && j.Ended() {
				finish(string(j.Status))
				return w.outcome(j)
			}
			continue
		case m = <-w.events:
		}
		if _, _, err := bus.ParseEventSubject(m.Subject); err != nil {
			continue // backup.requested
		}
		ev, err := schemas.Decode(m.Subject, m.Data)
		if err != nil || ev.EventHeader().JobID != w.jobID {
			continue
		}
		if err := pr.Event(m, ""); err != nil {
			return err
		}
		switch e := ev.(type) {
		case *schemas.Started:
			for _, d := range e.Disks {
				count.setKind(d.Disk.Key, d.BackupType)
				pr.Println(fmt.Sprintf("disk %d: %s (%s)%s", d.Disk.Key, d.BackupType, d.Reason, baseNote(d.BaseChangeID)))
			}
		case *schemas.Progress:
			for _, d := range e.Disks {
				count.update(d.Disk.Key, d.BytesDone, d.BytesTotal, d.Done)
			}
			count.rated(e.RateBytesPerSec) // the agent's, its one sampler's
			pr.Update(count.status())
		case *schemas.ChangeID:
			count.ended(e.Disk.Key, e.BytesRead, e.BytesWritten)
			pr.Println(fmt.Sprintf("disk %d: change id %s recorded (%s read, %s written)", e.Disk.Key, e.ChangeID, fmtBytes(e.BytesRead), fmtBytes(e.BytesWritten)))
			pr.Update(count.status())
		case *schemas.Failed:
			if e.Retryable {
				pr.Println(fmt.Sprintf("attempt %d failed (%s: %s); the agent retries", e.Attempt, e.Reason, e.Message))
				continue
			}
			return w.awaitThen(ctx, finish)
		case *schemas.Completed, *schemas.Rejected:
			return w.awaitThen(ctx, finish)
		}
	}
}

// awaitThen is await that ends the live view with the stored outcome
// before it prints that outcome.
func (w *waiter) awaitThen(ctx context.Context, finish func(string)) error {
	j, err := w.cat.Await(ctx, w.jobID, backup.Job.Ended)
	if err != nil && ctx.Err() != nil {
		finish("interrupted")
		return w.stopped(ctx, w.timeout)
	}
	if err != nil {
		finish("unconfirmed")
		return fmt.Errorf("job %s: its outcome was published but the catalog does not show it (not stored?): %w", w.jobID, err)
	}
	finish(string(j.Status))
	return w.outcome(j)
}

// outcome prints an ended job's outcome and returns its exit error. A job
// of another VM is another request's job that held this job id first (its
// request was queued longer than the stream remembers ids): a conflict.
func (w *waiter) outcome(j backup.Job) error {
	if j.Status != backup.StatusRejected && !sameVM(j.VM, w.vm) {
		return &exitError{code: exitConflict, err: fmt.Errorf("job id %s is taken: it names a backup of vm %s, not %s; use another --job-id", w.jobID, vmName(j), w.vm)}
	}
	reason, msg := "", ""
	if j.Failure != nil {
		reason, msg = j.Failure.Reason, j.Failure.Message
	}
	if err := w.pr.Result(struct {
		Job backup.Job `json:"job"`
	}{j}); err != nil {
		return err
	}
	switch j.Status {
	case backup.StatusCompleted:
		w.pr.Println(fmt.Sprintf("job %s completed", w.jobID))
		return nil
	case backup.StatusRejected:
		return &exitError{code: exitRejected, err: fmt.Errorf("job %s rejected: %s: %s", w.jobID, reason, msg)}
	}
	return &exitError{code: exitFailed, err: fmt.Errorf("job %s failed: %s: %s", w.jobID, reason, msg)}
}

func baseNote(base string) string {
	if base == "" {
		return ""
	}
	return " since change id " + strings.TrimSpace(base)
}

// sameVM reports whether vm, as a user names it (name, instance uuid or
// moref), is the VM of ref.
func sameVM(ref schemas.VMRef, vm string) bool {
	return vm == ref.Name || strings.EqualFold(vm, ref.UUID) || strings.EqualFold(vm, ref.Moref)
}
