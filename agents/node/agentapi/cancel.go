package agentapi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sendense/sendense/bus"
)

// ErrNoAgent: no agent answered a cancel (RequestCancel) within the wait:
// none runs the job, or none is connected.
var ErrNoAgent = errors.New("no agent runs the job")

// CancelRequest is the body of a request on bus.AgentCancel.
type CancelRequest struct {
	JobID string `json:"job_id"`
}

// CancelReply is the answer of the agent that runs the job. Agents that do
// not run it do not answer.
type CancelReply struct {
	Agent   string `json:"agent"`
	JobID   string `json:"job_id"`
	Attempt int    `json:"attempt"`
	// State is CancelStopping or CancelTooLate.
	State string `json:"state"`
}

// Cancel reply states.
const (
	// CancelStopping: the agent stops the job; backup.failed with reason
	// canceled follows once its snapshot is removed, its targets aborted
	// and its lease released.
	CancelStopping = "stopping"
	// CancelTooLate: the attempt already has its outcome (its copy is done
	// and backup.completed is on its way, or it failed): nothing is
	// canceled, the catalog shows that outcome.
	CancelTooLate = "too_late"
)

// RequestCancel asks the agents to cancel job jobID and returns the answer
// of the one that runs it. It waits at most wait for an answer, then
// returns ErrNoAgent (also at once when no agent listens). The caller
// needs the admin role.
func RequestCancel(ctx context.Context, nc *nats.Conn, jobID string, wait time.Duration) (CancelReply, error) {
	rctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var reply CancelReply
	err := bus.Request(rctx, nc, bus.AgentCancel, CancelRequest{JobID: jobID}, &reply, 0, nil)
	switch {
	case errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		return CancelReply{}, fmt.Errorf("cancel job %s: %w (no answer within %s)", jobID, ErrNoAgent, wait)
	case err != nil:
		return CancelReply{}, fmt.Errorf("cancel job %s: %w", jobID, err)
	}
	return reply, nil
}
