package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

func init() { extraCommands = append(extraCommands, newCancelCmd) }

// CancelAgent is the subject token of the backup.rejected events `cancel`
// publishes (backup.rejected.admin): the admin, not an agent, ended the job.
const CancelAgent = "admin"

func newCancelCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel JOB",
		Short: "Cancel a queued backup job: remove its request from the queue and record it as rejected (canceled); needs admin",
		Long: `Cancel a queued backup job (status queued: no agent started it yet). Its request
is deleted from BACKUP_REQUESTS and a backup.rejected with reason canceled records it, so
the catalog shows the job rejected (canceled). JOB is a job id or a unique prefix of at
least 4 characters. Deleting from the queue needs the admin role.

A running job cannot be canceled yet: cancel says so and changes nothing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCancel(cmd.Context(), a, args[0])
		},
	}
}

func runCancel(ctx context.Context, a *app, idOrPrefix string) error {
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
	switch {
	case j.Status == backup.StatusRunning || (j.Status == backup.StatusFailed && !j.Ended()):
		return fmt.Errorf("cancel job %s: it is %s (agent %s); canceling a running job is not supported yet", j.ID, j.Status, dash(j.Agent))
	case j.Status != backup.StatusQueued:
		return fmt.Errorf("cancel job %s: it already ended (%s); nothing to cancel", j.ID, j.Status)
	}
	st, err := js.Stream(ctx, bus.StreamRequests)
	if err != nil {
		return fmt.Errorf("cancel job %s: stream %s: %w", j.ID, bus.StreamRequests, err)
	}
	m, err := st.GetMsg(ctx, j.RequestSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("cancel job %s: its request (seq %d) left the queue: an agent took it; see `sendense job %s`", j.ID, j.RequestSeq, j.ID)
	}
	if err != nil {
		return fmt.Errorf("cancel job %s: read request seq %d: %w", j.ID, j.RequestSeq, err)
	}
	if m.Subject != bus.SubjectRequested {
		return fmt.Errorf("cancel job %s: seq %d is a %s, not its request", j.ID, j.RequestSeq, m.Subject)
	}
	if err := st.DeleteMsg(ctx, j.RequestSeq); err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("cancel job %s: its request (seq %d) left the queue: an agent took it; see `sendense job %s`", j.ID, j.RequestSeq, j.ID)
		}
		return fmt.Errorf("cancel job %s: delete request seq %d from %s: %w", j.ID, j.RequestSeq, bus.StreamRequests, err)
	}
	pub, err := bus.NewAgentPublisher(js, CancelAgent, a.log)
	if err != nil {
		return err
	}
	ev := &schemas.Rejected{
		Header: schemas.Header{
			ID:      bus.EventID(j.ID, 1, schemas.NameRejected, 0, 0),
			Time:    time.Now().UTC(),
			JobID:   j.ID,
			Attempt: 1,
		},
		Reason:  schemas.RejectCanceled,
		Message: fmt.Sprintf("canceled by %s before an agent started it (request seq %d removed from the queue)", requester(), j.RequestSeq),
		Request: cut(string(m.Data), 4096),
	}
	ev.VM.Name = j.VM.Name // as the request named it; it passed the request's schema
	schemas.Stamp(&ev.Header, schemas.NameRejected)
	if _, err := pub.PublishEvent(ctx, ev); err != nil {
		return fmt.Errorf("cancel job %s: its request was removed, but recording it failed: %w", j.ID, err)
	}
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := cat.Await(actx, j.ID, func(j backup.Job) bool { return j.Status == backup.StatusRejected }); err != nil {
		return fmt.Errorf("cancel job %s: removed and recorded, but the catalog does not show it yet: %w", j.ID, err)
	}
	fmt.Fprintf(a.stdout, "job %s canceled (its request was removed from the queue)\n", j.ID)
	return nil
}
