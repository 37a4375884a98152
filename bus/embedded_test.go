package bus_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

func TestEmbeddedInProcessOnly(t *testing.T) {
	log := bustest.Logger(t)
	dir := t.TempDir()
	e, err := bus.StartEmbedded(testCtx(t), bus.EmbeddedOptions{DataDir: dir, Listen: bus.ListenNone, NoAuth: true, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown()
	if u := e.ClientURL(); u != "" {
		t.Errorf("ClientURL = %q, want none", u)
	}
	if got, want := e.StoreDir(), dir+"/jetstream"; got != want {
		t.Errorf("StoreDir = %s, want %s", got, want)
	}
	nc, err := e.Connect(log, bus.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ensureStreams(t, js)
	cfg := e.Server().JetStreamConfig()
	if cfg == nil || cfg.MaxStore != bus.DefaultMaxStore || cfg.MaxMemory != bus.DefaultMaxMemory || !cfg.SyncAlways {
		t.Errorf("jetstream config %+v, want the documented limits and sync always", cfg)
	}
}

func TestEmbeddedOptionErrors(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	tests := []struct {
		name string
		opts bus.EmbeddedOptions
	}{
		{"no data dir", bus.EmbeddedOptions{Listen: "127.0.0.1:-1", NoAuth: true}},
		{"listen without port", bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: "127.0.0.1", NoAuth: true}},
		{"port not a number", bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:x", NoAuth: true}},
		{"cluster without name", bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:-1", ClusterListen: "127.0.0.1:-1", NoAuth: true}},
		{"port in use", bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: taken.Addr().String(), NoAuth: true}},
		// Secure by default: users are required, and the network needs TLS.
		{"no users", bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:-1"}},
		{"all interfaces without tls", bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: "0.0.0.0:-1", Users: someUsers(t)}},
		{"cluster routes off loopback without tls", bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:-1", Users: someUsers(t),
			ClusterName: "c", ClusterListen: "0.0.0.0:-1"}},
		{"no auth off loopback even if insecure", bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: "0.0.0.0:-1", NoAuth: true, Insecure: true}},
	}
	for _, tt := range tests {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tt.opts.Log = bustest.Logger(t)
		e, err := bus.StartEmbedded(ctx, tt.opts)
		cancel()
		if err == nil {
			e.Shutdown()
			t.Errorf("%s: StartEmbedded succeeded", tt.name)
		}
	}
}

func TestConnectWaitsForServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	log := bustest.Logger(t)

	type result struct {
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		nc, err := bus.Connect(ctx, bus.Options{URLs: []string{"nats://" + addr}}, log)
		if err == nil {
			defer nc.Close()
			_, err = nc.RTT()
		}
		done <- result{err}
	}()
	time.Sleep(500 * time.Millisecond)
	e, err := bus.StartEmbedded(testCtx(t), bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: addr, NoAuth: true, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown()
	if r := <-done; r.err != nil {
		t.Fatalf("Connect to a server that came up later: %v", r.err)
	}
}

func TestConnectErrors(t *testing.T) {
	log := bustest.Logger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	// Both the daemon's wait and a client's fail-fast name the refused
	// dial, not "no servers" or "last error: <nil>".
	nc, err := bus.Connect(ctx, bus.Options{URLs: []string{"nats://127.0.0.1:1"}}, log)
	if err == nil {
		nc.Close()
		t.Error("Connect to nothing succeeded")
	} else if !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("Connect to nothing: %v, want the refused dial and the URL", err)
	}
	// FailFast returns on its own, long before testCtx ends.
	nc, err = bus.Connect(testCtx(t), bus.Options{URLs: []string{"nats://127.0.0.1:1"}, FailFast: true}, log)
	if err == nil {
		nc.Close()
		t.Error("Connect with FailFast to nothing succeeded")
	} else if !errors.Is(err, syscall.ECONNREFUSED) || !errors.Is(err, nats.ErrNoServers) {
		t.Errorf("Connect with FailFast to nothing: %v, want the refused dial", err)
	}
	for _, opts := range []bus.Options{
		{Creds: "/nonexistent.creds", User: "u"},
		{TLSCert: "c.pem"},
		{NKeyFile: "/nonexistent.nk"},
	} {
		if nc, err := bus.Connect(testCtx(t), opts, log); err == nil {
			nc.Close()
			t.Errorf("Connect(%+v) succeeded", opts)
		}
	}
}

func TestCluster(t *testing.T) {
	c := bustest.Cluster(t, 3)
	ctx := testCtx(t)
	if err := bus.EnsureStreams(ctx, c.JS, bus.StreamOptions{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{bus.StreamRequests, bus.StreamEvents, bus.StreamProgress} {
		st, err := c.JS.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info := st.CachedInfo()
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Errorf("stream %s: replicas %d, cluster %+v; want 3 copies", name, info.Config.Replicas, info.Cluster)
		}
	}
	// Many publishers race with one message (a retried publish): all
	// succeed, one message is stored (this is where "duplicate message id
	// is in process" can show up). Other bytes under the same id are
	// refused.
	pub := bus.NewPublisher(c.JS, testSource, bustest.Logger(t))
	subject := bus.AgentSubject(schemas.NameStarted, "test-agent")
	const racers = 8
	errs := make(chan error, racers)
	for range racers {
		go func() {
			_, err := pub.Publish(ctx, subject, "race.1.started.0.0", "backup.started", []byte(`{"n":0}`))
			errs <- err
		}()
	}
	for range racers {
		if err := <-errs; err != nil {
			t.Errorf("racing publish: %v", err)
		}
	}
	if _, err := pub.Publish(ctx, subject, "race.1.started.0.0", "backup.started", []byte(`{"n":1}`)); !errors.Is(err, bus.ErrDuplicateMsgID) {
		t.Errorf("other bytes under the same id: %v, want ErrDuplicateMsgID", err)
	}
	if n := streamMsgs(t, c.JS, bus.StreamEvents); n != 1 {
		t.Errorf("events stream has %d messages, want 1", n)
	}
	// Leases on a replicated bucket.
	l, err := bus.NewLeases(ctx, c.JS, "", leaseTTL, bus.LeaseReplicas(3))
	if err != nil {
		t.Fatal(err)
	}
	a := acquire(t, ctx, l, bus.VMLeaseKey("vm-1"), "a")
	wantHeld(t, l, bus.VMLeaseKey("vm-1"), "a")
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestEmbeddedInsecureIsLoud: a server listening off loopback without TLS
// starts only with Insecure, and says so at error level.
func TestEmbeddedInsecureIsLoud(t *testing.T) {
	var logs strings.Builder
	var mu sync.Mutex
	w := zerolog.SyncWriter(writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return logs.Write(p) }))
	e, err := bus.StartEmbedded(testCtx(t), bus.EmbeddedOptions{DataDir: t.TempDir(), Listen: "0.0.0.0:-1", Users: someUsers(t),
		Insecure: true, Log: zerolog.New(w)})
	if err != nil {
		t.Fatal(err)
	}
	e.Shutdown()
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), `"level":"error"`) || !strings.Contains(logs.String(), "INSECURE") {
		t.Errorf("no loud line for an insecure listener:\n%s", logs.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
