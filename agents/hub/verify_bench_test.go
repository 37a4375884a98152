package hub_test

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/manifest"
	"github.com/sendense/sendense/repository"
	"github.com/sendense/sendense/schemas"
)

// BenchmarkVerify verifies the top of a two-link chain (a full of a 1 GiB
// disk, half of it random data in 1 MiB runs, and an incremental rewriting
// 5% of it) the way sendense.repo.verify does (qemu-img check, the
// manifest, the point read through a read-only qemu-nbd export and hashed
// per 1 MiB chunk), and compares it in the same iteration with qemu-img
// compare of the same chain against the raw image it was made from (the
// check a verification without manifests needs: a second copy of every
// point). It reports both times and their ratio (ours / qemu-img compare).
//
//	go test ./agents/hub -run '^$' -bench BenchmarkVerify -benchtime 3x -v
func BenchmarkVerify(b *testing.B) {
	for _, tool := range []string{"qemu-img", "qemu-nbd"} {
		testutil.RequireTool(b, tool)
	}
	const size = 1 << 30
	dir := b.TempDir()
	repo, err := repository.Open(filepath.Join(dir, "repo"))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	raw := filepath.Join(dir, "disk.raw")
	rng := rand.New(rand.NewPCG(11, 12))
	writeBenchRaw(b, raw, size, rng, 0.5)
	full, err := repo.Create(ctx, testVM, testDisk, "job-full", size, "")
	if err != nil {
		b.Fatal(err)
	}
	run(b, dir, "qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", raw, full)
	writeBenchRaw(b, raw, size, rng, 0.05) // the guest rewrites 5%
	incPath, err := repo.Path(testVM, testDisk, "job-inc")
	if err != nil {
		b.Fatal(err)
	}
	// An overlay holding only the clusters that differ from the full.
	run(b, filepath.Dir(incPath), "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-B", "job-full.qcow2", "-F", "qcow2", raw, incPath)
	m, err := manifest.HashFile(raw)
	if err != nil {
		b.Fatal(err)
	}
	mpath, _ := repo.ManifestPath(testVM, testDisk, "job-inc")
	sum, err := manifest.Write(mpath, m)
	if err != nil {
		b.Fatal(err)
	}
	svc, err := hub.NewRepoService(hub.RepoOptions{Repositories: map[string]*repository.Repo{testRepo: repo},
		SocketDir: testutil.SocketDir(b), Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	job := backup.Job{ID: "job-inc", VM: schemas.VMRef{UUID: testVM}, Repository: testRepo, Status: backup.StatusCompleted}
	disk := backup.Disk{Disk: schemas.DiskRef{Key: testDisk, UUID: "6000c291-1c2d-4e5f-8a9b-0c1d2e3f4a5b", CapacityBytes: size},
		Target: testVM + "/2000/job-inc.qcow2", ManifestSHA256: sum.String()}

	b.SetBytes(size)
	var ours, theirs time.Duration
	for i := 0; b.Loop(); i++ {
		exec.Command("sync").Run()
		start := time.Now()
		res := svc.VerifyDisk(ctx, repo, job, disk)
		ours += time.Since(start)
		if res.Status != repoapi.VerifyOK {
			b.Fatalf("verify: %+v", res)
		}
		exec.Command("sync").Run()
		start = time.Now()
		run(b, dir, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, incPath)
		theirs += time.Since(start)
		b.Logf("round %d: verify %s, qemu-img compare %s (cumulative)", i+1, ours.Round(time.Millisecond), theirs.Round(time.Millisecond))
	}
	n := float64(b.N)
	b.ReportMetric(ours.Seconds()/n, "verify-s/op")
	b.ReportMetric(theirs.Seconds()/n, "compare-s/op")
	b.ReportMetric(ours.Seconds()/theirs.Seconds(), "verify/compare")
	b.Logf("verify of a 1 GiB point (chain of 2): %.2f s (%.0f MB/s), qemu-img compare with a raw copy: %.2f s (%.0f MB/s), ratio verify/compare %.2f",
		ours.Seconds()/n, size/1e6/(ours.Seconds()/n), theirs.Seconds()/n, size/1e6/(theirs.Seconds()/n), ours.Seconds()/theirs.Seconds())
}

// writeBenchRaw writes random data over frac of the 1 MiB units of the raw
// file at path (created sparse at size when missing).
func writeBenchRaw(b *testing.B, path string, size int64, rng *rand.Rand, frac float64) {
	b.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for u := int64(0); u < size>>20; u++ {
		if rng == nil || rng.Float64() >= frac {
			continue
		}
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(buf, u<<20); err != nil {
			b.Fatal(err)
		}
	}
}

func run(b *testing.B, dir, name string, args ...string) {
	b.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}
