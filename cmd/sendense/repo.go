package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/bus"
)

func init() { extraCommands = append(extraCommands, newRepoCmd) }

func newRepoCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "repo",
		Short: "Maintain the hub's repositories (admin)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newRepoCheckCmd(a))
	return cmd
}

// repoCheckTimeout bounds the check's request: the repository service
// allows itself 2 minutes for it.
const repoCheckTimeout = 3 * time.Minute

// repoCheckCmd asks the hub to check its repositories against the catalog.
type repoCheckCmd struct {
	repository string
	dryRun     bool
	json       bool
}

func newRepoCheckCmd(a *app) *cobra.Command {
	c := &repoCheckCmd{}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check every completed backup's file against the catalog, and remove orphan files",
		Long: `Ask the hub's repository service (sendense.repo.check, admin only) to
check its repositories against the catalog:

  - every disk of every completed job must have its file, and the file's
    backing file must be the file of the job the catalog names as its base
    (none for a full); each disk that does not is a problem;
  - files that are no completed backup, no open target and no target of a
    job holding its VM's lease, last modified more than the grace (10 min)
    ago, are orphans (partial files of failed attempts, temporary files of
    crashed creates): they are removed, or only listed with --dry-run.

Orphans are looked for only while the catalog has applied every event in
BACKUP_EVENTS; otherwise the report says why they were skipped. Exits 1
when a problem is found.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.run(cmd.Context(), a)
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&c.repository, "repository", "r", "", "only this repository (default: every repository of the hub)")
	fs.BoolVar(&c.dryRun, "dry-run", false, "list orphan files without removing them")
	fs.BoolVar(&c.json, "json", false, "print the report as JSON")
	return cmd
}

func (c *repoCheckCmd) run(ctx context.Context, a *app) error {
	nc, err := a.connect(ctx, bus.RoleAdmin)
	if err != nil {
		return err
	}
	defer nc.Close()
	cl := repoapi.NewClient(nc)
	cl.Timeout = repoCheckTimeout
	rep, err := cl.Check(ctx, repoapi.CheckRequest{Repository: c.repository, DryRun: c.dryRun})
	if err != nil {
		return fmt.Errorf("check repositories: %w", err)
	}
	if c.json {
		err = writeJSON(a, rep)
	} else {
		err = printCheck(a.stdout, rep)
	}
	if err != nil {
		return err
	}
	if n := len(rep.Problems); n > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d of %d completed disks have a problem", n, rep.Disks)}
	}
	return nil
}

// printCheck prints a check report as a summary and two tables.
func printCheck(w io.Writer, rep repoapi.CheckReply) error {
	mode := ""
	if rep.DryRun {
		mode = " (dry run)"
	}
	fmt.Fprintf(w, "repositories %s%s: %d completed disks checked, %d problems\n",
		strings.Join(rep.Repositories, ", "), mode, rep.Disks, len(rep.Problems))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(rep.Problems) > 0 {
		fmt.Fprintln(tw, "REPOSITORY\tJOB\tVM\tDISK\tPROBLEM\tDETAIL")
		for _, p := range rep.Problems {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", p.Repository, p.JobID, p.VMUUID, p.DiskKey, p.Problem, cut(p.Detail, 120))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if rep.OrphansSkipped != "" {
		_, err := fmt.Fprintf(w, "orphans not looked for: %s\n", rep.OrphansSkipped)
		return err
	}
	var removed, freed int64
	for _, o := range rep.Orphans {
		if o.Removed {
			removed++
			freed += o.Bytes
		}
	}
	fmt.Fprintf(w, "%d orphan files, %d removed (%s freed)\n", len(rep.Orphans), removed, fmtBytes(freed))
	if len(rep.Orphans) == 0 {
		return nil
	}
	fmt.Fprintln(tw, "REPOSITORY\tJOB\tVM\tDISK\tSIZE\tMODIFIED\tSTATE\tPATH")
	for _, o := range rep.Orphans {
		state := "removed"
		switch {
		case rep.DryRun:
			state = "would remove"
		case !o.Removed:
			state = "kept: " + o.Kept
		}
		job := o.JobID
		if o.Temp {
			job += " (temp)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", o.Repository, job, o.VMUUID, o.DiskKey, fmtBytes(o.Bytes),
			fmtTime(o.ModTime), cut(state, 60), o.Path)
	}
	return tw.Flush()
}

// fmtBytes prints n with a binary unit.
func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// fmtRate is a rate in bytes per second as fmtBytes prints it, "/s" added;
// the one rounding of every printed rate.
func fmtRate(bytesPerSec float64) string {
	return fmtBytes(int64(math.Round(bytesPerSec))) + "/s"
}
