package hub_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/repository"
)

// depthChain makes a chain of depth files for one disk of size bytes in a
// new repository: a full holding data in its first and third quarters,
// then depth-1 incrementals, each rewriting 16 clusters of 64 KiB spread
// over the disk (a light day of guest writes). It returns the repository
// and the newest file.
func depthChain(tb testing.TB, size int64, depth int) (*repository.Repo, string) {
	tb.Helper()
	ctx := context.Background()
	repo, err := repository.Open(filepath.Join(tb.TempDir(), "repo"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = repo.Close(context.Background()) })
	var path, prev string
	for i := range depth {
		job := fmt.Sprintf("job-%03d", i)
		if path, err = repo.Create(ctx, testVM, testDisk, job, size, prev); err != nil {
			tb.Fatal(err)
		}
		args := []string{"-f", "qcow2"}
		if i == 0 {
			args = append(args, "-c", quarter("write -P 0xab", 0, size), "-c", quarter("write -P 0xcd", 2, size))
		} else {
			for k := range int64(16) {
				off := (int64(i)*7919 + k*size/16) % size / 65536 * 65536
				args = append(args, "-c", fmt.Sprintf("write -P %d %d 65536", i%250+1, off))
			}
		}
		if out, err := exec.Command("qemu-io", append(args, path)...).CombinedOutput(); err != nil {
			tb.Fatalf("qemu-io: %v: %s", err, out)
		}
		prev = job
	}
	return repo, path
}

// BenchmarkRestoreDepth restores the newest point of chains of depth 1,
// 10 and 100 of a 2 GiB disk (1 GiB of data), as `sendense restore` does
// (a read-only qemu-nbd export of the chain, read by nbdcopy into a raw
// file) and, in the same run, with `qemu-img convert` of the chain's
// newest file, and prints both and their ratio per depth. Retention keeps
// chains short; this shows what depth costs when it does not.
//
//	make bench-restore-depth
func BenchmarkRestoreDepth(b *testing.B) {
	const size = 2 << 30
	for _, tool := range []string{"qemu-img", "qemu-io", "qemu-nbd", "nbdcopy"} {
		testutil.RequireTool(b, tool)
	}
	for _, depth := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			repo, top := depthChain(b, size, depth)
			ctx := context.Background()
			exp, err := repo.Export(ctx, top, repository.ExportOptions{ReadOnly: true, SocketDir: testutil.SocketDir(b)})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = exp.Close(context.Background()) })
			dst := filepath.Join(b.TempDir(), "restore.raw")
			run := func(name string, args ...string) time.Duration {
				_ = os.Remove(dst)
				if f, err := os.Create(dst); err == nil {
					_ = f.Close()
				}
				start := time.Now()
				if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
					b.Fatalf("%s: %v: %s", name, err, out)
				}
				return time.Since(start)
			}
			var ours, convert time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				ours += run("nbdcopy", exp.URI(), dst)
				if i == 0 {
					b.StopTimer()
					if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "qcow2", dst, top).CombinedOutput(); err != nil {
						b.Fatalf("restore of depth %d differs from the chain: %v: %s", depth, err, out)
					}
					b.StartTimer()
				}
				convert += run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", top, dst)
			}
			b.StopTimer()
			n := float64(b.N)
			b.ReportMetric(ours.Seconds()/n, "restore-s/op")
			b.ReportMetric(convert.Seconds()/n, "convert-s/op")
			b.ReportMetric(ours.Seconds()/convert.Seconds(), "restore/convert")
			b.Logf("depth %3d, 2 GiB disk, 1 GiB data: restore (qemu-nbd+nbdcopy) %.2f s, qemu-img convert %.2f s, ratio %.2f",
				depth, ours.Seconds()/n, convert.Seconds()/n, ours.Seconds()/convert.Seconds())
		})
	}
}
