package system

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/agents/simctl"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

// DemoOptions configure RunDemo.
type DemoOptions struct {
	VM      string  // default "pgtest1"
	Percent float64 // guest writes between the backups, percent of each disk; default 1
	// Dir receives the restored images; default a temporary directory,
	// removed afterwards.
	Dir string
}

// DemoDisk is one disk's line of the demo's table.
type DemoDisk struct {
	Key               int32
	FullChangeID      string
	SecondType        string
	SecondReason      string
	BaseChangeID      string
	FullRead          int64
	FullWritten       int64
	IncRead           int64
	IncWritten        int64
	FullActual        int64
	IncActual         int64
	IncBacking        string
	SavedPercent      float64
	FullRestoreEqual  bool
	IncRestoreEqual   bool
	BaseMatchesFullID bool
}

// DemoReport is what RunDemo found.
type DemoReport struct {
	FullJob, IncJob string
	Disks           []DemoDisk
}

// OK reports whether every check passed: every disk's change id recorded
// after the full, the second backup an incremental from exactly that change
// id backed onto the full, ≥ 90% saved, and both points restored identical.
func (r *DemoReport) OK() bool {
	if len(r.Disks) == 0 {
		return false
	}
	for _, d := range r.Disks {
		if d.FullChangeID == "" || d.SecondType != schemas.TypeIncremental || !d.BaseMatchesFullID ||
			d.IncBacking == "" || d.SavedPercent < 90 || !d.FullRestoreEqual || !d.IncRestoreEqual {
			return false
		}
	}
	return true
}

// RunDemo drives a running pipeline the way a user would, over NATS only:
// request a full backup, wait; make guest writes through the testbed's
// control service; request an incremental, wait; restore both points of
// every disk through the repository service and compare each with the image
// the simulated vCenter froze at that snapshot. It prints progress and the
// table to out.
func RunDemo(ctx context.Context, nc *nats.Conn, opts DemoOptions, out io.Writer) (*DemoReport, error) {
	if opts.VM == "" {
		opts.VM = "pgtest1"
	}
	if opts.Percent == 0 {
		opts.Percent = 1
	}
	if opts.Dir != "" {
		if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
			return nil, err
		}
	} else {
		d, err := os.MkdirTemp("", "sendense-demo-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		opts.Dir = d
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	pub := bus.NewPublisher(js, "sendense-demo", zerolog.Nop())
	cat := catalog.NewClient(nc)
	sim := simctl.NewClient(nc)
	repo := repoapi.NewClient(nc)

	backup := func(typ string) (*schemas.Completed, error) {
		id := bus.NewJobID()
		done := make(chan schemas.Event, 1)
		sub, err := nc.Subscribe(bus.SubjectAll, func(m *nats.Msg) {
			name, _, err := bus.ParseEventSubject(m.Subject)
			if err != nil || name == schemas.NameStarted || name == schemas.NameChangeID || name == schemas.NameProgress {
				return
			}
			ev, err := schemas.Decode(m.Subject, m.Data)
			if err != nil || ev.EventHeader().JobID != id {
				return
			}
			if f, ok := ev.(*schemas.Failed); ok && f.Retryable {
				return
			}
			select {
			case done <- ev:
			default:
			}
		})
		if err != nil {
			return nil, err
		}
		defer sub.Unsubscribe()
		start := time.Now()
		if _, err := pub.PublishRequest(ctx, schemas.Request{VM: opts.VM, BackupType: typ, JobID: id, RequestedBy: "demo"}); err != nil {
			return nil, err
		}
		fmt.Fprintf(out, "requested %s backup of %s: job %s\n", typ, opts.VM, id)
		var ev schemas.Event
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case ev = <-done:
		}
		// The event was seen on the wire; the outcome shown is the one the
		// catalog stored, which is also what the next request plans from.
		job, err := cat.Await(ctx, id, backup.Job.Ended)
		if err != nil {
			return nil, fmt.Errorf("job %s: %s seen, but the catalog does not show its outcome: %w", id, describe(ev), err)
		}
		c, ok := ev.(*schemas.Completed)
		if job.Status != backup.StatusCompleted || !ok {
			return nil, fmt.Errorf("job %s did not complete: %s (catalog: %s)", id, describe(ev), job.Status)
		}
		fmt.Fprintf(out, "job %s completed in %s\n", id, time.Since(start).Round(time.Millisecond))
		return c, nil
	}

	full, err := backup(schemas.TypeFull)
	if err != nil {
		return nil, err
	}
	w, err := sim.Write(ctx, simctl.WriteRequest{VM: opts.VM, Percent: opts.Percent, Seed: 42})
	if err != nil {
		return nil, err
	}
	for k, n := range w.Disks {
		fmt.Fprintf(out, "guest wrote %d bytes on disk %d\n", n, k)
	}
	inc, err := backup(schemas.TypeIncremental)
	if err != nil {
		return nil, err
	}

	rep := &DemoReport{FullJob: full.JobID, IncJob: inc.JobID}
	fullByKey := map[int32]schemas.DiskResult{}
	for _, d := range full.Disks {
		fullByKey[d.Disk.Key] = d
	}
	for _, d := range inc.Disks {
		f := fullByKey[d.Disk.Key]
		dd := DemoDisk{
			Key: d.Disk.Key, FullChangeID: f.ChangeID, SecondType: d.BackupType, SecondReason: d.Reason,
			BaseChangeID: d.BaseChangeID, BaseMatchesFullID: d.BaseChangeID != "" && d.BaseChangeID == f.ChangeID,
			FullRead: f.BytesRead, FullWritten: f.BytesWritten, IncRead: d.BytesRead, IncWritten: d.BytesWritten,
			FullActual: f.ActualSizeBytes, IncActual: d.ActualSizeBytes, IncBacking: d.Backing,
		}
		if f.ActualSizeBytes > 0 {
			dd.SavedPercent = 100 - 100*float64(d.ActualSizeBytes)/float64(f.ActualSizeBytes)
		}
		job, err := cat.Job(ctx, full.JobID)
		if err != nil {
			return nil, err
		}
		for _, jd := range job.Disks {
			if jd.Disk.Key == d.Disk.Key && jd.ChangeID != f.ChangeID {
				dd.FullChangeID = "" // the catalog must hold what the event said
			}
		}
		if dd.FullRestoreEqual, err = restoreAndCompare(ctx, repo, sim, opts, full, d.Disk.Key); err != nil {
			return nil, err
		}
		if dd.IncRestoreEqual, err = restoreAndCompare(ctx, repo, sim, opts, inc, d.Disk.Key); err != nil {
			return nil, err
		}
		rep.Disks = append(rep.Disks, dd)
	}
	printDemo(out, rep)
	return rep, nil
}

// restoreAndCompare restores one backup point to a raw file through the
// repository service's read-only export of its chain, and compares it with
// the image frozen at that job's snapshot.
func restoreAndCompare(ctx context.Context, repo *repoapi.Client, sim *simctl.Client, opts DemoOptions, c *schemas.Completed, key int32) (bool, error) {
	exp, err := repo.OpenRestore(ctx, repoapi.TargetRef{Repository: c.Repository, JobID: c.JobID, VMUUID: c.VM.UUID, DiskKey: key})
	if err != nil {
		return false, fmt.Errorf("export backup of disk %d of job %s: %w", key, c.JobID, err)
	}
	defer func() { _ = repo.CloseRestore(context.WithoutCancel(ctx), exp.ExportID) }()
	dst := filepath.Join(opts.Dir, fmt.Sprintf("%s-%d.raw", c.JobID, key))
	src, cleanup, err := hub.LocalURI(ctx, exp, "", zerolog.Nop())
	if err != nil {
		return false, err
	}
	defer cleanup()
	args := []string{"convert", "-f", "raw", "-O", "raw", src, dst}
	if out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
		return false, fmt.Errorf("restore disk %d of job %s: %w: %s", key, c.JobID, err, out)
	}
	defer os.Remove(dst)
	fr, err := sim.Frozen(ctx, opts.VM, "sendense-"+c.JobID, key)
	if err != nil {
		return false, err
	}
	out, err := exec.CommandContext(ctx, "qemu-img", "compare", "-f", "raw", "-F", "raw", fr.Path, dst).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return false, nil
	default:
		return false, fmt.Errorf("compare restore of disk %d of job %s: %w: %s", key, c.JobID, err, out)
	}
}

func printDemo(out io.Writer, r *DemoReport) {
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "NO"
	}
	fmt.Fprintf(out, "\nfull job %s, incremental job %s\n\n", r.FullJob, r.IncJob)
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	for _, d := range r.Disks {
		fmt.Fprintf(tw, "disk %d\t\n", d.Key)
		fmt.Fprintf(tw, "  change id recorded after the full\t%s\n", orNone(d.FullChangeID))
		fmt.Fprintf(tw, "  second backup\t%s (%s)\n", d.SecondType, d.SecondReason)
		fmt.Fprintf(tw, "  base change id it used\t%s (same as the full's: %s)\n", orNone(d.BaseChangeID), yes(d.BaseMatchesFullID))
		fmt.Fprintf(tw, "  bytes read / written, full\t%d / %d\n", d.FullRead, d.FullWritten)
		fmt.Fprintf(tw, "  bytes read / written, incremental\t%d / %d\n", d.IncRead, d.IncWritten)
		fmt.Fprintf(tw, "  qcow2 actual size, full / incremental\t%d / %d\n", d.FullActual, d.IncActual)
		fmt.Fprintf(tw, "  incremental's backing file\t%s.qcow2\n", d.IncBacking)
		fmt.Fprintf(tw, "  space saved vs a second full\t%.1f%%\n", d.SavedPercent)
		fmt.Fprintf(tw, "  restore identical, full / incremental\t%s / %s\n", yes(d.FullRestoreEqual), yes(d.IncRestoreEqual))
	}
	_ = tw.Flush()
	if r.OK() {
		fmt.Fprintln(out, "\nall checks passed")
	} else {
		fmt.Fprintln(out, "\nCHECKS FAILED")
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func describe(ev schemas.Event) string {
	switch e := ev.(type) {
	case *schemas.Failed:
		return "failed: " + e.Reason + ": " + e.Message
	case *schemas.Rejected:
		return "rejected: " + e.Reason + ": " + e.Message
	}
	return fmt.Sprintf("%T", ev)
}
