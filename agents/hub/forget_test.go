package hub_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/repository"
	"github.com/sendense/sendense/retention"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

// forgetLeaseTTL is the lease TTL of the forget tests: short, so a hub
// killed mid-prune lets its VM's lease go soon.
const forgetLeaseTTL = 2 * time.Second

var forgetVM = catalogtest.VM(3)

// forgetDisks are two small disks: a point is a job with both.
var forgetDisks = []schemas.DiskRef{
	{Key: 2000, UUID: "6000c291-0003-0000-0000-000000000001", CapacityBytes: testCapacity},
	{Key: 2001, UUID: "6000c291-0003-0000-0000-000000000002", CapacityBytes: testCapacity},
}

// forgetEnv is a hub with a real catalog (store + consumer + service) on a
// real NATS server, a real repository holding a chain of points per disk,
// and a raw copy of every point taken when it was written.
type forgetEnv struct {
	t      *testing.T
	ns     *bustest.Server
	dir    string // repository root
	repo   *repository.Repo
	cat    *store.Catalog
	leases *bus.Leases
	client *repoapi.Client
	jobs   []catalogtest.Job
	refs   map[string]string // job/disk -> raw copy
	log    zerolog.Logger
	svc    atomic.Pointer[hub.RepoService]
	// forgetRetry is the started hub's ForgetRetry (0: its default).
	forgetRetry time.Duration

	stopHub func()
}

func newForgetEnv(t *testing.T, points int) *forgetEnv {
	t.Helper()
	testutil.RequireTool(t, "qemu-img")
	testutil.RequireTool(t, "qemu-io")
	log := bustest.Logger(t)
	ns := bustest.Embedded(t)
	ctx := testCtx(t)
	if err := bus.EnsureStreams(ctx, ns.JS, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	leases, err := bus.NewLeases(ctx, ns.JS, bus.LeaseBucket, forgetLeaseTTL, bus.LeaseLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	cat, err := store.Open(filepath.Join(t.TempDir(), "catalog.db"), &store.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := catalog.Serve(ns.Conn, cat, log)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- catalog.Run(cctx, ns.JS, cat, catalog.Options{Log: log}) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = svc.Stop()
		if err := cat.Check(); err != nil {
			t.Errorf("catalog consistency: %v", err)
		}
		_ = cat.Close()
	})
	e := &forgetEnv{t: t, ns: ns, dir: filepath.Join(t.TempDir(), "repo"), cat: cat, leases: leases, refs: map[string]string{}, log: log}
	e.repo, err = repository.Open(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.repo.Close(context.Background()) })
	e.addPoints(points)
	e.startHub(nil)
	return e
}

// addPoints backs up n more points: per disk a file (a full, then
// incrementals on the previous point) with its own writes, a raw copy of
// it, and the agent's events, until the catalog shows the job completed.
func (e *forgetEnv) addPoints(n int) {
	e.t.Helper()
	for range n {
		e.addPoint(false)
	}
}

// addPoint backs up one more point, a full when full is set.
func (e *forgetEnv) addPoint(full bool) {
	t := e.t
	t.Helper()
	ctx := testCtx(t)
	pub := catalogtest.Publisher(e.ns.JS, e.log)
	refs := t.TempDir()
	i := len(e.jobs)
	j := catalogtest.Job{ID: fmt.Sprintf("job-%02d", i), VM: forgetVM, At: catalogtest.T0.Add(time.Duration(i) * time.Hour), Disks: forgetDisks}
	if i > 0 && !full {
		prev := e.jobs[i-1]
		j.Incremental, j.Backing, j.BaseChangeID = true, prev.ID, prev.ChangeIDOf(forgetDisks[0])
	}
	for k, d := range forgetDisks {
		p, err := e.repo.Create(ctx, forgetVM.UUID, d.Key, j.ID, d.CapacityBytes, j.Backing)
		if err != nil {
			t.Fatal(err)
		}
		qemuIO(t, p,
			fmt.Sprintf("write -P 0x%02x %d 65536", 0x10+i*7+k, (i%5)*65536),
			fmt.Sprintf("write -P 0x%02x %d 4096", 0x60+i, 1<<20+i*8192+k*4096),
			fmt.Sprintf("write -z %d 65536", ((i+2)%5)*65536),
		)
		ref := filepath.Join(refs, fmt.Sprintf("%s-%d.raw", j.ID, d.Key))
		if err := e.repo.Restore(ctx, p, ref, "raw"); err != nil {
			t.Fatal(err)
		}
		e.refs[fmt.Sprintf("%s/%d", j.ID, d.Key)] = ref
	}
	evs := j.Run()
	if err := catalogtest.Publish(ctx, pub, evs...); err != nil {
		t.Fatal(err)
	}
	e.jobs = append(e.jobs, j)
	e.waitStatus(j.ID, backup.StatusCompleted)
}

func qemuIO(t *testing.T, path string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	if out, err := exec.Command("qemu-io", append(args, path)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io %s: %v: %s", path, err, out)
	}
}

// startHub starts a repository service on the repository, with the
// catalog over NATS, its progress, the leases and the hub's publisher;
// hook is its PruneHook. It stops the one running before.
func (e *forgetEnv) startHub(hook repository.PruneHook) {
	e.startHubWith(hook, nil)
}

// startHubWith is startHub with a publisher of the hub's events (nil: the
// hub's own).
func (e *forgetEnv) startHubWith(hook repository.PruneHook, pub hub.EventPublisher) {
	t := e.t
	t.Helper()
	if e.stopHub != nil {
		e.stopHub()
	}
	if pub == nil {
		pub = bus.NewHubPublisher(e.ns.JS, e.log)
	}
	svc, err := hub.NewRepoService(hub.RepoOptions{
		Repositories: map[string]*repository.Repo{testRepo: e.repo},
		Leases:       e.leases, LeaseTaker: e.leases, Publisher: pub,
		Catalog: catalog.NewClient(e.ns.Conn), Progress: hub.NewConsumerProgress(e.ns.JS, bus.ConsumerCatalog),
		ReapInterval: time.Hour, ReconcileInterval: -1, PruneRetry: 200 * time.Millisecond,
		SocketDir: testutil.SocketDir(t), PruneHook: hook, ForgetRetry: e.forgetRetry, Log: e.log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- svc.Serve(ctx, e.ns.Conn, ready) }()
	<-ready
	e.svc.Store(svc)
	stopped := false
	e.stopHub = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		}
	}
	t.Cleanup(e.stopHub)
	e.client = repoapi.NewClient(e.ns.Conn)
	e.client.Timeout = 5 * time.Minute
}

func (e *forgetEnv) waitStatus(id, status string) backup.Job {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		j, err := e.cat.Job(id)
		if err == nil && j.Status == status {
			return j
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s: status %s (%v), want %s", id, j.Status, err, status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *forgetEnv) path(job string, disk int32) string {
	p, err := e.repo.Path(forgetVM.UUID, disk, job)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// requireKept checks that each point restores as it did when it was
// written (qemu-img compare with its copy), on every disk, and that the
// catalog still has it completed.
func (e *forgetEnv) requireKept(jobs ...string) {
	e.t.Helper()
	ctx := testCtx(e.t)
	for _, id := range jobs {
		for _, d := range forgetDisks {
			eq, err := e.repo.Compare(ctx, e.path(id, d.Key), e.refs[fmt.Sprintf("%s/%d", id, d.Key)])
			if err != nil || !eq {
				e.t.Errorf("point %s disk %d: equal %t, %v", id, d.Key, eq, err)
			}
		}
		if j, err := e.cat.Job(id); err != nil || j.Status != backup.StatusCompleted {
			e.t.Errorf("kept job %s: status %s, %v", id, j.Status, err)
		}
	}
}

// requireRemoved checks that the points are pruned in the catalog, in no
// chain, and their files gone.
func (e *forgetEnv) requireRemoved(jobs ...string) {
	e.t.Helper()
	for _, id := range jobs {
		e.waitStatus(id, backup.StatusPruned)
		for _, d := range forgetDisks {
			if _, err := os.Stat(e.path(id, d.Key)); !errors.Is(err, os.ErrNotExist) {
				e.t.Errorf("file of pruned %s disk %d: %v", id, d.Key, err)
			}
		}
	}
	for _, d := range forgetDisks {
		links, err := e.cat.Chain(forgetVM.UUID, d.Key, testRepo)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, l := range links {
			if slices.Contains(jobs, l.JobID) {
				e.t.Errorf("pruned %s still in the chain of disk %d", l.JobID, d.Key)
			}
		}
	}
}

// requireClean runs repo check: no problem and no orphan, so every kept
// link backs onto the previous kept link.
func (e *forgetEnv) requireClean() {
	e.t.Helper()
	rep, err := e.client.Check(testCtx(e.t), repoapi.CheckRequest{DryRun: true})
	if err != nil {
		e.t.Fatal(err)
	}
	if len(rep.Problems) != 0 || len(rep.Orphans) != 0 {
		e.t.Errorf("repo check: problems %+v orphans %+v", rep.Problems, rep.Orphans)
	}
}

func ids(jobs []catalogtest.Job, idx ...int) []string {
	var out []string
	for _, i := range idx {
		out = append(out, jobs[i].ID)
	}
	return out
}

// TestForget: a chain of 5 points on two disks. A dry run lists each point
// and removes nothing; keep-last 2 removes the 3 oldest (a merge of the
// full into its child, then of the new full into its child, ...); forget
// with a protected middle point keeps it; every kept point restores
// identically, the catalog shows the removed ones pruned and out of every
// chain, repo check finds nothing wrong, and a backup after the prune
// backs onto the kept head.
func TestForget(t *testing.T) {
	e := newForgetEnv(t, 5)
	ctx := testCtx(t)
	all := ids(e.jobs, 0, 1, 2, 3, 4)

	rep, err := e.client.Forget(ctx, repoapi.ForgetRequest{VM: forgetVM.Name, Policy: retention.Policy{Last: 2}, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.VMs) != 1 || len(rep.VMs[0].Points) != 5 || rep.VMs[0].Removed != 0 {
		t.Fatalf("dry run: %+v", rep)
	}
	for i, p := range rep.VMs[0].Points { // newest first
		want := all[4-i]
		if p.JobID != want || p.Keep != (i < 2) || len(p.Reasons) == 0 && p.Keep || p.Removed {
			t.Errorf("dry run point %d: %+v, want %s keep=%t", i, p, want, i < 2)
		}
	}
	e.requireKept(all...)

	// A middle point protected, keep-last 1: removes 0, 1 (merges) and 3
	// (a rebase of 4 onto 2).
	rep, err = e.client.Forget(ctx, repoapi.ForgetRequest{VM: forgetVM.UUID, Policy: retention.Policy{Last: 1, Protect: []string{e.jobs[2].ID}}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.VMs[0].Removed != 3 {
		t.Errorf("removed %d points, want 3: %+v", rep.VMs[0].Removed, rep.VMs[0].Points)
	}
	e.requireRemoved(ids(e.jobs, 0, 1, 3)...)
	e.requireKept(ids(e.jobs, 2, 4)...)
	e.requireClean()
	links, err := e.cat.Chain(forgetVM.UUID, 2000, testRepo)
	if err != nil || len(links) != 2 || links[0].Backing != "" || links[1].Backing != e.jobs[2].ID {
		t.Errorf("chain after forget: %+v, %v", links, err)
	}

	// Two more points, then keep-last 2 on all VMs.
	e.addPoints(2)
	rep, err = e.client.Forget(ctx, repoapi.ForgetRequest{All: true, Policy: retention.Policy{Last: 2}})
	if err != nil || len(rep.VMs) != 1 || rep.VMs[0].Removed != 2 || rep.VMs[0].Error != "" {
		t.Fatalf("forget --all: %+v, %v", rep, err)
	}
	e.requireRemoved(ids(e.jobs, 2, 4)...)
	e.requireKept(ids(e.jobs, 5, 6)...)
	e.requireClean()
	head, err := e.cat.ChainHead(forgetVM.UUID, 2001, testRepo)
	if err != nil || head.JobID != e.jobs[6].ID || head.Backing != e.jobs[5].ID {
		t.Errorf("head: %+v, %v", head, err)
	}
	// The next backup backs onto the head (the agent asks for it as its
	// base): the repository accepts it.
	if err := e.repo.CheckBase(ctx, forgetVM.UUID, 2000, head.JobID); err != nil {
		t.Errorf("head as a base: %v", err)
	}
	// The stream replays into the same catalog (invariant 5).
	replayed, err := store.Open(filepath.Join(t.TempDir(), "replay.db"), &store.Options{Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	defer replayed.Close()
	if _, err := catalog.Replay(ctx, e.ns.JS, replayed, e.log); err != nil {
		t.Fatal(err)
	}
	want, _ := e.cat.Dump()
	got, _ := replayed.Dump()
	if !want.Equal(got) {
		t.Errorf("replayed catalog differs from the live one")
	}
}

// TestForgetMidChainFull: a chain with a full in the middle (a CBT reset):
// job-00 <- job-01, job-02 <- job-03. Keep-last 1 merges job-00 into
// job-01, deletes job-01 (nothing backs onto it), merges job-02 into
// job-03; job-03 is a full then and restores identically.
func TestForgetMidChainFull(t *testing.T) {
	e := newForgetEnv(t, 2)
	e.addPoint(true)
	e.addPoint(false)
	rep, err := e.client.Forget(testCtx(t), repoapi.ForgetRequest{VM: forgetVM.Name, Policy: retention.Policy{Last: 1}})
	if err != nil || rep.VMs[0].Removed != 3 {
		t.Fatalf("forget: %+v, %v", rep, err)
	}
	e.requireRemoved(ids(e.jobs, 0, 1, 2)...)
	e.requireKept(e.jobs[3].ID)
	e.requireClean()
	for _, d := range forgetDisks {
		head, err := e.cat.ChainHead(forgetVM.UUID, d.Key, testRepo)
		if err != nil || head.JobID != e.jobs[3].ID || head.Backing != "" {
			t.Errorf("head of disk %d: %+v, %v; want %s, a full", d.Key, head, err, e.jobs[3].ID)
		}
	}
}

// TestForgetRefuses: bad inputs get a clear error and remove nothing; a
// backup holding the VM's lease makes forget busy, and so does an open
// restore; a restore of a pruned point is refused.
func TestForgetRefuses(t *testing.T) {
	e := newForgetEnv(t, 3)
	ctx := testCtx(t)
	all := ids(e.jobs, 0, 1, 2)
	for _, tc := range []struct {
		name string
		req  repoapi.ForgetRequest
		want error
		text string
	}{
		{"unknown vm", repoapi.ForgetRequest{VM: "no-such-vm", Policy: retention.Policy{Last: 1}}, repoapi.ErrNotFound, "no completed backup"},
		{"empty policy", repoapi.ForgetRequest{VM: forgetVM.Name}, repoapi.ErrBadRequest, "policy"},
		{"negative keep", repoapi.ForgetRequest{VM: forgetVM.Name, Policy: retention.Policy{Last: -2}}, repoapi.ErrBadRequest, "-2"},
		{"no vm", repoapi.ForgetRequest{Policy: retention.Policy{Last: 1}}, repoapi.ErrBadRequest, "give a vm"},
		{"vm and all", repoapi.ForgetRequest{VM: forgetVM.Name, All: true, Policy: retention.Policy{Last: 1}}, repoapi.ErrBadRequest, "not both"},
		{"unknown repository", repoapi.ForgetRequest{VM: forgetVM.Name, Repository: "nope", Policy: retention.Policy{Last: 1}}, repoapi.ErrUnknownRepository, "nope"},
	} {
		if _, err := e.client.Forget(ctx, tc.req); !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: %v, want %v saying %q", tc.name, err, tc.want, tc.text)
		}
	}
	// A backup holds the VM's lease.
	le, err := e.leases.Acquire(ctx, bus.VMLeaseKey(forgetVM.UUID), bus.Holder{Agent: "node1", JobID: "job-running", Attempt: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Forget(ctx, repoapi.ForgetRequest{VM: forgetVM.Name, Policy: retention.Policy{Last: 1}}); !errors.Is(err, repoapi.ErrBusy) || !strings.Contains(err.Error(), "job-running") {
		t.Errorf("forget while a backup holds the lease: %v, want ErrBusy naming the holder", err)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// A restore of a point is open.
	ro, err := e.client.OpenRestore(ctx, repoapi.TargetRef{Repository: testRepo, JobID: all[2], VMUUID: forgetVM.UUID, DiskKey: 2000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Forget(ctx, repoapi.ForgetRequest{VM: forgetVM.Name, Policy: retention.Policy{Last: 1}}); !errors.Is(err, repoapi.ErrBusy) || !strings.Contains(err.Error(), "restore") {
		t.Errorf("forget while a restore is open: %v, want ErrBusy", err)
	}
	if err := e.client.CloseRestore(ctx, ro.ExportID); err != nil {
		t.Fatal(err)
	}
	e.requireKept(all...)

	if _, err := e.client.Forget(ctx, repoapi.ForgetRequest{VM: forgetVM.Name, Policy: retention.Policy{Last: 2}}); err != nil {
		t.Fatal(err)
	}
	e.requireRemoved(all[0])
	if _, err := e.client.OpenRestore(ctx, repoapi.TargetRef{Repository: testRepo, JobID: all[0], VMUUID: forgetVM.UUID, DiskKey: 2000}); !errors.Is(err, repoapi.ErrNotFound) {
		t.Errorf("restore of a pruned point: %v, want ErrNotFound", err)
	}
	e.requireKept(all[1:]...)
}

// TestForgetPermission: only admin may call forget.
func TestForgetPermission(t *testing.T) {
	s := bustest.SecureEmbedded(t, "node1")
	for _, who := range []bus.Identity{{Role: bus.RoleRequester}, {Role: bus.RoleMonitor}, {Role: bus.RoleCatalog}, bus.AgentIdentity("node1")} {
		c := s.Connect(t, who)
		if err := c.Publish(repoapi.SubjectForget, []byte(`{"vm":"x","policy":{"keep_last":1}}`)); err != nil {
			t.Fatal(err)
		}
		_ = c.Flush()
		if err := c.LastError(); !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), repoapi.SubjectForget) {
			t.Errorf("%s publishes on %s: %v, want a permission violation", who, repoapi.SubjectForget, err)
		}
	}
}

// The kill tests run the hub's forget in a child process (this test binary
// re-executed) that SIGKILLs itself at a named step, then start a hub in
// this process, which resumes the prune at start.
const (
	envHelper = "SENDENSE_FORGET_HELPER"
	envNATS   = "SENDENSE_FORGET_NATS"
	envRepo   = "SENDENSE_FORGET_REPO"
	envKillAt = "SENDENSE_FORGET_KILL_AT"
	envReq    = "SENDENSE_FORGET_REQUEST"
)

// TestForgetHelperProcess is the child: not a test on its own.
func TestForgetHelperProcess(t *testing.T) {
	if os.Getenv(envHelper) != "1" {
		t.Skip("helper process of TestForgetKilled")
	}
	log := zerolog.New(os.Stderr)
	nc, err := nats.Connect(os.Getenv(envNATS))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	leases, err := bus.OpenLeases(ctx, js, "")
	if err != nil {
		t.Fatal(err)
	}
	repo, err := repository.Open(os.Getenv(envRepo))
	if err != nil {
		t.Fatal(err)
	}
	at := os.Getenv(envKillAt)
	svc, err := hub.NewRepoService(hub.RepoOptions{
		Repositories: map[string]*repository.Repo{testRepo: repo},
		Leases:       leases, LeaseTaker: leases, Publisher: bus.NewHubPublisher(js, log),
		Catalog: catalog.NewClient(nc), Progress: hub.NewConsumerProgress(js, bus.ConsumerCatalog),
		ReapInterval: time.Hour, ReconcileInterval: -1, Log: log,
		PruneHook: func(step string) error {
			if step == at {
				fmt.Fprintf(os.Stderr, "killing myself at %s\n", step)
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	var req repoapi.ForgetRequest
	if err := json.Unmarshal([]byte(os.Getenv(envReq)), &req); err != nil {
		t.Fatal(err)
	}
	_, err = svc.Forget(ctx, req)
	t.Fatalf("forget returned %v without being killed at %s", err, at)
}

// TestForgetKilled: the hub killed (SIGKILL) at each step of a prune:
// after the intent is stored, before and after qemu-img commit or rebase,
// before and after the rename or delete, before the done event. A hub
// started afterwards resumes the prune, the catalog shows the point
// pruned, and every kept point restores identically.
func TestForgetKilled(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy retention.Policy
		at     string
		// removed and kept are indexes into the env's 4 points.
		removed, kept []int
	}{
		{"merge/" + hub.StepIntent, retention.Policy{Last: 3}, hub.StepIntent, []int{0}, []int{1, 2, 3}},
		{"merge/commit", retention.Policy{Last: 3}, "commit", []int{0}, []int{1, 2, 3}},
		{"merge/committed", retention.Policy{Last: 3}, "committed", []int{0}, []int{1, 2, 3}},
		{"merge/rename", retention.Policy{Last: 3}, "rename", []int{0}, []int{1, 2, 3}},
		{"merge/renamed", retention.Policy{Last: 3}, "renamed", []int{0}, []int{1, 2, 3}},
		{"merge/" + hub.StepDone, retention.Policy{Last: 3}, hub.StepDone, []int{0}, []int{1, 2, 3}},
		{"rebase/rebase", retention.Policy{Last: 2, Protect: []string{"job-00"}}, "rebase", []int{1}, []int{0, 2, 3}},
		{"rebase/rebased", retention.Policy{Last: 2, Protect: []string{"job-00"}}, "rebased", []int{1}, []int{0, 2, 3}},
		{"rebase/deleted", retention.Policy{Last: 2, Protect: []string{"job-00"}}, "deleted", []int{1}, []int{0, 2, 3}},
		{"rebase/delete", retention.Policy{Last: 2, Protect: []string{"job-00"}}, "delete", []int{1}, []int{0, 2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newForgetEnv(t, 4)
			e.stopHub() // the child is the hub now
			req, _ := json.Marshal(repoapi.ForgetRequest{VM: forgetVM.UUID, Policy: tc.policy})
			cmd := exec.Command(os.Args[0], "-test.run=^TestForgetHelperProcess$", "-test.count=1")
			cmd.Env = append(os.Environ(), envHelper+"=1", envNATS+"="+e.ns.URL, envRepo+"="+e.dir, envKillAt+"="+tc.at, envReq+"="+string(req))
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("helper was not killed at %s: %v\n%s", tc.at, err, out)
			}
			// Killed: the point's prune is pending (its intent stored).
			id := e.jobs[tc.removed[0]].ID
			deadline := time.Now().Add(30 * time.Second)
			for {
				j, err := e.cat.Job(id)
				if err == nil && j.Status == backup.StatusCompleted && j.Prune != nil && j.Prune.State == backup.PrunePending {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after the kill: job %s status %s prune %+v (%v), want completed with its prune pending", id, j.Status, j.Prune, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			// A new hub resumes it once the dead hub's lease expired.
			e.startHub(nil)
			e.requireRemoved(ids(e.jobs, tc.removed...)...)
			e.requireKept(ids(e.jobs, tc.kept...)...)
			e.requireClean()
		})
	}
}

// failingPublisher refuses to publish the events named fail.
type failingPublisher struct {
	hub.EventPublisher
	fail string
}

func (p failingPublisher) PublishEvent(ctx context.Context, ev schemas.Event) (*jetstream.PubAck, error) {
	if ev.EventHeader().Schema.Name == p.fail {
		return nil, fmt.Errorf("publish %s: %w", ev.EventHeader().ID, bus.ErrUnavailable)
	}
	return p.EventPublisher.PublishEvent(ctx, ev)
}

// TestForgetPublishFails: when the intent cannot be published no file is
// touched and nothing changes; when the done event cannot be, the files
// are pruned, the catalog shows the prune pending, and the next forget
// publishes it. Both answer a clear error. A reconciliation round while a
// prune runs removes nothing.
func TestForgetPublishFails(t *testing.T) {
	e := newForgetEnv(t, 3)
	ctx := testCtx(t)
	all := ids(e.jobs, 0, 1, 2)
	e.startHubWith(nil, failingPublisher{bus.NewHubPublisher(e.ns.JS, e.log), schemas.NamePruning})
	_, err := e.client.Forget(ctx, repoapi.ForgetRequest{VM: forgetVM.Name, Policy: retention.Policy{Last: 2}})
	if !errors.Is(err, repoapi.ErrUnavailable) || !strings.Contains(err.Error(), "no file touched") {
		t.Errorf("forget with the intent unpublishable: %v, want ErrUnavailable saying no file was touched", err)
	}
	e.requireKept(all...)
	if j, _ := e.cat.Job(all[0]); j.Prune != nil {
		t.Errorf("prune recorded without its intent: %+v", j.Prune)
	}
	for _, d := range forgetDisks {
		if _, err := os.Stat(e.path(all[0], d.Key)); err != nil {
			t.Errorf("file of %s disk %d: %v", all[0], d.Key, err)
		}
	}

	// The done event fails; a reconciliation round mid-prune (at the
	// commit) removes nothing.
	var orphans []repoapi.Orphan
	var rerr error
	e.startHubWith(func(step string) error {
		if step == "committed" {
			orphans, rerr = e.svc.Load().Reconcile(ctx)
		}
		return nil
	}, failingPublisher{bus.NewHubPublisher(e.ns.JS, e.log), schemas.NamePruned})
	_, err = e.client.Forget(ctx, repoapi.ForgetRequest{VM: forgetVM.Name, Policy: retention.Policy{Last: 2}})
	if !errors.Is(err, repoapi.ErrUnavailable) || !strings.Contains(err.Error(), "next forget") {
		t.Errorf("forget with the done event unpublishable: %v, want ErrUnavailable saying the next forget finishes", err)
	}
	if rerr != nil || len(orphans) != 0 {
		t.Errorf("reconcile mid-prune: %+v, %v; want nothing", orphans, rerr)
	}
	if j, _ := e.cat.Job(all[0]); j.Status != backup.StatusCompleted || j.Prune == nil || j.Prune.State != backup.PrunePending {
		t.Errorf("job %s after the failed done event: status %s prune %+v, want completed and pending", all[0], j.Status, j.Prune)
	}
	if _, err := e.client.OpenRestore(ctx, repoapi.TargetRef{Repository: testRepo, JobID: all[0], VMUUID: forgetVM.UUID, DiskKey: 2000}); !errors.Is(err, repoapi.ErrBusy) {
		t.Errorf("restore of a point being pruned: %v, want ErrBusy", err)
	}
	e.requireKept(all[1:]...)

	e.startHub(nil) // resumes at start
	e.requireRemoved(all[0])
	e.requireKept(all[1:]...)
	e.requireClean()
}
