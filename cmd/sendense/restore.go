package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/store"
)

func init() { extraCommands = append(extraCommands, newRestoreCmd) }

type restoreCmd struct {
	jobID  string
	disk   int32
	to     string
	format string
	verify bool
}

func newRestoreCmd(a *app) *cobra.Command {
	c := &restoreCmd{}
	cmd := &cobra.Command{
		Use:   "restore --job ID --to PATH",
		Short: "Write a disk as it was at a backup, read through its QCOW2 chain",
		Long: "Write a disk as it was at a backup, read through its QCOW2 chain over NBD from the\n" +
			"repository service. Without --disk a single-disk job is written to PATH; a job with\n" +
			"several disks is written into the directory PATH as <disk-key>.<format>.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return c.run(cmd.Context(), a) },
	}
	f := cmd.Flags()
	f.StringVar(&c.jobID, "job", "", "job id of the backup (required)")
	f.Int32Var(&c.disk, "disk", -1, "device key of the disk (default: every disk)")
	f.StringVar(&c.to, "to", "", "output file, or directory for several disks (required)")
	f.StringVar(&c.format, "format", "raw", "raw or qcow2")
	f.BoolVar(&c.verify, "verify", false, "read the output back and compare it with the backup")
	_ = cmd.MarkFlagRequired("job")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

func (c *restoreCmd) run(ctx context.Context, a *app) error {
	if c.format != "raw" && c.format != "qcow2" {
		return fmt.Errorf("--format %q: want raw or qcow2", c.format)
	}
	nc, err := a.connect(ctx, bus.RoleAdmin)
	if err != nil {
		return err
	}
	defer nc.Close()
	job, err := catalog.NewClient(nc).Job(ctx, c.jobID)
	if err != nil {
		return fmt.Errorf("job %s: %w", c.jobID, err)
	}
	if job.Status != store.StatusCompleted {
		return fmt.Errorf("job %s is %s: only a completed backup can be restored", c.jobID, job.Status)
	}
	var disks []store.Disk
	for _, d := range job.Disks {
		if c.disk < 0 || d.Disk.Key == c.disk {
			disks = append(disks, d)
		}
	}
	if len(disks) == 0 {
		return fmt.Errorf("job %s has no disk %d", c.jobID, c.disk)
	}
	repo := hub.NewClient(nc)
	for _, d := range disks {
		dst := c.to
		if len(disks) > 1 {
			if err := os.MkdirAll(c.to, 0o750); err != nil {
				return err
			}
			dst = filepath.Join(c.to, strconv.Itoa(int(d.Disk.Key))+"."+c.format)
		}
		if err := c.restoreDisk(ctx, a, repo, job, d, dst); err != nil {
			return err
		}
	}
	return nil
}

func (c *restoreCmd) restoreDisk(ctx context.Context, a *app, repo *hub.Client, job store.Job, d store.Disk, dst string) error {
	ref := hub.TargetRef{Repository: job.Repository, JobID: job.ID, VMUUID: job.VM.UUID, DiskKey: d.Disk.Key}
	exp, err := repo.OpenRestore(ctx, ref)
	if err != nil {
		return fmt.Errorf("export backup of disk %d of job %s: %w", d.Disk.Key, job.ID, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30e9)
		defer cancel()
		_ = repo.CloseRestore(cctx, exp.ExportID)
	}()
	src, cleanup, err := exp.QemuImgSource(ctx, "", a.log)
	if err != nil {
		return fmt.Errorf("export of disk %d of job %s: %w", d.Disk.Key, job.ID, err)
	}
	defer cleanup()
	if err := qemuImg(ctx, "convert", "-f", "raw", "-O", c.format, src, dst); err != nil {
		return fmt.Errorf("restore disk %d of job %s to %s: %w", d.Disk.Key, job.ID, dst, err)
	}
	fmt.Fprintf(a.stdout, "disk %d of job %s restored to %s (%d bytes)\n", d.Disk.Key, job.ID, dst, exp.VirtualSize)
	if c.verify {
		if err := qemuImg(ctx, "compare", "-f", "raw", "-F", c.format, src, dst); err != nil {
			return fmt.Errorf("verify %s against the backup of disk %d: %w", dst, d.Disk.Key, err)
		}
		fmt.Fprintf(a.stdout, "disk %d verified: identical\n", d.Disk.Key)
	}
	return nil
}

func qemuImg(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("qemu-img %s: %w: %s", args[0], err, out)
		}
		return fmt.Errorf("qemu-img %s: %w", args[0], err)
	}
	return nil
}
