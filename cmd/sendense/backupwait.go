package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
)

// Exit codes of `backup --wait` when it stops waiting: the backup goes on.
const (
	// exitWaitTimeout: --timeout passed before the job ended.
	exitWaitTimeout = 5
	// exitInterrupted: Ctrl-C (SIGINT) or SIGTERM while waiting, as shells
	// report a process killed by SIGINT (128+2).
	exitInterrupted = 130
)

// errWaitTimeout is the cause of the wait's context when --timeout passed.
var errWaitTimeout = errors.New("wait timed out")

// waitContext bounds the wait by timeout (none when <= 0).
func waitContext(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeoutCause(ctx, timeout, errWaitTimeout)
}

// stopped is the exit error of a wait that ended before the job did: the
// timeout passed or the user interrupted it. Either way the backup goes
// on, and the error says so and how to follow it.
func (w *waiter) stopped(ctx context.Context, timeout time.Duration) error {
	hint := fmt.Sprintf("the backup goes on: follow it with `sendense watch --job %s`, see it with `sendense job %s`", w.jobID, w.jobID)
	if errors.Is(context.Cause(ctx), errWaitTimeout) {
		return &exitError{code: exitWaitTimeout, err: fmt.Errorf("job %s: gave up waiting after %s; %s", w.jobID, timeout, hint)}
	}
	return &exitError{code: exitInterrupted, err: fmt.Errorf("job %s: stopped waiting (interrupted); %s", w.jobID, hint)}
}

// queuedNoticeAfter is how long `backup --wait` waits for an agent to
// start the job before it says the job is still queued.
const queuedNoticeAfter = 3 * time.Second

// noticeQueued says through pr (a Notice), once, when the job is still
// queued queuedNoticeAfter after the request: no agent has taken it, with
// what the agents' consumer tells (agents waiting for requests, requests
// waiting). It returns a func that stops it.
func noticeQueued(ctx context.Context, pr printer, js jetstream.JetStream, cat *catalog.Client, jobID string, after time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-ctx.Done():
			return
		case <-time.After(after):
		}
		j, err := cat.Job(ctx, jobID)
		if err != nil || j.Status != backup.StatusQueued || ctx.Err() != nil {
			return
		}
		pr.Notice(fmt.Sprintf("job %s is queued: no agent has taken it yet%s", jobID, agentsNote(ctx, js)))
	}()
	return func() { cancel(); <-done }
}

// agentsNote describes the agents' request consumer: whether any agent
// is fetching requests, and how many requests wait.
func agentsNote(ctx context.Context, js jetstream.JetStream) string {
	cons, err := bus.RequestConsumer(ctx, js)
	if err != nil {
		return " (no agent ever connected: start one with `sendense agent` or `sendense serve`)"
	}
	ci := cons.CachedInfo()
	if ci.NumWaiting == 0 && ci.NumAckPending == 0 {
		return fmt.Sprintf(" (no agent is running: none is asking for requests; %d request(s) waiting)", ci.NumPending)
	}
	return fmt.Sprintf(" (%d request(s) waiting, %d being run; its VM may be busy with another job)", ci.NumPending, ci.NumAckPending)
}
