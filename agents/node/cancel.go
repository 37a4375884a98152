package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/sendense/sendense/agents/node/agentapi"
	"github.com/sendense/sendense/bus"
)

// ErrCanceled is the cause of a job's context when admin canceled it
// (Agent.Cancel): the run stops, cleans up as on any failure, and the job
// ends with backup.failed reason canceled, never retried.
var ErrCanceled = errors.New("canceled by admin")

// tracked is one job the agent runs, for Cancel.
type tracked struct {
	attempt   int
	cancel    context.CancelCauseFunc
	requested bool // Cancel asked to stop it
	settled   bool // its outcome is decided: too late to cancel
}

// track registers a job for Cancel and returns its context (canceled with
// cause ErrCanceled by Cancel) and a func that unregisters it. A second
// run of the same job id on this agent (never expected: the lease and the
// catalog's checks come first) is not registered again.
func (a *Agent) track(ctx context.Context, r *request) (context.Context, func()) {
	jctx, cancel := context.WithCancelCause(ctx)
	a.jobsMu.Lock()
	defer a.jobsMu.Unlock()
	if _, ok := a.jobs[r.jobID]; ok {
		return jctx, func() { cancel(nil) }
	}
	t := &tracked{attempt: r.attempt, cancel: cancel}
	a.jobs[r.jobID] = t
	return jctx, func() {
		cancel(nil)
		a.jobsMu.Lock()
		defer a.jobsMu.Unlock()
		if a.jobs[r.jobID] == t {
			delete(a.jobs, r.jobID)
		}
	}
}

// settle marks the job's outcome as decided, so a later Cancel answers
// CancelTooLate, and reports whether a Cancel came first (then the job
// must end as canceled instead).
func (a *Agent) settle(jobID string) (canceled bool) {
	a.jobsMu.Lock()
	defer a.jobsMu.Unlock()
	t, ok := a.jobs[jobID]
	if !ok {
		return false
	}
	t.settled = true
	return t.requested
}

// Cancel stops the job jobID if this agent runs it: its context ends with
// cause ErrCanceled and the job ends with backup.failed reason canceled.
// ok is false when the agent does not run the job. Once the job's outcome
// is decided (its copy is done, or it failed), the reply is CancelTooLate
// and nothing changes. Safe for concurrent use.
func (a *Agent) Cancel(jobID string) (_ agentapi.CancelReply, ok bool) {
	a.jobsMu.Lock()
	defer a.jobsMu.Unlock()
	t, ok := a.jobs[jobID]
	if !ok {
		return agentapi.CancelReply{}, false
	}
	reply := agentapi.CancelReply{Agent: a.cfg.AgentID, JobID: jobID, Attempt: t.attempt, State: agentapi.CancelStopping}
	if t.settled && !t.requested {
		reply.State = agentapi.CancelTooLate
		return reply, true
	}
	t.requested = true
	t.cancel(ErrCanceled)
	return reply, true
}

// ServeCancel answers cancel requests on bus.AgentCancel for a until the
// returned subscription is unsubscribed (or nc closes). Requests for jobs
// a does not run get no answer (another agent runs them); a reply subject
// other than an inbox gets none either (bus.ReplyAllowed).
func ServeCancel(nc *nats.Conn, a *Agent) (*nats.Subscription, error) {
	sub, err := nc.Subscribe(bus.AgentCancel, func(m *nats.Msg) {
		var req agentapi.CancelRequest
		if err := json.Unmarshal(m.Data, &req); err != nil || req.JobID == "" || !bus.ReplyAllowed(m.Reply) {
			a.log.Warn().Str("reply", m.Reply).Msg("ignoring malformed cancel request")
			return
		}
		reply, ok := a.Cancel(req.JobID)
		if !ok {
			return
		}
		a.log.Info().Str("job_id", req.JobID).Int("attempt", reply.Attempt).Str("state", reply.State).Msg("cancel requested")
		data, _ := json.Marshal(reply)
		if err := m.Respond(data); err != nil {
			a.log.Warn().Err(err).Str("job_id", req.JobID).Msg("answer cancel request")
		}
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", bus.AgentCancel, err)
	}
	return sub, nil
}
