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
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
)

func init() { extraCommands = append(extraCommands, newVerifyCmd) }

// verifyCmd asks the hub to verify completed backups against their
// manifests.
type verifyCmd struct {
	jobID      string
	vm         string
	all        bool
	repository string
	json       bool
}

func newVerifyCmd(a *app) *cobra.Command {
	c := &verifyCmd{}
	cmd := &cobra.Command{
		Use:   "verify --job ID | --vm VM | --all",
		Short: "Re-read completed backups through their chains and compare them with their manifests (admin)",
		Long: `Ask the hub's repository service (sendense.repo.verify, admin only) to verify
completed backups. For each disk of each selected backup it runs qemu-img check
on the file, checks that the manifest next to it (a SHA-256 per 1 MiB chunk,
taken while the backup read the snapshot) is the one backup.completed named,
then reads the point through its QCOW2 chain and compares every chunk with the
manifest. A failure names the first chunk that differs (its index and offset).

Backups made before manifests existed are checked with qemu-img only and shown
as no_manifest; they are never the base of an incremental.

The hub publishes a backup.verified event per job (ok / failed with the disk
and the first bad chunk); the catalog keeps each job's latest, and a point
whose latest verification failed is never the base of an incremental: the
next backup of that disk is a full (reason base_unverified).

Exits 0 when everything verified (or had no manifest), 2 when any disk failed
verification, 1 on an error (unknown job, no hub, an event not stored, ...).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return c.run(cmd.Context(), a) },
	}
	f := cmd.Flags()
	f.StringVar(&c.jobID, "job", "", "verify this job's backup (its id, or a unique prefix of at least 4 characters)")
	f.StringVar(&c.vm, "vm", "", "verify every completed backup of this VM (name, instance UUID or moref)")
	f.BoolVar(&c.all, "all", false, "verify every completed backup")
	f.StringVarP(&c.repository, "repository", "r", "", "only this repository (default: every repository of the hub)")
	f.BoolVar(&c.json, "json", false, "print the results as JSON")
	cmd.MarkFlagsMutuallyExclusive("job", "vm", "all")
	cmd.MarkFlagsOneRequired("job", "vm", "all")
	return cmd
}

func (c *verifyCmd) run(ctx context.Context, a *app) error {
	nc, err := a.connect(ctx, bus.RoleAdmin)
	if err != nil {
		return err
	}
	defer nc.Close()
	if c.jobID != "" {
		// A short id becomes the job's id; an ambiguous one is an error;
		// an unknown one goes to the hub, which names it (unknown job).
		j, err := catalog.NewClient(nc).ResolveJob(ctx, c.jobID)
		switch {
		case err == nil:
			c.jobID = j.ID
		case !errors.Is(err, backup.ErrNotFound):
			return fmt.Errorf("verify: %w", err)
		}
	}
	rep, err := repoapi.NewClient(nc).Verify(ctx, repoapi.VerifyRequest{JobID: c.jobID, VM: c.vm, All: c.all, Repository: c.repository})
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if c.json {
		err = writeJSON(a, rep)
	} else {
		err = printVerify(a.stdout, rep)
	}
	if err != nil {
		return err
	}
	if rep.Failed() {
		n := 0
		for _, r := range rep.Results {
			if r.Status == repoapi.VerifyFailed {
				n++
			}
		}
		return &exitError{code: 2, err: fmt.Errorf("%d of %d disks failed verification", n, len(rep.Results))}
	}
	if len(rep.PublishErrors) > 0 {
		// The catalog does not know these verifications: a failed base
		// would not be refused. Say so.
		return fmt.Errorf("verified, but backup.verified not stored: %s", strings.Join(rep.PublishErrors, "; "))
	}
	return nil
}

// printVerify prints one line per disk and a summary.
func printVerify(w io.Writer, rep repoapi.VerifyReply) error {
	counts := map[string]int{}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tVM\tDISK\tSTATUS\tREAD\tTIME\tDETAIL")
	for _, r := range rep.Results {
		counts[r.Status]++
		detail := r.Detail
		if r.Problem == repoapi.VerifyProblemData {
			detail = fmt.Sprintf("first bad chunk %d at offset %d (%d bytes): %s", r.ChunkIndex, r.ChunkOffset, r.ChunkSize, r.Detail)
		} else if r.Problem != "" {
			detail = r.Problem + ": " + r.Detail
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.JobID, r.VMUUID, r.DiskKey, r.Status, fmtBytes(r.BytesRead),
			r.Duration.Round(time.Millisecond), cut(detail, 160))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d disks verified: %d ok, %d failed, %d without manifest\n", len(rep.Results),
		counts[repoapi.VerifyOK], counts[repoapi.VerifyFailed], counts[repoapi.VerifyNoManifest])
	return err
}
