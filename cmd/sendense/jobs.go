package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
)

func init() { extraCommands = append(extraCommands, newJobsCmd) }

// jobsCmd lists jobs from the catalog service.
type jobsCmd struct {
	vm     string
	status string
	limit  int
	json   bool
}

func newJobsCmd(a *app) *cobra.Command {
	c := &jobsCmd{}
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "List backup jobs, newest first (asks the catalog service)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.run(cmd.Context(), a)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&c.vm, "vm", "", "only jobs of this VM (name, instance UUID or moref)")
	fs.StringVar(&c.status, "status", "", "only jobs with this status: "+strings.Join(backup.Statuses, ", "))
	fs.IntVar(&c.limit, "limit", 100, "at most N jobs (0: all)")
	fs.BoolVar(&c.json, "json", false, "print the jobs as a JSON array")
	return cmd
}

func (c *jobsCmd) run(ctx context.Context, a *app) error {
	if c.status != "" && !slices.Contains(backup.Statuses, c.status) {
		return fmt.Errorf("--status %q: want one of %s", c.status, strings.Join(backup.Statuses, ", "))
	}
	cl, closeConn, err := a.catalogClient(ctx, bus.RoleRequester)
	if err != nil {
		return err
	}
	defer closeConn()
	jobs, err := cl.Jobs(ctx, backup.JobFilter{VM: c.vm, Status: c.status, Limit: c.limit})
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(a, jobs)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tVM\tSTATUS\tATTEMPT\tDISKS\tREPOSITORY\tCREATED\tFINISHED\tREASON")
	for _, j := range jobs {
		reason := ""
		if j.Failure != nil {
			reason = j.Failure.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", j.ID, vmName(j), j.Status, j.Attempt, len(j.Disks),
			dash(j.Repository), fmtTime(j.CreatedAt), fmtTime(j.FinishedAt), dash(reason))
	}
	return tw.Flush()
}

// vmName is the name a person knows a job's VM by.
func vmName(j backup.Job) string {
	switch {
	case j.VM.Name != "":
		return j.VM.Name
	case j.VM.UUID != "":
		return j.VM.UUID
	}
	return dash(j.VM.Moref)
}
