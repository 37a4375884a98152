package repository

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sendense/sendense/internal/testutil"
)

// BenchmarkPruneMerge: removing the first full of a chain whose child is a
// 1 GiB incremental (1 GiB of data written into a 2 GiB disk) with Prune
// (qemu-img commit -d, a sync, the rename), against `qemu-img commit -d`
// of the same chain alone; the ratio is reported as prune/commit. The
// chain is made again for each iteration (not timed). Prune also fsyncs
// the merged file before the rename (crash safety), which the bare commit
// does not: most of the difference.
func BenchmarkPruneMerge(b *testing.B) {
	testutil.RequireTool(b, "qemu-img")
	testutil.RequireTool(b, "qemu-io")
	const size, data = 2 << 30, 1 << 30
	r, err := Open(filepath.Join(b.TempDir(), "repo"))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	newChain := func(i int) (full, child string) {
		b.Helper()
		f, c := fmt.Sprintf("f%d", i), fmt.Sprintf("c%d", i)
		fp, err := r.Create(ctx, testVM, 2000, f, size, "")
		if err != nil {
			b.Fatal(err)
		}
		cp, err := r.Create(ctx, testVM, 2000, c, size, f)
		if err != nil {
			b.Fatal(err)
		}
		for _, w := range []struct {
			path, cmd string
		}{{fp, "write -P 0x01 0 64M"}, {cp, fmt.Sprintf("write -P 0x02 32M %d", data)}} {
			if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", w.cmd, w.path).CombinedOutput(); err != nil {
				b.Fatalf("qemu-io: %v: %s", err, out)
			}
		}
		return f, c
	}
	var prune, commit time.Duration
	b.SetBytes(data)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		f, c := newChain(2 * i)
		f2, c2 := newChain(2*i + 1)
		b.StartTimer()
		start := time.Now()
		if err := r.Prune(ctx, PruneStep{VMUUID: testVM, DiskKey: 2000, JobID: f, Op: OpMerge, Child: c}); err != nil {
			b.Fatal(err)
		}
		prune += time.Since(start)
		b.StopTimer()
		cp, _ := r.Path(testVM, 2000, c2)
		start = time.Now()
		if out, err := exec.Command("qemu-img", "commit", "-d", "-f", "qcow2", cp).CombinedOutput(); err != nil {
			b.Fatalf("qemu-img commit: %v: %s", err, out)
		}
		commit += time.Since(start)
		for _, j := range []string{c, f2, c2} {
			p, _ := r.Path(testVM, 2000, j)
			_ = exec.Command("rm", "-f", p).Run()
		}
		b.StartTimer()
	}
	b.ReportMetric(prune.Seconds()/float64(b.N), "prune-s/op")
	b.ReportMetric(commit.Seconds()/float64(b.N), "commit-s/op")
	b.ReportMetric(prune.Seconds()/commit.Seconds(), "prune/commit")
}
