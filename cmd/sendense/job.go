package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
)

func init() { extraCommands = append(extraCommands, newJobCmd) }

// jobCmd shows one job from the catalog service.
type jobCmd struct {
	json bool
}

func newJobCmd(a *app) *cobra.Command {
	c := &jobCmd{}
	cmd := &cobra.Command{
		Use:   "job ID",
		Short: "Show one backup job: status, disks, change ids, targets (asks the catalog service)",
		Long: `Show one backup job: status, disks, change ids, targets (asks the catalog
service). ID is the job id or a unique prefix of it of at least 4 characters
(a short id, as git and restic take); a prefix of several jobs' ids fails
naming them.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.run(cmd.Context(), a, args[0])
		},
	}
	cmd.Flags().BoolVar(&c.json, "json", false, "print the job as JSON")
	return cmd
}

func (c *jobCmd) run(ctx context.Context, a *app, id string) error {
	cl, closeConn, err := a.catalogClient(ctx, bus.RoleRequester)
	if err != nil {
		return err
	}
	defer closeConn()
	j, err := cl.ResolveJob(ctx, id)
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(a, j)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "job\t%s\n", j.ID)
	fmt.Fprintf(tw, "status\t%s\n", j.Status)
	fmt.Fprintf(tw, "vm\t%s (uuid %s, moref %s)\n", dash(j.VM.Name), dash(j.VM.UUID), dash(j.VM.Moref))
	fmt.Fprintf(tw, "repository\t%s\n", dash(j.Repository))
	fmt.Fprintf(tw, "requested\t%s by %s\n", dash(j.RequestedType), dash(j.RequestedBy))
	fmt.Fprintf(tw, "attempt\t%d\n", j.Attempt)
	fmt.Fprintf(tw, "created\t%s\n", fmtTime(j.CreatedAt))
	fmt.Fprintf(tw, "started\t%s\n", fmtTime(j.StartedAt))
	fmt.Fprintf(tw, "finished\t%s\n", fmtTime(j.FinishedAt))
	if f := j.Failure; f != nil {
		fmt.Fprintf(tw, "reason\t%s (attempt %d, retryable %t)\n", f.Reason, f.Attempt, f.Retryable)
		fmt.Fprintf(tw, "message\t%s\n", f.Message)
	}
	if p := j.Progress; p != nil {
		fmt.Fprintf(tw, "progress\t%s of %s at %s\n", fmtBytes(p.BytesDone), fmtBytes(p.BytesTotal), fmtTime(p.Time))
	}
	if p := j.Prune; p != nil {
		switch p.State {
		case backup.PruneDone:
			fmt.Fprintf(tw, "pruned\t%s (asked %s)\n", fmtTime(p.PrunedAt), fmtTime(p.RequestedAt))
		default:
			fmt.Fprintf(tw, "prune\t%s since %s: the hub finishes it\n", p.State, fmtTime(p.RequestedAt))
		}
	}
	fmt.Fprintf(tw, "events\t%d\n", len(j.EventIDs))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(j.Disks) == 0 {
		return nil
	}
	// The table holds the short columns (it fits 100 columns); the long
	// values of each disk (uuid, change id, paths) follow it, one per line.
	fmt.Fprintln(a.stdout)
	tw = tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DISK\tTYPE\tREASON\tCAPACITY\tREAD\tWRITTEN\tSIZE")
	for _, d := range j.Disks {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Disk.Key, dash(d.BackupType), cut(dash(d.Reason), 24),
			fmtBytes(d.Disk.CapacityBytes), fmtBytes(d.BytesRead), fmtBytes(d.BytesWritten), fmtBytes(d.ActualSizeBytes))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, d := range j.Disks {
		fmt.Fprintf(a.stdout, "\ndisk %d\n", d.Disk.Key)
		tw = tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "  uuid\t%s\n", dash(d.Disk.UUID))
		if d.BaseChangeID != "" {
			fmt.Fprintf(tw, "  base change id\t%s\n", d.BaseChangeID)
		}
		fmt.Fprintf(tw, "  change id\t%s\n", dash(d.ChangeID))
		fmt.Fprintf(tw, "  target\t%s\n", dash(d.Target))
		fmt.Fprintf(tw, "  backing\t%s\n", dash(d.Backing))
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}
