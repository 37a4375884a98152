package hub_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/hub"
)

// TestServeShutdownClosesEverything: when Serve's context ends, every
// export stops, the partial files of open targets are removed, completed
// backups stay, and the service stops answering.
func TestServeShutdownClosesEverything(t *testing.T) {
	e := newSvcEnv(t, nil)
	ctx := testCtx(t)
	raw := filepath.Join(t.TempDir(), "disk.raw")
	writeRaw(t, raw, 30)
	e.fullBackup(t, "job-done", raw)
	done := filepath.Join(e.repo.Root(), testVM, "2000", "job-done.qcow2")

	rs, err := e.client.OpenRestore(ctx, ref("job-done"))
	if err != nil {
		t.Fatalf("open restore: %v", err)
	}
	pids := []int{e.exportPID(t, rs.Path, true)}
	var partial []string
	for i, key := range []int32{2000, 2001} {
		req := openReq(fmt.Sprintf("job-open-%d", i), "")
		req.DiskKey = key
		out, pid := e.mustOpen(t, req)
		nbdcopy(t, raw, out.URI)
		partial = append(partial, out.Path)
		pids = append(pids, pid)
	}

	if err := e.stop(); err != nil {
		t.Fatalf("serve returned %v after cancel, want nil", err)
	}

	for _, pid := range pids {
		assertGone(t, pid)
	}
	for _, p := range partial {
		assertNoFile(t, p)
	}
	e.assertNoExports(t)
	if !compareImages(t, raw, done) {
		t.Errorf("completed backup changed by shutdown")
	}
	if got, want := e.files(t), []string{filepath.Join(testVM, "2000", "job-done.manifest"), filepath.Join(testVM, "2000", "job-done.qcow2")}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("files after shutdown %v, want %v", got, want)
	}
	// Nobody answers any more.
	qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := e.client.Info(qctx, testRepo); err == nil {
		t.Errorf("repository service still answers after shutdown")
	}
}

// TestServeShutdownDuringOpens cancels Serve while opens are in flight.
// Once Serve has returned nothing may be left: no export, no target file,
// whatever point each open had reached.
func TestServeShutdownDuringOpens(t *testing.T) {
	e := newSvcEnv(t, nil)
	const n = 6
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			req := openReq(fmt.Sprintf("job-inflight-%d", i), "")
			_, _ = e.client.Open(ctx, req) // may succeed or fail: shutdown races it
		})
	}
	// Cancel once the first target is open, with the others on their way.
	deadline := time.Now().Add(20 * time.Second)
	for e.svc.OpenTargets() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := e.stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	e.assertNoExports(t)
	if got := e.files(t); len(got) != 0 {
		t.Errorf("files left after shutdown: %v", got)
	}
	wg.Wait()
	// Nothing appeared after Serve returned either.
	e.assertNoExports(t)
	if got := e.files(t); len(got) != 0 {
		t.Errorf("files left after the opens returned: %v", got)
	}
}

// TestNewRepoServiceNeedsRepositories: a service without repositories is
// a configuration error, not a service that rejects everything.
func TestNewRepoServiceNeedsRepositories(t *testing.T) {
	if _, err := hub.NewRepoService(hub.RepoOptions{}); err == nil {
		t.Errorf("NewRepoService without repositories succeeded")
	}
}
