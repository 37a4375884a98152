package hub_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/manifest"
	"github.com/sendense/sendense/repository"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

// TestConsumerProgress reads the catalog's consumer as the hub role, with
// the hub's permissions: not caught up while the consumer is missing,
// while an event waits to be delivered, or while a delivered one waits for
// its ack; caught up once it is acknowledged.
func TestConsumerProgress(t *testing.T) {
	s := bustest.SecureEmbedded(t, catalogtest.Agent)
	ctx := testCtx(t)
	if err := bus.EnsureStreams(ctx, s.Connect(t, bus.Identity{Role: bus.RoleAdmin}).JS, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	hubConn := s.Connect(t, bus.Identity{Role: bus.RoleHub})
	p := hub.NewConsumerProgress(hubConn.JS, "")

	if err := p.CaughtUp(ctx); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Errorf("CaughtUp without a catalog consumer: %v, want ErrConsumerNotFound", err)
	}
	catConn := s.Connect(t, bus.Identity{Role: bus.RoleCatalog})
	cons, err := bus.EnsureCatalogConsumer(ctx, catConn.JS, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CaughtUp(ctx); err != nil {
		t.Errorf("CaughtUp on an empty stream: %v", err)
	}

	agent := s.Connect(t, bus.AgentIdentity(catalogtest.Agent))
	j := catalogtest.Job{ID: "job-progress"}
	if err := catalogtest.Publish(ctx, catalogtest.Publisher(agent.JS, bustest.Logger(t)), j.Started()); err != nil {
		t.Fatal(err)
	}
	if err := p.CaughtUp(ctx); !errors.Is(err, hub.ErrCatalogBehind) {
		t.Errorf("CaughtUp with an event not delivered: %v, want ErrCatalogBehind", err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != 1 {
		t.Fatalf("fetched %d events, want 1 (%v)", len(msgs), batch.Error())
	}
	if err := p.CaughtUp(ctx); !errors.Is(err, hub.ErrCatalogBehind) {
		t.Errorf("CaughtUp with an event delivered, not acknowledged: %v, want ErrCatalogBehind", err)
	}
	if err := msgs[0].DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.CaughtUp(ctx); err != nil {
		t.Errorf("CaughtUp after the ack: %v", err)
	}

	// Right after a publish is acknowledged, the server may not count the
	// event in the consumer's NumPending yet: CaughtUp must still say
	// behind, every time. Each event is consumed before the next, so the
	// consumer is otherwise caught up.
	pub := catalogtest.Publisher(agent.JS, bustest.Logger(t))
	for i := range 100 {
		j := catalogtest.Job{ID: fmt.Sprintf("job-race-%d", i)}
		if err := catalogtest.Publish(ctx, pub, j.Started()); err != nil {
			t.Fatal(err)
		}
		if err := p.CaughtUp(ctx); !errors.Is(err, hub.ErrCatalogBehind) {
			t.Fatalf("CaughtUp right after publish %d: %v, want ErrCatalogBehind", i, err)
		}
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.CaughtUp(ctx); err != nil {
		t.Errorf("CaughtUp after every event was acknowledged: %v", err)
	}
}

// TestCheckOnlyAdmin: on a server with roles, admin may call
// sendense.repo.check; agents, requesters and monitors may not (their
// request never reaches the service).
func TestCheckOnlyAdmin(t *testing.T) {
	s := bustest.SecureEmbedded(t, "node1")
	ctx := testCtx(t)
	hubConn := s.Connect(t, bus.Identity{Role: bus.RoleHub})
	repo, err := repository.Open(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := hub.NewRepoService(hub.RepoOptions{
		Repositories: map[string]*repository.Repo{testRepo: repo}, ReconcileInterval: -1,
		Catalog: newFakeCatalog(), Log: bustest.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := svc.Serve(sctx, hubConn.Conn, ready); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	<-ready

	admin := repoapi.NewClient(s.Connect(t, bus.Identity{Role: bus.RoleAdmin}).Conn)
	rep, err := admin.Check(ctx, repoapi.CheckRequest{DryRun: true})
	if err != nil {
		t.Fatalf("admin's check: %v", err)
	}
	if rep.OrphansSkipped == "" {
		t.Errorf("check without leases or progress looked for orphans: %+v", rep)
	}
	for _, id := range []bus.Identity{bus.AgentIdentity("node1"), {Role: bus.RoleRequester}, {Role: bus.RoleMonitor}} {
		c := s.Connect(t, id)
		cl := repoapi.NewClient(c.Conn)
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		_, err := cl.Check(cctx, repoapi.CheckRequest{})
		ccancel()
		if err == nil {
			t.Errorf("%s called sendense.repo.check", id)
		}
		_ = c.Flush()
		if le := c.LastError(); !errors.Is(le, nats.ErrPermissionViolation) || !strings.Contains(le.Error(), repoapi.SubjectCheck) {
			t.Errorf("%s calling check: last error %v, want a permission violation on %s", id, le, repoapi.SubjectCheck)
		}
	}
	// Verify and manifest reads are admin's too.
	if _, err := admin.Verify(ctx, repoapi.VerifyRequest{JobID: "job-unknown"}); !errors.Is(err, repoapi.ErrNotFound) {
		t.Errorf("admin's verify of an unknown job: %v, want ErrNotFound", err)
	}
	for _, id := range []bus.Identity{bus.AgentIdentity("node1"), {Role: bus.RoleRequester}, {Role: bus.RoleMonitor}, {Role: bus.RoleCatalog}} {
		for _, call := range []struct {
			subject string
			do      func(context.Context, *repoapi.Client) error
		}{
			{repoapi.SubjectVerify, func(ctx context.Context, c *repoapi.Client) error {
				_, err := c.Verify(ctx, repoapi.VerifyRequest{All: true})
				return err
			}},
			{repoapi.SubjectManifest, func(ctx context.Context, c *repoapi.Client) error {
				_, _, err := c.Manifest(ctx, ref("job-x"))
				return err
			}},
		} {
			c := s.Connect(t, id)
			cctx, ccancel := context.WithTimeout(ctx, time.Second)
			err := call.do(cctx, repoapi.NewClient(c.Conn))
			ccancel()
			if err == nil {
				t.Errorf("%s called %s", id, call.subject)
			}
			_ = c.Flush()
			if le := c.LastError(); !errors.Is(le, nats.ErrPermissionViolation) || !strings.Contains(le.Error(), call.subject) {
				t.Errorf("%s calling %s: last error %v, want a permission violation", id, call.subject, le)
			}
		}
	}
	// Agents still reach the target endpoints, digests included (no
	// target is open: not found, no permission violation).
	agentConn := s.Connect(t, bus.AgentIdentity("node1"))
	agent := repoapi.NewClient(agentConn.Conn)
	if _, err := agent.Info(ctx, testRepo); err != nil {
		t.Errorf("agent's info: %v", err)
	}
	if err := agent.Digests(ctx, ref("job-x"), []manifest.Entry{{Index: 0}}); !errors.Is(err, repoapi.ErrNotFound) {
		t.Errorf("agent's digests for no open target: %v, want ErrNotFound", err)
	}
	_ = agentConn.Flush()
	if le := agentConn.LastError(); le != nil {
		t.Errorf("agent's digests: last error %v", le)
	}
}

// TestReconcileWithCatalog runs reconciliation against the real catalog
// (bbolt, consumer and service on NATS) and the real progress of its
// consumer: the partial file of a failed job goes, a completed job's file
// stays, and a completed event stored while the catalog's consumer is
// stopped (its service still answering, from a catalog that lacks it)
// keeps the round from removing anything until the catalog has applied it.
func TestReconcileWithCatalog(t *testing.T) {
	vm := catalogtest.VM(0)
	disk := catalogtest.Disk(0, 0)
	var rc *runningCatalog
	e := newSvcEnvWith(t, func(e *svcEnv, o *hub.RepoOptions) {
		if err := bus.EnsureStreams(testCtx(t), e.nats.JS, bus.StreamOptions{}); err != nil {
			t.Fatal(err)
		}
		rc = startCatalog(t, e.nats)
		o.Catalog = catalog.NewClient(e.nats.Conn)
		o.Progress = hub.NewConsumerProgress(e.nats.JS, "")
		o.ReconcileGrace = time.Hour
	})
	ctx := testCtx(t)
	pub := catalogtest.Publisher(e.nats.JS, bustest.Logger(t))
	file := func(job string) string {
		p, err := e.repo.Create(ctx, vm.UUID, disk.Key, job, testCapacity, "")
		if err != nil {
			t.Fatal(err)
		}
		setMtime(t, p, old)
		return p
	}
	failed, done, late := file("job-failed"), file("job-done"), file("job-late")
	evs := append(catalogtest.Job{ID: "job-failed"}.FailedRun(false), catalogtest.Job{ID: "job-done"}.Run()...)
	if err := catalogtest.Publish(ctx, pub, evs...); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, hub.NewConsumerProgress(e.nats.JS, ""))
	// job-late's events are stored while the catalog's consumer is down.
	rc.stopConsumer()
	if err := catalogtest.Publish(ctx, pub, catalogtest.Job{ID: "job-late"}.Run()...); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Reconcile(ctx); err == nil {
		t.Fatalf("reconciliation ran with the catalog stopped and events pending")
	}
	for _, p := range []string{failed, done, late} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("file removed by a skipped round: %v", err)
		}
	}
	if j, err := catalog.NewClient(e.nats.Conn).Job(ctx, "job-late"); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("job-late in the catalog before its consumer runs again: %+v, %v", j, err)
	}
	rc.startConsumer(t, e.nats)
	waitCaughtUp(t, hub.NewConsumerProgress(e.nats.JS, ""))
	orphans, err := e.svc.Reconcile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(orphans) != 1 || orphans[0].JobID != "job-failed" || !orphans[0].Removed {
		t.Errorf("orphans %+v, want job-failed removed", orphans)
	}
	assertNoFile(t, failed)
	for _, p := range []string{done, late} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("completed backup removed: %v", err)
		}
	}
	j, err := catalog.NewClient(e.nats.Conn).Job(ctx, "job-late")
	if err != nil || j.Status != backup.StatusCompleted || j.Repository != schemas.DefaultRepository {
		t.Errorf("job-late in the catalog: %+v, %v", j, err)
	}
}

// runningCatalog is a catalog consumer and service on a test server.
type runningCatalog struct {
	cat    *store.Catalog
	svc    interface{ Stop() error }
	cancel context.CancelFunc
	done   chan struct{}
}

func startCatalog(t *testing.T, ns *bustest.Server) *runningCatalog {
	t.Helper()
	cat, err := store.Open(filepath.Join(t.TempDir(), "catalog.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cat.Close() })
	svc, err := catalog.Serve(ns.Conn, cat, bustest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	rc := &runningCatalog{cat: cat, svc: svc}
	rc.startConsumer(t, ns)
	t.Cleanup(func() {
		rc.stopConsumer()
		_ = svc.Stop()
	})
	return rc
}

// startConsumer runs the catalog's consumer until stopConsumer.
func (rc *runningCatalog) startConsumer(t *testing.T, ns *bustest.Server) {
	ctx, cancel := context.WithCancel(context.Background())
	rc.cancel, rc.done = cancel, make(chan struct{})
	go func() {
		defer close(rc.done)
		if err := catalog.Run(ctx, ns.JS, rc.cat, catalog.Options{Log: bustest.Logger(t)}); err != nil {
			t.Errorf("catalog: %v", err)
		}
	}()
}

func (rc *runningCatalog) stopConsumer() {
	if rc.cancel != nil {
		rc.cancel()
		<-rc.done
		rc.cancel = nil
	}
}

func waitCaughtUp(t *testing.T, p hub.CatalogProgress) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := p.CaughtUp(testCtx(t))
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("catalog not caught up after 20 s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
