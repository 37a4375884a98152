package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

func init() { extraCommands = append(extraCommands, newWatchCmd) }

type watchCmd struct {
	jobID    string
	json     bool
	progress bool

	cat *catalog.Client
	pr  printer // plain lines, or NDJSON with --json
}

func newWatchCmd(a *app) *cobra.Command {
	c := &watchCmd{}
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print backup events as they happen (like nats sub 'backup.>')",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return c.run(cmd.Context(), a) },
	}
	cmd.Flags().StringVar(&c.jobID, "job", "", "only this job: its id, or a unique prefix of at least 4 characters of a job the catalog knows")
	cmd.Flags().BoolVar(&c.json, "json", false, `print NDJSON: one {"subject":…,"event":{…}} per message`)
	cmd.Flags().BoolVar(&c.progress, "progress", false, "include progress events")
	return cmd
}

// confirmWait bounds how long watch waits for the catalog to show an
// outcome it saw on the wire before it says the outcome was not stored.
const confirmWait = 30 * time.Second

func (c *watchCmd) run(ctx context.Context, a *app) error {
	nc, err := a.connect(ctx, bus.RoleRequester)
	if err != nil {
		return err
	}
	defer nc.Close()
	c.cat = catalog.NewClient(nc)
	c.pr = newLinePrinter(a.stdout, c.json)
	if c.jobID != "" {
		// A short id of a job the catalog knows names it; an id it does
		// not know yet is watched as given (the job may start later).
		switch j, err := c.cat.ResolveJob(ctx, c.jobID); {
		case err == nil:
			c.jobID = j.ID
		case !errors.Is(err, backup.ErrNotFound):
			return err
		}
	}
	ch := make(chan *nats.Msg, 1024)
	sub, err := nc.ChanSubscribe(bus.SubjectAll, ch)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("subscribe %s: %w", bus.SubjectAll, err)
	}
	a.log.Debug().Str("subject", bus.SubjectAll).Msg("watching")
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-ch:
			c.handle(ctx, a, m, &wg)
		}
	}
}

// handle prints a message at once, except an outcome (completed, a final
// failure, rejected): that is printed once the catalog shows it, so watch
// never reports an outcome the stream did not store.
func (c *watchCmd) handle(ctx context.Context, a *app, m *nats.Msg, wg *sync.WaitGroup) {
	ev, err := schemas.Decode(m.Subject, m.Data)
	if err != nil || !isOutcome(ev) {
		c.print(m, "")
		return
	}
	if c.jobID != "" && ev.EventHeader().JobID != c.jobID {
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		actx, cancel := context.WithTimeout(ctx, confirmWait)
		defer cancel()
		j, err := c.cat.Await(actx, ev.EventHeader().JobID, backup.Job.Ended)
		if err == nil && !isJobOutcome(ev, j) {
			err = fmt.Errorf("the catalog shows job %s %s at attempt %d", j.ID, j.Status, j.Attempt)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Warn().Str("subject", m.Subject).Str("job_id", ev.EventHeader().JobID).Err(err).
				Msg("outcome seen on the wire is not the job's stored outcome")
			c.print(m, " NOT STORED: not the outcome the catalog holds")
			return
		}
		c.print(m, "")
	}()
}

// isJobOutcome reports whether ev is the outcome the catalog holds for its
// ended job j: the same kind, of the same attempt.
func isJobOutcome(ev schemas.Event, j backup.Job) bool {
	switch e := ev.(type) {
	case *schemas.Completed:
		return j.Status == backup.StatusCompleted && j.Attempt == e.Attempt
	case *schemas.Failed:
		return j.Status == backup.StatusFailed && j.Failure != nil && j.Failure.Attempt == e.Attempt
	case *schemas.Rejected:
		return j.Status == backup.StatusRejected
	}
	return false
}

func isOutcome(ev schemas.Event) bool {
	switch e := ev.(type) {
	case *schemas.Completed, *schemas.Rejected:
		return true
	case *schemas.Failed:
		return !e.Retryable
	}
	return false
}

func (c *watchCmd) print(m *nats.Msg, note string) {
	if m.Subject == schemas.NameRequested {
		var req struct {
			JobID string `json:"job_id"`
		}
		_ = json.Unmarshal(m.Data, &req)
		if c.jobID == "" || req.JobID == c.jobID {
			_ = c.pr.Event(m, "")
			c.pr.Println(fmt.Sprintf("%s %-16s %s", time.Now().Format("15:04:05"), m.Subject, m.Data))
		}
		return
	}
	ev, err := schemas.Decode(m.Subject, m.Data)
	if err != nil {
		if c.jobID != "" {
			return // an invalid event names no job that can be trusted
		}
		_ = c.pr.Event(m, "invalid: "+err.Error())
		c.pr.Println(fmt.Sprintf("%s %-16s INVALID: %v", time.Now().Format("15:04:05"), m.Subject, err))
		return
	}
	h := ev.EventHeader()
	if c.jobID != "" && h.JobID != c.jobID {
		return
	}
	if _, ok := ev.(*schemas.Progress); ok && !c.progress {
		return
	}
	problem := ""
	if note != "" {
		problem = "not stored: the catalog holds another outcome for the job"
	}
	_ = c.pr.Event(m, problem)
	detail := ""
	switch e := ev.(type) {
	case *schemas.Started:
		for _, d := range e.Disks {
			detail += fmt.Sprintf(" disk=%d:%s(%s)", d.Disk.Key, d.BackupType, d.Reason)
		}
	case *schemas.Progress:
		detail = fmt.Sprintf(" %s of %s, %s", fmtBytes(e.BytesDone), fmtBytes(e.BytesTotal), fmtRate(e.RateBytesPerSec))
	case *schemas.ChangeID:
		detail = fmt.Sprintf(" disk=%d change_id=%q", e.Disk.Key, e.ChangeID)
	case *schemas.Completed:
		for _, d := range e.Disks {
			detail += fmt.Sprintf(" disk=%d:%s size=%s", d.Disk.Key, d.BackupType, strings.ReplaceAll(fmtBytes(d.ActualSizeBytes), " ", ""))
		}
	case *schemas.Failed:
		detail = fmt.Sprintf(" reason=%s retryable=%t message=%q", e.Reason, e.Retryable, e.Message)
	case *schemas.Rejected:
		detail = fmt.Sprintf(" reason=%s message=%q", e.Reason, e.Message)
	}
	c.pr.Println(fmt.Sprintf("%s %-16s job=%s attempt=%d vm=%s%s%s", h.Time.Local().Format("15:04:05"), m.Subject, h.JobID, h.Attempt, h.VM.Name, detail, note))
}
