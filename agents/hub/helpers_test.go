package hub_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/manifest"
	"github.com/sendense/sendense/repository"
	"github.com/sendense/sendense/schemas"
)

const (
	testRepo = "default"
	testVM   = "4217a1b3-6f0e-4c55-9b1e-2f3c4d5e6f70"
	testDisk = int32(2000)
	// testCapacity is the virtual size of the test disks: small, and not a
	// multiple of the 64 KiB qcow2 cluster.
	testCapacity = 4<<20 + 512
)

// svcEnv is a repository service served on an embedded NATS server, with
// a real repository directory and real qemu-nbd exports.
type svcEnv struct {
	nats     *bustest.Server
	repo     *repository.Repo
	sockDir  string
	svc      *hub.RepoService
	client   *repoapi.Client
	leases   *bus.Leases
	catalog  *fakeCatalog
	progress *fakeProgress
	reg      *prometheus.Registry

	stopOnce sync.Once
	cancel   context.CancelFunc
	done     chan error
	serveErr error
}

// newSvcEnv starts the service. The periodic reaper is effectively off
// (ReapInterval one hour) and periodic reconciliation is off: tests call
// Reap and Reconcile themselves. The catalog is a fake (e.catalog, empty)
// that is caught up (e.progress). tune may change the options before the
// service is made.
func newSvcEnv(t *testing.T, tune func(*hub.RepoOptions)) *svcEnv {
	t.Helper()
	return newSvcEnvWith(t, func(_ *svcEnv, o *hub.RepoOptions) {
		if tune != nil {
			tune(o)
		}
	})
}

// newSvcEnvWith is newSvcEnv with a tune that sees the environment made so
// far (its NATS server, repository and fakes).
func newSvcEnvWith(t *testing.T, tune func(*svcEnv, *hub.RepoOptions)) *svcEnv {
	t.Helper()
	testutil.RequireTool(t, "qemu-img")
	testutil.RequireTool(t, "qemu-nbd")
	log := bustest.Logger(t)
	ns := bustest.Embedded(t)
	ctx := testCtx(t)
	leases, err := bus.NewLeases(ctx, ns.JS, bus.LeaseBucket, 10*time.Second, bus.LeaseLogger(log))
	if err != nil {
		t.Fatalf("leases: %v", err)
	}
	repo, err := repository.Open(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatalf("open repository: %v", err)
	}
	t.Cleanup(func() {
		if err := repo.Close(context.Background()); err != nil {
			t.Errorf("close repository: %v", err)
		}
	})
	e := &svcEnv{
		nats: ns, repo: repo, sockDir: testutil.SocketDir(t), leases: leases, done: make(chan error, 1),
		catalog: newFakeCatalog(), progress: &fakeProgress{}, reg: prometheus.NewRegistry(),
	}
	opts := hub.RepoOptions{
		Repositories:      map[string]*repository.Repo{testRepo: repo},
		Leases:            leases,
		ReapInterval:      time.Hour,
		SocketDir:         e.sockDir,
		Catalog:           e.catalog,
		Progress:          e.progress,
		ReconcileInterval: -1,
		Registry:          e.reg,
		Log:               log,
	}
	if tune != nil {
		tune(e, &opts)
	}
	e.svc, err = hub.NewRepoService(opts)
	if err != nil {
		t.Fatalf("new repository service: %v", err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	ready := make(chan struct{})
	go func() { e.done <- e.svc.Serve(sctx, ns.Conn, ready) }()
	t.Cleanup(func() {
		if err := e.stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	<-ready
	e.client = repoapi.NewClient(ns.Conn)
	e.client.Timeout = 30 * time.Second
	if _, err := e.client.Info(ctx, testRepo); err != nil {
		t.Fatalf("repository service does not answer: %v", err)
	}
	return e
}

// stop cancels Serve and returns its result once it has returned.
func (e *svcEnv) stop() error {
	e.stopOnce.Do(func() {
		e.cancel()
		select {
		case e.serveErr = <-e.done:
		case <-time.After(60 * time.Second):
			e.serveErr = errors.New("serve did not return within 60s of cancel")
		}
	})
	return e.serveErr
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ref(job string) repoapi.TargetRef {
	return repoapi.TargetRef{Repository: testRepo, JobID: job, VMUUID: testVM, DiskKey: testDisk}
}

func openReq(job, backing string) repoapi.OpenRequest {
	return repoapi.OpenRequest{TargetRef: ref(job), Attempt: 1, CapacityBytes: testCapacity, BackingJobID: backing, Agent: "agent-test"}
}

// mustOpen opens a target and returns the reply with the qemu-nbd pid
// serving it.
func (e *svcEnv) mustOpen(t *testing.T, req repoapi.OpenRequest) (repoapi.OpenReply, int) {
	t.Helper()
	out, err := e.client.Open(testCtx(t), req)
	if err != nil {
		t.Fatalf("open target of job %s: %v", req.JobID, err)
	}
	pid := e.exportPID(t, out.Path, false)
	if pid == 0 {
		t.Fatalf("open target of job %s: no writable export of %s in the repository", req.JobID, out.Path)
	}
	return out, pid
}

// exportPID is the pid of the repository's export of path (0 when none).
func (e *svcEnv) exportPID(t *testing.T, path string, readOnly bool) int {
	t.Helper()
	for _, x := range e.repo.Exports() {
		if x.Path() == path && x.ReadOnly() == readOnly {
			return x.PID()
		}
	}
	return 0
}

// assertNoExports checks that the repository serves nothing and that no
// socket directory is left.
func (e *svcEnv) assertNoExports(t *testing.T) {
	t.Helper()
	if n := len(e.repo.Exports()); n != 0 {
		var paths []string
		for _, x := range e.repo.Exports() {
			paths = append(paths, x.Path())
		}
		t.Errorf("repository has %d exports left: %v", n, paths)
	}
	if n := e.svc.OpenTargets(); n != 0 {
		t.Errorf("service reports %d open targets, want 0", n)
	}
	ents, err := os.ReadDir(e.sockDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ents {
		t.Errorf("socket directory left: %s", filepath.Join(e.sockDir, d.Name()))
	}
}

// files lists every file under the repository root (relative names).
func (e *svcEnv) files(t *testing.T) []string {
	t.Helper()
	return walkFiles(t, e.repo.Root())
}

func walkFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func assertGone(t *testing.T, pid int) {
	t.Helper()
	if pid <= 0 {
		t.Fatalf("bad pid %d", pid)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("qemu-nbd pid %d still exists (kill 0: %v)", pid, err)
	}
}

func assertNoFile(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s still exists (stat: %v)", path, err)
	}
}

func writeRaw(t *testing.T, path string, seed int64) []byte {
	t.Helper()
	return testutil.WriteRawImage(t, path, testCapacity, seed)
}

// overlayRaw writes base with some blocks changed as a new raw image.
func overlayRaw(t *testing.T, path string, base []byte, seed int64) []byte {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	buf := append([]byte(nil), base...)
	for off := 0; off+65536 <= len(buf); off += 65536 {
		if rng.Intn(5) == 0 {
			rng.Read(buf[off : off+65536])
		}
	}
	if err := os.WriteFile(path, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	return buf
}

// nbdcopy copies src to dst (files or NBD URIs) with the real nbdcopy.
func nbdcopy(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := runNbdcopy(t, src, dst); err != nil {
		t.Fatalf("nbdcopy %s %s: %v: %s", src, dst, err, out)
	}
}

func runNbdcopy(t *testing.T, src, dst string) ([]byte, error) {
	t.Helper()
	testutil.RequireTool(t, "nbdcopy")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "nbdcopy", src, dst).CombinedOutput()
}

// compareImages runs qemu-img compare on a raw image and a qcow2 file
// (read through its backing chain): true when the guest sees the same
// bytes.
func compareImages(t *testing.T, raw, qcow2 string) bool {
	t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", raw, qcow2).CombinedOutput()
	if err == nil {
		return true
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return false
	}
	t.Fatalf("qemu-img compare %s %s: %v: %s", raw, qcow2, err, out)
	return false
}

// qemuInfo is what the tests read from `qemu-img info --output=json`.
type qemuInfo struct {
	Format              string `json:"format"`
	VirtualSize         int64  `json:"virtual-size"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	BackingFormat       string `json:"backing-filename-format"`
}

func imgInfo(t *testing.T, path string) qemuInfo {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	var i qemuInfo
	if err := json.Unmarshal(out, &i); err != nil {
		t.Fatalf("qemu-img info %s: %v: %s", path, err, out)
	}
	return i
}

// serviceCode returns the code of a *bus.ServiceError ("" for other errors).
func serviceCode(err error) string {
	var se *bus.ServiceError
	if errors.As(err, &se) {
		return se.Code
	}
	return ""
}

// fullBackup makes a completed full backup of job: open, write raw, close.
func (e *svcEnv) fullBackup(t *testing.T, job, raw string) repoapi.CloseReply {
	t.Helper()
	out, _ := e.mustOpen(t, openReq(job, ""))
	nbdcopy(t, raw, out.URI)
	cl, err := e.client.Close(testCtx(t), ref(job))
	if err != nil {
		t.Fatalf("close target of job %s: %v", job, err)
	}
	return cl
}

// fakeCatalog is the catalog as a test sets it: jobs by id. Chains are
// derived from the completed jobs, as the real catalog does.
type fakeCatalog struct {
	mu   sync.Mutex
	jobs map[string]backup.Job
	err  error // answered to every request when set
}

func newFakeCatalog() *fakeCatalog { return &fakeCatalog{jobs: map[string]backup.Job{}} }

// set records jobs, replacing those with the same id.
func (c *fakeCatalog) set(jobs ...backup.Job) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, j := range jobs {
		c.jobs[j.ID] = j
	}
}

func (c *fakeCatalog) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
}

func (c *fakeCatalog) Job(_ context.Context, id string) (backup.Job, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return backup.Job{}, c.err
	}
	j, ok := c.jobs[id]
	if !ok {
		return backup.Job{}, fmt.Errorf("get job %s: %w", id, backup.ErrNotFound)
	}
	return j, nil
}

func (c *fakeCatalog) Jobs(_ context.Context, f backup.JobFilter) ([]backup.Job, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	jobs := []backup.Job{}
	for _, j := range c.jobs {
		if f.Status == "" || j.Status == f.Status {
			jobs = append(jobs, j)
		}
	}
	sort.Slice(jobs, func(i, k int) bool { return jobs[i].ID > jobs[k].ID })
	return jobs, nil
}

func (c *fakeCatalog) Chains(_ context.Context, vmUUID, repo string) ([]backup.Chain, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	byDisk := map[int32]*backup.Chain{}
	for _, j := range c.jobs {
		if j.Status != backup.StatusCompleted || j.VM.UUID != vmUUID || (repo != "" && j.Repository != repo) {
			continue
		}
		for _, d := range j.Disks {
			ch := byDisk[d.Disk.Key]
			if ch == nil {
				ch = &backup.Chain{VMUUID: vmUUID, Repository: j.Repository, DiskKey: d.Disk.Key}
				byDisk[d.Disk.Key] = ch
			}
			ch.Links = append(ch.Links, backup.Link{
				JobID: j.ID, VMUUID: vmUUID, Repository: j.Repository, DiskKey: d.Disk.Key,
				Target: d.Target, Backing: d.Backing,
			})
		}
	}
	chains := []backup.Chain{}
	for _, ch := range byDisk {
		chains = append(chains, *ch)
	}
	return chains, nil
}

// job is a job of testVM in testRepo with status and one disk per key
// (each a full, or backed by backing).
func job(id, status, backing string, keys ...int32) backup.Job {
	j := backup.Job{ID: id, Status: status, VM: schemas.VMRef{Name: "vm", UUID: testVM}, Repository: testRepo, Attempt: 1}
	for _, k := range keys {
		j.Disks = append(j.Disks, backup.Disk{
			Disk:    schemas.DiskRef{Key: k},
			Target:  filepath.Join(testVM, fmt.Sprint(k), id+".qcow2"),
			Backing: backing,
		})
	}
	return j
}

// fakeProgress answers CaughtUp with err (nil: caught up).
type fakeProgress struct {
	mu   sync.Mutex
	err  error
	hook func() // run once by the next CaughtUp, before it answers
}

func (p *fakeProgress) CaughtUp(context.Context) error {
	p.mu.Lock()
	hook := p.hook
	p.hook = nil
	p.mu.Unlock()
	if hook != nil {
		hook()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// onNext makes the next CaughtUp call run hook first.
func (p *fakeProgress) onNext(hook func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hook = hook
}

func (p *fakeProgress) set(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err = err
}

// errBehind is what a catalog behind the stream makes CaughtUp answer.
var errBehind = fmt.Errorf("catalog consumer: 3 events not delivered: %w", hub.ErrCatalogBehind)

// diskPath is the path of job's file of disk key in the test repository.
func (e *svcEnv) diskPath(key int32, job string) string {
	return filepath.Join(e.repo.Root(), testVM, fmt.Sprint(key), job+".qcow2")
}

// makeFile makes job's file of disk testDisk with qemu-img (a full, or
// backed by backing), data from raw when not "", and its modification time
// set to mtime when not zero, as an earlier hub process left it.
func (e *svcEnv) makeFile(t *testing.T, job, backing, raw string, mtime time.Time) string {
	t.Helper()
	path, err := e.repo.Create(context.Background(), testVM, testDisk, job, testCapacity, backing)
	if err != nil {
		t.Fatal(err)
	}
	if raw != "" {
		out, err := exec.Command("qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", raw, path).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img convert %s %s: %v: %s", raw, path, err, out)
		}
	}
	e.writeManifest(t, job, path)
	if !mtime.IsZero() {
		setMtime(t, path, mtime)
	}
	return path
}

// writeManifest writes the manifest of the chain point at path (read with
// qemu-img convert) as the job's manifest, as a target's close does, and
// returns its SHA-256.
func (e *svcEnv) writeManifest(t *testing.T, job, path string) manifest.Digest {
	t.Helper()
	raw := filepath.Join(t.TempDir(), job+".raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", path, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v: %s", path, err, out)
	}
	m, err := manifest.HashFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	mpath, err := e.repo.ManifestPath(testVM, testDisk, job)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := manifest.Write(mpath, m)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(raw)
	return sum
}

func setMtime(t *testing.T, path string, mtime time.Time) {
	t.Helper()
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

// counter reads a counter of the service's registry (0 when absent).
func (e *svcEnv) counter(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metric
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
