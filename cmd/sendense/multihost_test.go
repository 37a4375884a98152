package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/agents/simctl"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/internal/netlab"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/schemas"
)

// lab is the topology running in network namespaces: one host per
// service, the test attached to the core network as an operator's
// workstation.
type lab struct {
	t     *testing.T
	net   *netlab.Lab
	hosts map[string]*netlab.Host
	procs map[string]*proc
	bin   string
	admin *nats.Conn
	mu    sync.Mutex
}

// TestMultiHost runs the topology across network namespaces: a 3-node
// nats-server cluster (separate processes, TLS, role credentials), the hub
// and the catalog (two processes on one host), two agents in private mount namespaces next to a
// simulated vCenter that only they can reach, and restores from a fifth
// host. Every role starts at once, before the cluster has formed. A full
// backup of two VMs loses the leader of the events stream and the agent of
// one VM mid-copy; every job still ends completed, or failed with a reason
// and completed by a retry. Incrementals follow, and every point restored
// on the restore host equals the simulated vCenter's frozen image.
func TestMultiHost(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"qemu-img", "qemu-nbd", "nbdkit"} {
		testutil.RequireTool(t, tool)
	}
	began := time.Now()
	l := startLab(t)
	// About 40 s alone on 2 cores, 8 s of it the redelivery of the lost
	// agent's request (fastFailover); the bound leaves room for a loaded
	// CI machine.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t.Logf("lab up, every role ready: %v", time.Since(began).Round(100*time.Millisecond))

	l.checkSeparation(ctx)

	cat := catalog.NewClient(l.admin)
	sim := simctl.NewClient(l.admin)
	vms := []string{"pgtest1", "pgtest2"}

	// Full backups of both VMs; both agents copy at once.
	full := map[string]string{}
	for _, vm := range vms {
		full[vm] = l.backup(ctx, vm, "full", "full-"+vm)
	}
	victim := l.firstCopying(ctx, cat, full)
	leader := l.streamLeader(ctx, bus.StreamEvents)
	t.Logf("mid-copy: killing agent %s (job %s) and %s, leader of %s", victim.Agent, victim.ID, leader, bus.StreamEvents)
	l.procs[victim.Agent].kill()
	l.procs[leader].kill()
	l.start(leader) // the node comes back; the cluster kept quorum meanwhile
	for vm, id := range full {
		j := l.settle(ctx, cat, vm, id)
		full[vm] = j.ID
		t.Logf("%s: job %s %s by %s at attempt %d (%d failed attempts)", vm, j.ID, j.Status, j.Agent, j.Attempt, j.FailedAttempts)
	}
	t.Logf("full backups settled: %v", time.Since(began).Round(100*time.Millisecond))

	// Guest writes, then incrementals.
	for i, vm := range vms {
		if _, err := sim.Write(ctx, simctl.WriteRequest{VM: vm, Percent: 2, Seed: int64(40 + i)}); err != nil {
			t.Fatalf("guest writes on %s: %v", vm, err)
		}
	}
	incr := map[string]string{}
	for _, vm := range vms {
		incr[vm] = l.settle(ctx, cat, vm, l.backup(ctx, vm, "incremental", "incr-"+vm)).ID
	}
	for _, vm := range vms {
		j, err := cat.Job(ctx, incr[vm])
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range j.Disks {
			if d.BackupType != "incremental" {
				t.Errorf("second backup of %s disk %d is %s (%s), want incremental", vm, d.Disk.Key, d.BackupType, d.Reason)
			}
		}
	}

	t.Logf("incrementals completed: %v", time.Since(began).Round(100*time.Millisecond))

	// Every point restores identically on the restore host.
	for _, ids := range []map[string]string{full, incr} {
		for vm, id := range ids {
			l.restoreAndCompare(ctx, cat, sim, vm, id)
		}
	}
	t.Logf("every point restored and compared: %v", time.Since(began).Round(100*time.Millisecond))
}

// startLab makes the namespaces, runs the init steps on the hub's data
// directory (exporting each other service's files into its host's), and
// starts every service at once.
func startLab(t *testing.T) *lab {
	t.Helper()
	nl := netlab.New(t)
	for name, cidr := range topology.Nets {
		nl.Net(name, cidr)
	}
	l := &lab{t: t, net: nl, hosts: map[string]*netlab.Host{}, procs: map[string]*proc{}, bin: sendenseBin(t)}
	for _, s := range topology.Services {
		if s.Host == "" {
			l.hosts[s.Name] = nl.HostAt(s.Name, s.Num, s.Nets...)
		}
	}
	l.hosts["restore"] = nl.HostAt("restore", 50, "core")
	nl.Attach("core", 250)
	for name, h := range l.hosts {
		// Each host runs its own hard link of the binary: the test's
		// build directory is hidden from isolated processes.
		if err := os.Link(l.bin, filepath.Join(h.Dir, "sendense")); err != nil {
			t.Fatalf("link the binary onto %s: %v", name, err)
		}
	}

	hub := l.dataDir("hub")
	for _, step := range topology.Init {
		l.initStep(step, hub)
	}
	// The operator's workstation (the restore host) requests backups and
	// restores: the requester's and the admin's seeds.
	for _, role := range []string{"requester", "admin"} {
		mustCLI(t, "--data", hub, "creds", "export", "--role", role, "--out", l.dataDir("restore"))
	}

	for _, s := range topology.Services {
		l.start(s.Name)
	}
	l.admin = l.connect(t, "restore", bus.Identity{Role: bus.RoleAdmin})
	waitCatalog(t, l.admin, l.procs["catalog"])
	for {
		if _, err := simctl.NewClient(l.admin).VMs(context.Background()); err == nil {
			break
		}
		if p := l.procs["vcenter"]; p.exited() {
			t.Fatalf("vcenter-sim exited: %v", p.state)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return l
}

// initStep runs one step of the init service with --data hub.
func (l *lab) initStep(step initStep, hub string) {
	l.t.Helper()
	if len(step.Secret) > 0 {
		secret := make([]byte, 18)
		if _, err := rand.Read(secret); err != nil {
			l.t.Fatal(err)
		}
		for _, f := range step.Secret {
			path := expandOne(f, hub, l.dataDir)
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				l.t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(secret)+"\n"), 0o600); err != nil {
				l.t.Fatal(err)
			}
		}
		return
	}
	out := mustCLI(l.t, append([]string{"--data", hub}, expand(step.Args, hub, l.dataDir)...)...)
	if step.Stdout != "" {
		path := expandOne(step.Stdout, hub, l.dataDir)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			l.t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
			l.t.Fatal(err)
		}
	}
}

// host is the host service name runs on.
func (l *lab) host(name string) *netlab.Host {
	if name != "restore" {
		if s := byName(name); s.Host != "" {
			return l.hosts[s.Host]
		}
	}
	return l.hosts[name]
}

// dataDir is where service name keeps its data: in its host's own
// directory, the only one the host's isolated processes see ("data", or
// the service's name for a service sharing another's host).
func (l *lab) dataDir(name string) string {
	if name != "restore" && byName(name).Host != "" {
		return filepath.Join(l.host(name).Dir, name)
	}
	return filepath.Join(l.host(name).Dir, "data")
}

// start starts (or restarts) service name on its host: a nats-server in
// the host's network namespace, in its data directory; a sendense role
// also in a private mount namespace that shows it only its host's
// directory.
func (l *lab) start(name string) {
	l.t.Helper()
	s := byName(name)
	h := l.host(name)
	data := l.dataDir(name)
	args := expand(s.Args, data, l.dataDir)
	if name == "hub" {
		args = append(args, fastFailover...)
	}
	var cmd *exec.Cmd
	if s.Image == "nats" {
		cmd = h.Command(false, append([]string{bustest.NatsServerBinary(l.t)}, args...)...)
		cmd.Dir = data
	} else {
		cmd = h.Command(true, append([]string{filepath.Join(h.Dir, "sendense")}, args...)...)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.procs[name] = startCmd(l.t, name, cmd)
}

// connect connects the test to the cluster as id with host's seed.
func (l *lab) connect(t *testing.T, host string, id bus.Identity) *nats.Conn {
	t.Helper()
	data := l.dataDir(host)
	opts := bus.Creds{Dir: filepath.Join(data, "creds")}.Options(id)
	opts.URLs = []string{natsURLs}
	opts.TLSCA = filepath.Join(data, "tls", "ca.pem")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nc, err := bus.Connect(ctx, opts, testLog(t))
	if err != nil {
		t.Fatalf("connect to the lab's cluster as %s: %v", id, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// checkSeparation proves what the hosts cannot reach: the agents do not
// see the hub's files (its data directory, its repository, its /tmp), and
// the hub cannot open a connection to the simulated vCenter.
func (l *lab) checkSeparation(ctx context.Context) {
	l.t.Helper()
	hubTmp, err := os.MkdirTemp("", "hub-private-")
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { _ = os.RemoveAll(hubTmp) })
	for _, agent := range []string{"agent1", "agent2"} {
		pid := l.procs[agent].cmd.Process.Pid
		for _, path := range []string{l.hosts["hub"].Dir, l.dataDir("hub"), filepath.Join(l.dataDir("hub"), "repo"), l.dataDir("catalog"), hubTmp} {
			if seen, err := netlab.Sees(pid, path); err != nil || seen {
				l.t.Errorf("%s sees %s (err %v)", agent, path, err)
			}
		}
		if seen, _ := netlab.Sees(pid, l.dataDir(agent)); !seen {
			l.t.Errorf("%s does not see its own data directory", agent)
		}
	}
	vc := byName("vcenter")
	sdk := strings.Split(vc.Args[slices.Index(vc.Args, "--listen")+1], ":")
	out, err := l.hosts["hub"].Run(ctx, "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%s", sdk[0], sdk[1]))
	if err == nil {
		l.t.Errorf("the hub reached the simulated vCenter at %s: %s", strings.Join(sdk, ":"), out)
	}
}

// backup requests a backup as job id from the restore host with the CLI.
func (l *lab) backup(ctx context.Context, vm, typ, id string) string {
	l.t.Helper()
	l.cli(ctx, "restore", "backup", "--vm", vm, "--type", typ, "--job-id", id)
	return id
}

// cli runs a sendense client command on host (isolated) against the lab's
// cluster, with the seeds in the host's data directory.
func (l *lab) cli(ctx context.Context, host string, args ...string) string {
	l.t.Helper()
	data := l.dataDir(host)
	argv := append([]string{filepath.Join(l.hosts[host].Dir, "sendense"), "--data", data, "--log-format", "json",
		"--nats-url", natsURLs}, args...)
	cmd := l.hosts[host].Command(true, argv...)
	var stdout, stderr testutil.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := runCtx(ctx, cmd); err != nil {
		l.t.Fatalf("sendense %s on %s: %v\n%s", strings.Join(args, " "), host, err, stderr.String())
	}
	return stdout.String()
}

// firstCopying waits for the first progress event of one of jobs that
// is neither the first nor the last of its copy, and returns that job as
// the catalog has it then (with the agent that runs it).
func (l *lab) firstCopying(ctx context.Context, cat *catalog.Client, jobs map[string]string) backup.Job {
	l.t.Helper()
	ours := map[string]bool{}
	for _, id := range jobs {
		ours[id] = true
	}
	progress := make(chan schemas.Progress, 64)
	sub, err := l.admin.Subscribe(bus.SubjectProgressAll, func(m *nats.Msg) {
		var p schemas.Progress
		if json.Unmarshal(m.Data, &p) == nil {
			select {
			case progress <- p:
			default:
			}
		}
	})
	if err != nil {
		l.t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	for {
		select {
		case p := <-progress:
			if !ours[p.JobID] || p.BytesDone == 0 || p.BytesDone >= p.BytesTotal {
				continue
			}
			j, err := cat.Job(ctx, p.JobID)
			if err != nil || j.Status != "running" || j.Agent == "" {
				continue
			}
			l.t.Logf("job %s of %s: %d of %d bytes copied by %s", j.ID, j.VM.Name, p.BytesDone, p.BytesTotal, j.Agent)
			return j
		case <-ctx.Done():
			l.t.Fatalf("no job copying: %v", ctx.Err())
			return backup.Job{}
		}
	}
}

// streamLeader is the name of the node leading stream.
func (l *lab) streamLeader(ctx context.Context, stream string) string {
	l.t.Helper()
	js, err := jetstream.New(l.admin)
	if err != nil {
		l.t.Fatal(err)
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		l.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
		l.t.Fatalf("leader of %s: %v", stream, err)
	}
	return info.Cluster.Leader
}

// settle waits until job id of vm ends: completed, or failed with a reason
// — then a retry must complete — and returns the completed job.
func (l *lab) settle(ctx context.Context, cat *catalog.Client, vm, id string) backup.Job {
	l.t.Helper()
	for ctx.Err() == nil {
		j, err := cat.Job(ctx, id)
		if err != nil && ctx.Err() == nil {
			l.t.Logf("job %s of %s: %v; asking again", id, vm, err)
		}
		if err == nil {
			switch j.Status {
			case "completed":
				return j
			case "failed":
				if j.Failure == nil || j.Failure.Reason == "" {
					l.t.Fatalf("job %s of %s failed without a reason: %+v", id, vm, j)
				}
				l.t.Logf("job %s of %s failed (%s); retrying", id, vm, j.Failure.Reason)
				id = l.backup(ctx, vm, "full", id+"-retry")
				continue
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	l.t.Fatalf("job %s of %s did not end: %v", id, vm, ctx.Err())
	return backup.Job{}
}

// restoreAndCompare restores every disk of job id on the restore host and
// compares it with the simulated vCenter's frozen image of that point.
func (l *lab) restoreAndCompare(ctx context.Context, cat *catalog.Client, sim *simctl.Client, vm, id string) {
	l.t.Helper()
	j, err := cat.Job(ctx, id)
	if err != nil {
		l.t.Fatal(err)
	}
	for _, d := range j.Disks {
		key := d.Disk.Key
		to := filepath.Join(l.dataDir("restore"), fmt.Sprintf("%s-%d.raw", id, key))
		began := time.Now()
		l.cli(ctx, "restore", "restore", "--job", id, "--disk", fmt.Sprint(key), "--to", to)
		restored := time.Since(began)
		frozen, err := sim.Frozen(ctx, vm, "sendense-"+id, key)
		if err != nil {
			l.t.Fatal(err)
		}
		out, err := exec.CommandContext(ctx, "qemu-img", "compare", "-f", "raw", "-F", "raw", frozen.Path, to).CombinedOutput()
		if err != nil {
			l.t.Errorf("restore of %s disk %d differs from the frozen image: %v: %s", id, key, err, out)
		}
		l.t.Logf("job %s disk %d: restored in %v, compared in %v", id, key, restored.Round(10*time.Millisecond), (time.Since(began) - restored).Round(10*time.Millisecond))
		_ = os.Remove(to)
	}
}

// runCtx runs cmd, killing it when ctx ends.
func runCtx(ctx context.Context, cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return ctx.Err()
	}
}
