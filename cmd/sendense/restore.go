package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/manifest"
)

func init() { extraCommands = append(extraCommands, newRestoreCmd) }

type restoreCmd struct {
	jobID  string
	disk   int32
	to     string
	format string
	verify bool
	force  bool
	json   bool
}

// restoreLine is one line of `restore --json`: a disk written.
type restoreLine struct {
	JobID    string `json:"job_id"`
	Disk     int32  `json:"disk_key"`
	Path     string `json:"path"`
	Format   string `json:"format"`
	Bytes    int64  `json:"bytes"`
	Verified bool   `json:"verified"`
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
	f.StringVar(&c.jobID, "job", "", "job id of the backup, or a unique prefix of at least 4 characters (required)")
	f.Int32Var(&c.disk, "disk", -1, "device key of the disk (default: every disk)")
	f.StringVar(&c.to, "to", "", "output file, or directory for several disks (required)")
	f.StringVar(&c.format, "format", "raw", "raw or qcow2")
	f.BoolVar(&c.verify, "verify", false, "read the output back and compare it with the backup and with the manifest taken at backup time")
	f.BoolVar(&c.json, "json", false, `print NDJSON: {"job_id":…,"disk_key":…,"path":…,"format":…,"bytes":…,"verified":…} per disk written`)
	f.BoolVar(&c.force, "force", false, "overwrite output files that exist (default: refuse before writing anything)")
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
	job, err := catalog.NewClient(nc).ResolveJob(ctx, c.jobID)
	if err != nil {
		return err
	}
	c.jobID = job.ID
	if job.Status != backup.StatusCompleted {
		return fmt.Errorf("job %s is %s: only a completed backup can be restored", c.jobID, job.Status)
	}
	var disks []backup.Disk
	for _, d := range job.Disks {
		if c.disk < 0 || d.Disk.Key == c.disk {
			disks = append(disks, d)
		}
	}
	if len(disks) == 0 {
		return fmt.Errorf("job %s has no disk %d", c.jobID, c.disk)
	}
	dsts := make([]string, len(disks))
	for i, d := range disks {
		dsts[i] = c.to
		if len(disks) > 1 {
			dsts[i] = filepath.Join(c.to, strconv.Itoa(int(d.Disk.Key))+"."+c.format)
		}
		// Every output is checked before anything is written: a refused
		// restore leaves no file touched.
		if _, err := os.Lstat(dsts[i]); err == nil && !c.force {
			return fmt.Errorf("restore disk %d of job %s: %s exists; a restore does not overwrite without --force", d.Disk.Key, c.jobID, dsts[i])
		}
	}
	repo := repoapi.NewClient(nc)
	count := newProgressCounter(nil)
	pr := newPrinter(a.stdout, c.json)
	for _, d := range disks {
		count.setKind(d.Disk.Key, "restore")
		count.update(d.Disk.Key, 0, d.Disk.CapacityBytes, false) // the total and ETA count every disk from the start
	}
	outcome := "failed"
	defer func() { pr.Finish(count.summary("restore of job "+job.ID, outcome)) }()
	for i, d := range disks {
		if len(disks) > 1 {
			if err := os.MkdirAll(c.to, 0o750); err != nil {
				return err
			}
		}
		if err := c.restoreDisk(ctx, a, repo, job, d, dsts[i], count, pr); err != nil {
			return err
		}
	}
	outcome = "completed"
	return nil
}

func (c *restoreCmd) restoreDisk(ctx context.Context, a *app, repo *repoapi.Client, job backup.Job, d backup.Disk, dst string, count *progressCounter, pr printer) error {
	ref := repoapi.TargetRef{Repository: job.Repository, JobID: job.ID, VMUUID: job.VM.UUID, DiskKey: d.Disk.Key}
	exp, err := repo.OpenRestore(ctx, ref)
	if err != nil {
		return fmt.Errorf("export backup of disk %d of job %s: %w", d.Disk.Key, job.ID, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30e9)
		defer cancel()
		_ = repo.CloseRestore(cctx, exp.ExportID)
	}()
	src, cleanup, err := hub.LocalURI(ctx, exp, "", a.log)
	if err != nil {
		return fmt.Errorf("export of disk %d of job %s: %w", d.Disk.Key, job.ID, err)
	}
	defer cleanup()
	key, size := d.Disk.Key, exp.VirtualSize
	progress := func(pct int) {
		count.update(key, size*int64(pct)/100, size, false)
		count.sample() // this process counts a restore: the one sampler is its counter's
		pr.Update(count.status())
	}
	progress(0)
	// The export is read by nbdcopy (libnbd, many requests in flight,
	// holes kept): qemu-img's NBD client waits out each request's round
	// trip, which over a TLS export costs 10x (see docs/design.md, Restore
	// over TLS). qcow2 is converted from a raw scratch copy, locally.
	if c.format == "raw" {
		err = nbdcopy(ctx, src, dst, progress)
	} else {
		err = withScratch(dst, func(scratch string) error {
			if err := nbdcopy(ctx, src, scratch, progress); err != nil {
				return err
			}
			return qemuImg(ctx, "convert", "-f", "raw", "-O", c.format, scratch, dst)
		})
	}
	if err != nil {
		return fmt.Errorf("restore disk %d of job %s to %s: %w", d.Disk.Key, job.ID, dst, err)
	}
	count.ended(key, size, allocated(dst))
	count.sample()
	pr.Update(count.status())
	pr.Println(fmt.Sprintf("disk %d of job %s restored to %s (%s)", d.Disk.Key, job.ID, dst, fmtBytes(exp.VirtualSize)))
	if c.verify {
		var want *manifest.Manifest
		if d.ManifestSHA256 != "" {
			m, sum, err := repo.Manifest(ctx, ref)
			if err != nil {
				return fmt.Errorf("manifest of disk %d of job %s: %w", d.Disk.Key, job.ID, err)
			}
			if sum.String() != d.ManifestSHA256 {
				return fmt.Errorf("manifest of disk %d of job %s has SHA-256 %s, backup.completed says %s", d.Disk.Key, job.ID, sum, d.ManifestSHA256)
			}
			want = m
		}
		if err := verifyCopy(ctx, src, dst, c.format, want); err != nil {
			return fmt.Errorf("verify %s against the backup of disk %d: %w", dst, d.Disk.Key, err)
		}
		if want != nil {
			pr.Println(fmt.Sprintf("disk %d verified: identical to the backup, and to its manifest taken at backup time (%d chunks)", d.Disk.Key, len(want.Digests)))
		} else {
			pr.Println(fmt.Sprintf("disk %d verified: identical to the backup (made before manifests: no manifest to compare)", d.Disk.Key))
		}
	}
	return pr.Result(restoreLine{JobID: job.ID, Disk: d.Disk.Key, Path: dst, Format: c.format, Bytes: exp.VirtualSize, Verified: c.verify})
}

// nbdcopy copies the NBD export src into the raw file dst, which it
// creates or truncates first so no byte of an older file survives. With
// progress, nbdcopy's --progress=FD percentages ("N/100") are passed to it.
func nbdcopy(ctx context.Context, src, dst string, progress func(pct int)) error {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "nbdcopy", src, dst)
	var done chan struct{}
	if progress != nil {
		r, w, err := os.Pipe()
		if err != nil {
			return fmt.Errorf("nbdcopy progress pipe: %w", err)
		}
		defer r.Close()
		cmd.ExtraFiles = []*os.File{w} // fd 3 in nbdcopy
		cmd.Args = []string{"nbdcopy", "--progress=3", src, dst}
		done = make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				if n, ok := strings.CutSuffix(strings.TrimSpace(sc.Text()), "/100"); ok {
					if pct, err := strconv.Atoi(n); err == nil && pct >= 0 && pct <= 100 {
						progress(pct)
					}
				}
			}
		}()
		defer func() { <-done }()
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err = cmd.Start()
		_ = w.Close() // nbdcopy holds its copy; EOF when it exits
		if err == nil {
			err = cmd.Wait()
		}
		if err != nil {
			return fmt.Errorf("nbdcopy: %w: %s", err, bytes.TrimSpace(out.Bytes()))
		}
		return nil
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nbdcopy: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// allocated is the bytes path takes on disk (a sparse restore writes
// fewer than its size); 0 when unknown.
func allocated(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// verifyCopy compares dst (in format) with the export src: it copies the
// export again, with nbdcopy, into a sparse scratch file beside dst and
// has qemu-img compare the two locally, which names the first offset that
// differs. Streaming the export instead costs one round trip per request
// (nbdcopy to a pipe is synchronous), 50x slower over TLS. With want, the
// scratch copy (equal to dst by then) is also hashed per chunk and
// compared with the manifest the backup took, which names the first chunk
// that differs: bit rot in the repository, or a backup that wrote other
// bytes than it read, shows there.
func verifyCopy(ctx context.Context, src, dst, format string, want *manifest.Manifest) error {
	return withScratch(dst, func(scratch string) error {
		if err := nbdcopy(ctx, src, scratch, nil); err != nil {
			return fmt.Errorf("read the backup again: %w", err)
		}
		if err := qemuImg(ctx, "compare", "-f", "raw", "-F", format, scratch, dst); err != nil {
			return err
		}
		if want == nil {
			return nil
		}
		got, err := manifest.HashFile(scratch)
		if err != nil {
			return err
		}
		if i, differ := want.FirstMismatch(got); differ {
			return fmt.Errorf("chunk %d (offset %d, %d bytes) differs from the manifest taken at backup time", i, want.Offset(i), want.ChunkSize)
		}
		return nil
	})
}

// withScratch runs fn with the path of a new hidden file beside dst (the
// same file system, so as sparse as dst), removed afterwards.
func withScratch(dst string, fn func(path string) error) error {
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".scratch-")
	if err != nil {
		return err
	}
	_ = f.Close()
	defer os.Remove(f.Name())
	return fn(f.Name())
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
