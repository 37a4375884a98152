package main

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

func init() { extraCommands = append(extraCommands, newWatchCmd) }

type watchCmd struct {
	jobID    string
	json     bool
	progress bool
}

func newWatchCmd(a *app) *cobra.Command {
	c := &watchCmd{}
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print backup events as they happen (like nats sub 'backup.>')",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return c.run(cmd.Context(), a) },
	}
	cmd.Flags().StringVar(&c.jobID, "job", "", "only this job")
	cmd.Flags().BoolVar(&c.json, "json", false, "print each message's JSON")
	cmd.Flags().BoolVar(&c.progress, "progress", false, "include progress events")
	return cmd
}

func (c *watchCmd) run(ctx context.Context, a *app) error {
	nc, err := a.connect(ctx, "sendense-watch")
	if err != nil {
		return err
	}
	defer nc.Close()
	ch := make(chan *nats.Msg, 1024)
	sub, err := nc.ChanSubscribe(bus.SubjectAll, ch)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-ch:
			c.print(a, m)
		}
	}
}

func (c *watchCmd) print(a *app, m *nats.Msg) {
	if m.Subject == schemas.NameRequested {
		if c.json {
			fmt.Fprintf(a.stdout, "%s %s\n", m.Subject, m.Data)
		} else if c.jobID == "" {
			fmt.Fprintf(a.stdout, "%s %-16s %s\n", time.Now().Format("15:04:05"), m.Subject, m.Data)
		}
		return
	}
	ev, err := schemas.Decode(m.Subject, m.Data)
	if err != nil {
		fmt.Fprintf(a.stdout, "%s %-16s INVALID: %v\n", time.Now().Format("15:04:05"), m.Subject, err)
		return
	}
	h := ev.EventHeader()
	if c.jobID != "" && h.JobID != c.jobID {
		return
	}
	if _, ok := ev.(*schemas.Progress); ok && !c.progress {
		return
	}
	if c.json {
		fmt.Fprintf(a.stdout, "%s %s\n", m.Subject, m.Data)
		return
	}
	detail := ""
	switch e := ev.(type) {
	case *schemas.Started:
		for _, d := range e.Disks {
			detail += fmt.Sprintf(" disk=%d:%s(%s)", d.Disk.Key, d.BackupType, d.Reason)
		}
	case *schemas.Progress:
		detail = fmt.Sprintf(" %d/%d bytes", e.BytesDone, e.BytesTotal)
	case *schemas.ChangeID:
		detail = fmt.Sprintf(" disk=%d change_id=%q", e.Disk.Key, e.ChangeID)
	case *schemas.Completed:
		for _, d := range e.Disks {
			detail += fmt.Sprintf(" disk=%d:%s size=%d", d.Disk.Key, d.BackupType, d.ActualSizeBytes)
		}
	case *schemas.Failed:
		detail = fmt.Sprintf(" reason=%s retryable=%t message=%q", e.Reason, e.Retryable, e.Message)
	case *schemas.Rejected:
		detail = fmt.Sprintf(" reason=%s message=%q", e.Reason, e.Message)
	}
	fmt.Fprintf(a.stdout, "%s %-16s job=%s attempt=%d vm=%s%s\n", h.Time.Local().Format("15:04:05"), m.Subject, h.JobID, h.Attempt, h.VM.Name, detail)
}
