package repository

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/sendense/internal/testutil"
)

// qemuIO runs qemu-io commands on a qcow2 file (writes allocate only the
// clusters they touch, as a backup's changed extents do).
func qemuIO(t *testing.T, path string, cmds ...string) {
	t.Helper()
	testutil.RequireTool(t, "qemu-io")
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	if out, err := exec.Command("qemu-io", append(args, path)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io %v %s: %v: %s", cmds, path, err, out)
	}
}

// pruneChain is a chain of points of one disk, with a raw copy of each
// point taken right after it was written (what it must read as forever).
type pruneChain struct {
	r    *Repo
	ctx  context.Context
	jobs []string
	refs map[string]string // job -> raw copy
}

// newPruneChain makes n points: a full, then incrementals each on the
// previous one, each writing its own pattern at a few offsets (some over
// the previous points' data) and zeroing one range.
func newPruneChain(t *testing.T, n int) *pruneChain {
	t.Helper()
	r, ctx := newRepo(t)
	c := &pruneChain{r: r, ctx: ctx, refs: map[string]string{}}
	refs := t.TempDir()
	for i := range n {
		job := fmt.Sprintf("j%d", i)
		backing := ""
		if i > 0 {
			backing = c.jobs[i-1]
		}
		p := mustCreate(t, r, ctx, job, backing)
		qemuIO(t, p,
			fmt.Sprintf("write -P 0x%02x %d 65536", 0x11*(i+1), (i%4)*65536),
			fmt.Sprintf("write -P 0x%02x %d 4096", 0x20+i, 1<<20+i*8192),
			fmt.Sprintf("write -z %d 65536", ((i+2)%4)*65536),
			fmt.Sprintf("write -P 0x%02x %d 512", 0x40+i, testCapacity-512),
		)
		c.jobs = append(c.jobs, job)
		ref := filepath.Join(refs, job+".raw")
		if err := r.Restore(ctx, p, ref, "raw"); err != nil {
			t.Fatal(err)
		}
		c.refs[job] = ref
	}
	return c
}

func (c *pruneChain) path(t *testing.T, job string) string {
	t.Helper()
	p, err := c.r.Path(testVM, 2000, job)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// requireKept checks that each job's file reads as its point did.
func (c *pruneChain) requireKept(t *testing.T, jobs ...string) {
	t.Helper()
	for _, j := range jobs {
		mustEqual(t, c.r, c.path(t, j), c.refs[j])
		if err := c.r.Check(c.ctx, c.path(t, j)); err != nil && !errors.Is(err, ErrLeaks) {
			t.Errorf("check %s: %v", j, err)
		}
	}
}

func (c *pruneChain) requireGone(t *testing.T, job string) {
	t.Helper()
	if _, err := os.Lstat(c.path(t, job)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s.qcow2 still there: %v", job, err)
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(c.path(t, job)), job+ManifestExt)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s.manifest still there: %v", job, err)
	}
}

func (c *pruneChain) backing(t *testing.T, job string) string {
	t.Helper()
	b, err := readBackingName(c.path(t, job))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (c *pruneChain) manifest(t *testing.T, job string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(filepath.Dir(c.path(t, job)), job+ManifestExt), []byte("m"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestPruneOps: each operation leaves every kept point reading as before
// (qemu-img compare with the copy taken when it was written), with the
// chain's backing names as Create writes them, the removed point's file
// and manifest gone, and is a no-op when repeated.
func TestPruneOps(t *testing.T) {
	c := newPruneChain(t, 5) // j0 <- j1 <- j2 <- j3 <- j4
	for _, j := range c.jobs {
		c.manifest(t, j)
	}
	steps := []struct {
		step        PruneStep
		kept        []string
		child, back string
	}{
		// The oldest full: j1 is merged into it and takes its place.
		{PruneStep{JobID: "j0", Op: OpMerge, Child: "j1"}, []string{"j1", "j2", "j3", "j4"}, "j1", ""},
		// A middle point: j3 is rebased onto j1.
		{PruneStep{JobID: "j2", Op: OpRebase, Child: "j3", Parent: "j1"}, []string{"j1", "j3", "j4"}, "j3", "j1.qcow2"},
		// The newest point.
		{PruneStep{JobID: "j4", Op: OpDelete}, []string{"j1", "j3"}, "j3", "j1.qcow2"},
		// The oldest again, then the only point.
		{PruneStep{JobID: "j1", Op: OpMerge, Child: "j3"}, []string{"j3"}, "j3", ""},
		{PruneStep{JobID: "j3", Op: OpDelete}, nil, "", ""},
	}
	for _, s := range steps {
		s.step.VMUUID, s.step.DiskKey = testVM, 2000
		for range 2 { // the second time finds it done
			if err := c.r.Prune(c.ctx, s.step); err != nil {
				t.Fatalf("%+v: %v", s.step, err)
			}
		}
		c.requireGone(t, s.step.JobID)
		c.requireKept(t, s.kept...)
		if s.child != "" {
			if got := c.backing(t, s.child); got != s.back {
				t.Errorf("after %s of %s: %s backs onto %q, want %q", s.step.Op, s.step.JobID, s.child, got, s.back)
			}
		}
		for _, j := range s.kept {
			if _, err := os.Stat(filepath.Join(filepath.Dir(c.path(t, j)), j+ManifestExt)); err != nil {
				t.Errorf("manifest of kept %s: %v", j, err)
			}
		}
	}
}

// TestPruneResumes: an operation stopped at any of its steps (the hook
// fails there, as a crash would stop it) leaves every point that is still
// in the chain reading as before, and a second Prune finishes it.
func TestPruneResumes(t *testing.T) {
	for _, tc := range []struct {
		op    string
		steps []string
	}{
		{OpMerge, []string{"commit", "committed", "rename", "renamed"}},
		{OpRebase, []string{"rebase", "rebased", "delete", "deleted"}},
		{OpDelete, []string{"delete", "deleted"}},
	} {
		for _, at := range tc.steps {
			t.Run(tc.op+"/"+at, func(t *testing.T) {
				c := newPruneChain(t, 4)
				step := PruneStep{VMUUID: testVM, DiskKey: 2000}
				var kept []string
				switch tc.op {
				case OpMerge:
					step.JobID, step.Op, step.Child, kept = "j0", OpMerge, "j1", []string{"j1", "j2", "j3"}
				case OpRebase:
					step.JobID, step.Op, step.Child, step.Parent, kept = "j1", OpRebase, "j2", "j0", []string{"j0", "j2", "j3"}
				case OpDelete:
					step.JobID, step.Op, kept = "j3", OpDelete, []string{"j0", "j1", "j2"}
				}
				stop := errors.New("stopped at " + at)
				ctx := WithPruneHook(c.ctx, func(s string) error {
					if s == at {
						return stop
					}
					return nil
				})
				if err := c.r.Prune(ctx, step); !errors.Is(err, stop) {
					t.Fatalf("prune stopped at %s: %v", at, err)
				}
				c.requireKept(t, kept...) // mid-way: every kept point reads as before
				if err := c.r.Prune(c.ctx, step); err != nil {
					t.Fatalf("resume: %v", err)
				}
				c.requireGone(t, step.JobID)
				c.requireKept(t, kept...)
			})
		}
	}
}

// TestPruneRefuses: bad steps and a chain being read are refused, and
// nothing changes.
func TestPruneRefuses(t *testing.T) {
	c := newPruneChain(t, 3)
	for _, tc := range []struct {
		step PruneStep
		want error
	}{
		{PruneStep{JobID: "j0", Op: "squash"}, ErrInvalidID},
		{PruneStep{JobID: "j0", Op: OpMerge}, ErrInvalidID},
		{PruneStep{JobID: "j1", Op: OpRebase, Child: "j2"}, ErrInvalidID},
		{PruneStep{JobID: "../j1", Op: OpDelete}, ErrInvalidID},
		{PruneStep{JobID: "j0", Op: OpMerge, Child: "j0"}, ErrInvalidID},
		{PruneStep{JobID: "j1", Op: OpMerge, Child: "j2"}, ErrPruneState},                // j1 is no full
		{PruneStep{JobID: "j0", Op: OpMerge, Child: "j2"}, ErrPruneState},                // j2 does not back onto j0
		{PruneStep{JobID: "j1", Op: OpRebase, Child: "j2", Parent: "j9"}, ErrPruneState}, // no such parent
		{PruneStep{JobID: "j0", Op: OpMerge, Child: "j7"}, ErrPruneState},                // no such child
		{PruneStep{JobID: "j1", Op: OpDelete}, ErrIsBacking},                             // j2 backs onto it
	} {
		tc.step.VMUUID, tc.step.DiskKey = testVM, 2000
		if err := c.r.Prune(c.ctx, tc.step); !errors.Is(err, tc.want) {
			t.Errorf("%+v: %v, want %v", tc.step, err, tc.want)
		}
	}
	e := mustExport(t, c.r, c.ctx, c.path(t, "j2"), ExportOptions{ReadOnly: true})
	if err := c.r.Prune(c.ctx, PruneStep{VMUUID: testVM, DiskKey: 2000, JobID: "j0", Op: OpMerge, Child: "j1"}); !errors.Is(err, ErrBusy) {
		t.Errorf("prune while a point is exported: %v, want ErrBusy", err)
	}
	if err := e.Close(c.ctx); err != nil {
		t.Fatal(err)
	}
	c.requireKept(t, c.jobs...)
}

// TestPruneKilledMidway: qemu-img commit (merge) and qemu-img rebase,
// killed with SIGKILL while they write hundreds of MiB, leave the child
// reading as its point over the file it still backs onto; Prune then
// finishes and every kept point reads as before.
func TestPruneKilledMidway(t *testing.T) {
	if testing.Short() {
		t.Skip("writes hundreds of MiB")
	}
	for _, op := range []string{OpMerge, OpRebase} {
		t.Run(op, func(t *testing.T) {
			r, ctx := newRepo(t)
			const size = 512 << 20
			refs := t.TempDir()
			c := &pruneChain{r: r, ctx: ctx, refs: map[string]string{}}
			// j0: a full with a little data; j1 on it; j2 on j1. The
			// point removed holds (merge: its child holds) 384 MiB, so
			// qemu-img writes for a while.
			big := fmt.Sprintf("write -P 0x5a 0 %d", 384<<20)
			writes := map[string][]string{
				"j0": {"write -P 0x01 0 1M"},
				"j1": {"write -P 0x02 4M 1M"},
				"j2": {"write -P 0x03 500M 1M"},
			}
			if op == OpMerge {
				writes["j1"] = append(writes["j1"], big)
			} else {
				writes["j1"] = []string{big, "write -P 0x02 4M 1M"}
			}
			for i, job := range []string{"j0", "j1", "j2"} {
				backing := ""
				if i > 0 {
					backing = c.jobs[i-1]
				}
				p, err := r.Create(ctx, testVM, 2000, job, size, backing)
				if err != nil {
					t.Fatal(err)
				}
				qemuIO(t, p, writes[job]...)
				c.jobs = append(c.jobs, job)
				c.refs[job] = filepath.Join(refs, job+".raw")
				if err := r.Restore(ctx, p, c.refs[job], "raw"); err != nil {
					t.Fatal(err)
				}
			}
			var args []string
			var grows, child string
			step := PruneStep{VMUUID: testVM, DiskKey: 2000}
			if op == OpMerge {
				child, grows = "j1", "j0"
				args = []string{"commit", "-d", "-f", "qcow2", c.path(t, "j1")}
				step.JobID, step.Op, step.Child = "j0", OpMerge, "j1"
			} else {
				child, grows = "j2", "j2"
				args = []string{"rebase", "-f", "qcow2", "-b", "j0.qcow2", "-F", "qcow2", c.path(t, "j2")}
				step.JobID, step.Op, step.Child, step.Parent = "j1", OpRebase, "j2", "j0"
			}
			start := allocated(t, c.path(t, grows))
			cmd := exec.Command("qemu-img", args...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Kill it once it has written 64 MiB into the file it fills
			// (polling the file's allocation, not a fixed sleep).
			deadline := time.Now().Add(2 * time.Minute)
			for allocated(t, c.path(t, grows)) < start+64<<20 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			_ = cmd.Process.Signal(syscall.SIGKILL)
			err := cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("qemu-img %s was not killed mid-way: %v", op, err)
			}
			t.Logf("qemu-img %s killed after %d MiB written into %s", op, (allocated(t, c.path(t, grows))-start)>>20, grows)
			c.requireKept(t, child) // the child over the file it backs onto
			if got := c.backing(t, child); (op == OpMerge && got != "j0.qcow2") || (op == OpRebase && got != "j1.qcow2") {
				t.Errorf("%s backs onto %q after the kill", child, got)
			}
			if err := r.Prune(ctx, step); err != nil {
				t.Fatalf("resume: %v", err)
			}
			c.requireGone(t, step.JobID)
			if op == OpMerge {
				c.requireKept(t, "j1", "j2")
			} else {
				c.requireKept(t, "j0", "j2")
			}
		})
	}
}

// allocated is the bytes allocated to a file.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestPruneNoSpace: a merge or rebase on a full file system fails with
// ErrNoSpace, every point still reads as before, and once there is space
// again the same Prune finishes.
func TestPruneNoSpace(t *testing.T) {
	testutil.RequireTool(t, "qemu-img")
	for _, op := range []string{OpMerge, OpRebase} {
		t.Run(op, func(t *testing.T) {
			root := testutil.Tmpfs(t, 96<<20)
			r, err := Open(filepath.Join(root, "repo"))
			if err != nil {
				t.Fatal(err)
			}
			ctx := testCtx(t)
			t.Cleanup(func() { _ = r.Close(context.Background()) })
			const size = 64 << 20
			c := &pruneChain{r: r, ctx: ctx, refs: map[string]string{}}
			refs := t.TempDir()
			writes := map[string]string{"j0": "write -P 0x01 0 1M", "j1": "write -P 0x02 2M 24M", "j2": "write -P 0x03 40M 1M"}
			for i, job := range []string{"j0", "j1", "j2"} {
				backing := ""
				if i > 0 {
					backing = c.jobs[i-1]
				}
				p, err := r.Create(ctx, testVM, 2000, job, size, backing)
				if err != nil {
					t.Fatal(err)
				}
				qemuIO(t, p, writes[job])
				c.jobs = append(c.jobs, job)
				c.refs[job] = filepath.Join(refs, job+".raw")
				if err := r.Restore(ctx, p, c.refs[job], "raw"); err != nil {
					t.Fatal(err)
				}
			}
			step := PruneStep{VMUUID: testVM, DiskKey: 2000, JobID: "j0", Op: OpMerge, Child: "j1"}
			kept := []string{"j1", "j2"}
			if op == OpRebase {
				step = PruneStep{VMUUID: testVM, DiskKey: 2000, JobID: "j1", Op: OpRebase, Child: "j2", Parent: "j0"}
				kept = []string{"j0", "j2"}
			}
			filler := testutil.FillFS(t, root, 1<<20)
			if err := r.Prune(ctx, step); !errors.Is(err, ErrNoSpace) {
				t.Fatalf("prune on a full file system: %v, want ErrNoSpace", err)
			}
			c.requireKept(t, kept...) // nothing lost (the removed point is half-merged)
			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
			if err := r.Prune(ctx, step); err != nil {
				t.Fatalf("prune with space again: %v", err)
			}
			c.requireGone(t, step.JobID)
			c.requireKept(t, kept...)
		})
	}
}

// TestPruneWhileQemuImgRuns: a qemu-img commit left running by a hub that
// died (it is not the hub's child any more) holds qemu's image lock, so a
// resumed Prune fails instead of renaming under it, and finishes once that
// qemu-img is done.
func TestPruneWhileQemuImgRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("writes hundreds of MiB")
	}
	r, ctx := newRepo(t)
	const size = 512 << 20
	refs := t.TempDir()
	c := &pruneChain{r: r, ctx: ctx, refs: map[string]string{}}
	writes := map[string]string{"j0": "write -P 0x01 0 1M", "j1": fmt.Sprintf("write -P 0x5a 0 %d", 384<<20), "j2": "write -P 0x03 500M 1M"}
	for i, job := range []string{"j0", "j1", "j2"} {
		backing := ""
		if i > 0 {
			backing = c.jobs[i-1]
		}
		p, err := r.Create(ctx, testVM, 2000, job, size, backing)
		if err != nil {
			t.Fatal(err)
		}
		qemuIO(t, p, writes[job])
		c.jobs = append(c.jobs, job)
		c.refs[job] = filepath.Join(refs, job+".raw")
		if err := r.Restore(ctx, p, c.refs[job], "raw"); err != nil {
			t.Fatal(err)
		}
	}
	start := allocated(t, c.path(t, "j0"))
	cmd := exec.Command("qemu-img", "commit", "-d", "-f", "qcow2", c.path(t, "j1"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for allocated(t, c.path(t, "j0")) < start+16<<20 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	step := PruneStep{VMUUID: testVM, DiskKey: 2000, JobID: "j0", Op: OpMerge, Child: "j1"}
	err := r.Prune(ctx, step)
	running := cmd.ProcessState == nil
	if werr := cmd.Wait(); werr != nil {
		t.Fatalf("the other qemu-img commit: %v", werr)
	}
	if err == nil || !strings.Contains(err.Error(), "lock") {
		t.Fatalf("prune while another qemu-img commit runs (running %t): %v, want a lock error", running, err)
	}
	if _, err := os.Stat(c.path(t, "j0")); err != nil {
		t.Fatalf("j0 renamed or gone under a running qemu-img: %v", err)
	}
	if err := r.Prune(ctx, step); err != nil {
		t.Fatalf("prune once it is done: %v", err)
	}
	c.requireGone(t, "j0")
	c.requireKept(t, "j1", "j2")
}
