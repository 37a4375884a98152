package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

func init() { extraCommands = append(extraCommands, newBackupCmd) }

// Exit codes of `backup --wait`.
const (
	exitFailed   = 2
	exitRejected = 3
)

type backupCmd struct {
	vm         string
	backupType string
	repository string
	jobID      string
	wait       bool
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
	nc, err := a.connect(ctx, "sendense-cli")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	var w *waiter
	if c.wait {
		if w, err = newWaiter(nc, req.JobID); err != nil {
			return err
		}
		defer w.close()
	}
	if _, err := bus.NewPublisher(js, "sendense-cli", a.log).PublishRequest(ctx, req); err != nil {
		return fmt.Errorf("publish backup request for vm %s: %w", c.vm, err)
	}
	fmt.Fprintf(a.stdout, "job %s requested (vm %s, %s)\n", req.JobID, c.vm, c.backupType)
	if !c.wait {
		return nil
	}
	return w.run(ctx, a)
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

// waiter follows one job's events. It subscribes before the request is
// published, so no event can be missed.
type waiter struct {
	jobID  string
	events chan *nats.Msg
	subs   []*nats.Subscription
}

func newWaiter(nc *nats.Conn, jobID string) (*waiter, error) {
	w := &waiter{jobID: jobID, events: make(chan *nats.Msg, 1024)}
	for _, subj := range []string{"backup.*", bus.ProgressSubject(jobID)} {
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

func (w *waiter) run(ctx context.Context, a *app) error {
	tty := term.IsTerminal(int(os.Stderr.Fd()))
	var p *mpb.Progress
	bars := map[int32]*mpb.Bar{}
	if tty {
		p = mpb.NewWithContext(ctx, mpb.WithOutput(os.Stderr))
	}
	finish := func() {
		if p != nil {
			for _, b := range bars {
				b.Abort(false)
			}
			p.Wait()
		}
	}
	for {
		var m *nats.Msg
		select {
		case <-ctx.Done():
			finish()
			return ctx.Err()
		case m = <-w.events:
		}
		if m.Subject == schemas.NameRequested {
			continue
		}
		ev, err := schemas.Decode(m.Subject, m.Data)
		if err != nil || ev.EventHeader().JobID != w.jobID {
			continue
		}
		switch e := ev.(type) {
		case *schemas.Started:
			for _, d := range e.Disks {
				fmt.Fprintf(a.stdout, "disk %d: %s (%s)%s\n", d.Disk.Key, d.BackupType, d.Reason, baseNote(d.BaseChangeID))
			}
		case *schemas.Progress:
			for _, d := range e.Disks {
				if p == nil {
					continue
				}
				b, ok := bars[d.Disk.Key]
				if !ok {
					b = p.AddBar(d.BytesTotal,
						mpb.PrependDecorators(decor.Name(fmt.Sprintf("disk %d ", d.Disk.Key)), decor.CountersKibiByte("% .1f / % .1f")),
						mpb.AppendDecorators(decor.Percentage()))
					bars[d.Disk.Key] = b
				}
				b.SetTotal(d.BytesTotal, false)
				b.SetCurrent(d.BytesDone)
				if d.Done {
					b.SetTotal(d.BytesTotal, true)
				}
			}
			if p == nil {
				fmt.Fprintf(os.Stderr, "progress %d/%d bytes\n", e.BytesDone, e.BytesTotal)
			}
		case *schemas.ChangeID:
			fmt.Fprintf(a.stdout, "disk %d: change id %s recorded (%d bytes read, %d written)\n", e.Disk.Key, e.ChangeID, e.BytesRead, e.BytesWritten)
		case *schemas.Completed:
			finish()
			fmt.Fprintf(a.stdout, "job %s completed\n", w.jobID)
			return nil
		case *schemas.Failed:
			if e.Retryable {
				fmt.Fprintf(a.stdout, "attempt %d failed (%s: %s); the agent retries\n", e.Attempt, e.Reason, e.Message)
				continue
			}
			finish()
			return &exitError{code: exitFailed, err: fmt.Errorf("job %s failed: %s: %s", w.jobID, e.Reason, e.Message)}
		case *schemas.Rejected:
			finish()
			return &exitError{code: exitRejected, err: fmt.Errorf("job %s rejected: %s: %s", w.jobID, e.Reason, e.Message)}
		}
	}
}

func baseNote(base string) string {
	if base == "" {
		return ""
	}
	return " since change id " + strings.TrimSpace(base)
}
