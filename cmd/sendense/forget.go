package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/retention"
)

func init() { extraCommands = append(extraCommands, newForgetCmd) }

// forgetTimeout bounds the forget request: the repository service allows
// itself 30 minutes (merging and rebasing read and write whole images).
const forgetTimeout = 31 * time.Minute

// forgetCmd applies a retention policy through the hub.
type forgetCmd struct {
	vm         string
	all        bool
	repository string
	policy     func() (retention.Policy, error)
	dryRun     bool
	json       bool
}

func newForgetCmd(a *app) *cobra.Command {
	c := &forgetCmd{}
	cmd := &cobra.Command{
		Use:   "forget (--vm VM | --all) --keep-… N [--protect JOB]... [--dry-run]",
		Short: "Remove backup points a retention policy does not keep (admin)",
		Long: `Apply a retention policy to the completed backups (points) of a VM, or of
every VM, in one repository, with restic's forget semantics: --keep-last N
keeps the N newest points; --keep-hourly/daily/weekly/monthly/yearly N keep
the newest point of each of the N newest hours, days, ISO weeks, months and
years that have one (in the hub's time zone), "unlimited" (or -1) meaning
all of them;
--protect JOB always keeps that job's point (a job id, or a unique prefix of
at least 4 characters; an unknown or ambiguous one is an error). A point is kept when any rule
keeps it; the others are removed. Give at least one --keep-… count: the
newest point is then always kept.

Removing a point never changes what a kept point restores: the first full
is merged into its child (qemu-img commit, then the merged file takes the
child's name), a middle point's child is rebased onto its parent (safe
qemu-img rebase) before the point's file is deleted, the newest is deleted.
The hub holds the VM's lease meanwhile, so no backup runs on the chain; it
refuses while a backup holds the lease or a restore of the VM is open. A
prune the hub could not finish (it stopped, the disk filled up) is finished
by the next forget or when the hub starts.

Prints each point, newest first: job id, time, keep or remove, and why.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.run(cmd.Context(), a)
		},
	}
	// A count that is no count (--keep-last -2, --keep-daily many) is a
	// usage error like a missing policy: exit 2.
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: 2, err: fmt.Errorf("forget: %w", err)}
	})
	fs := cmd.Flags()
	fs.StringVar(&c.vm, "vm", "", "the VM: its name or instance UUID")
	fs.BoolVar(&c.all, "all", false, "every VM with backups in the repository")
	fs.StringVarP(&c.repository, "repository", "r", "default", "the repository")
	c.policy = retentionFlags(cmd)
	fs.BoolVar(&c.dryRun, "dry-run", false, "only print what would be kept and removed")
	fs.BoolVar(&c.json, "json", false, "print the reply as JSON")
	return cmd
}

func (c *forgetCmd) run(ctx context.Context, a *app) error {
	if (c.vm == "") == !c.all {
		return &exitError{code: 2, err: errors.New("forget: give --vm VM or --all")}
	}
	policy, err := c.policy()
	if err != nil {
		return &exitError{code: 2, err: fmt.Errorf("forget: %w", err)}
	}
	nc, err := a.connect(ctx, bus.RoleAdmin)
	if err != nil {
		return err
	}
	defer nc.Close()
	if policy.Protect, err = resolveJobIDs(ctx, catalog.NewClient(nc), "--protect", policy.Protect); err != nil {
		return fmt.Errorf("forget: %w", err)
	}
	cl := repoapi.NewClient(nc)
	cl.Timeout = forgetTimeout
	rep, err := cl.Forget(ctx, repoapi.ForgetRequest{VM: c.vm, All: c.all, Repository: c.repository, Policy: policy, DryRun: c.dryRun})
	if err != nil {
		return fmt.Errorf("forget: %w", err)
	}
	if c.json {
		err = writeJSON(a, rep)
	} else {
		err = printForget(a.stdout, rep)
	}
	if err != nil {
		return err
	}
	for _, v := range rep.VMs {
		if v.Error != "" {
			return &exitError{code: 1, err: fmt.Errorf("forget: vm %s: %s", vmLabel(v), v.Error)}
		}
	}
	return nil
}

// printForget prints a table per VM, like restic forget.
func printForget(w io.Writer, rep repoapi.ForgetReply) error {
	for i, v := range rep.VMs {
		if i > 0 {
			fmt.Fprintln(w)
		}
		keep, remove := 0, 0
		for _, p := range v.Points {
			if p.Keep {
				keep++
			} else {
				remove++
			}
		}
		verb := "removed"
		if rep.DryRun {
			verb = "would remove"
		}
		fmt.Fprintf(w, "vm %s in repository %s: %d points, keep %d, %s %d\n", vmLabel(v), rep.Repository, len(v.Points), keep, verb, remove)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "JOB\tTIME\tACTION\tREASONS")
		for _, p := range v.Points {
			action := "keep"
			switch {
			case p.Keep:
			case p.Removed:
				action = "removed"
			case rep.DryRun:
				action = "remove"
			default:
				action = "remove (not done)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.JobID, fmtTime(p.Time), action, strings.Join(p.Reasons, ", "))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if v.Error != "" {
			fmt.Fprintf(w, "error: %s\n", v.Error)
		}
	}
	if len(rep.VMs) == 0 {
		_, err := fmt.Fprintf(w, "no completed backups in repository %s\n", rep.Repository)
		return err
	}
	return nil
}

func vmLabel(v repoapi.ForgetVM) string {
	if v.VM.Name != "" {
		return v.VM.Name + " (" + v.VM.UUID + ")"
	}
	return v.VM.UUID
}
