package bustest

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/sendense/sendense/bus"
)

// Server is a NATS server started for one test, with a client connection.
type Server struct {
	// Kind is "embedded" or "external".
	Kind string
	// URL is the client URL (nats://127.0.0.1:<port>).
	URL string
	// DataDir is the server's state directory (a t.TempDir()).
	DataDir string
	// Conn is a TCP connection made with bus.Connect; it reconnects across
	// Restart. Closed in cleanup.
	Conn *nats.Conn
	// JS is jetstream.New(Conn).
	JS jetstream.JetStream
	// Embedded is the server for Kind "embedded", nil otherwise.
	Embedded *bus.Embedded

	restart func(tb testing.TB)
}

// Restart stops the server and starts it again on the same data directory
// and port; Conn reconnects by itself. An embedded server is shut down
// cleanly; an external one is killed with SIGKILL (a crash).
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.restart(tb)
}

// StartFunc starts a server for a test; Embedded and External are ones.
type StartFunc func(tb testing.TB) *Server

// Impl is a named way to run a server.
type Impl struct {
	Name  string
	Start StartFunc
}

// Impls returns the implementations ForEach runs: embedded, external.
func Impls() []Impl {
	return []Impl{{Name: "embedded", Start: Embedded}, {Name: "external", Start: External}}
}

// ForEach runs fn as a subtest once per implementation.
func ForEach(t *testing.T, fn func(t *testing.T, start StartFunc)) {
	t.Helper()
	for _, im := range Impls() {
		t.Run(im.Name, func(t *testing.T) { fn(t, im.Start) })
	}
}

// Embedded starts an embedded server (bus.StartEmbedded) with a
// t.TempDir() store on 127.0.0.1 and a random port, connects to it over
// TCP, and stops both in cleanup.
func Embedded(tb testing.TB) *Server {
	tb.Helper()
	log := Logger(tb)
	dir := tb.TempDir()
	e := startEmbedded(tb, bus.EmbeddedOptions{DataDir: dir, Listen: "127.0.0.1:-1", Log: log})
	s := &Server{Kind: "embedded", URL: e.ClientURL(), DataDir: dir, Embedded: e}
	hostPort := strings.TrimPrefix(s.URL, "nats://")
	s.restart = func(tb testing.TB) {
		tb.Helper()
		s.Embedded.Shutdown()
		s.Embedded = startEmbedded(tb, bus.EmbeddedOptions{DataDir: dir, Listen: hostPort, Log: log})
	}
	s.Conn, s.JS = connect(tb, log, s.URL)
	return s
}

func startEmbedded(tb testing.TB, opts bus.EmbeddedOptions) *bus.Embedded {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts.Log = opts.Log.Level(zerolog.InfoLevel) // the server's debug log is very chatty
	if len(opts.Users) == 0 {
		opts.NoAuth = true // tests of the bus's mechanics; Secured tests the roles
	}
	e, err := bus.StartEmbedded(ctx, opts)
	if err != nil {
		tb.Fatalf("start embedded nats server: %v", err)
	}
	tb.Cleanup(e.Shutdown)
	return e
}

// connect makes a bus.Connect connection to urls, closed in cleanup.
func connect(tb testing.TB, log zerolog.Logger, urls ...string) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := bus.Connect(ctx, bus.Options{URLs: urls, Name: "bustest"}, log)
	if err != nil {
		tb.Fatalf("connect to %v: %v", urls, err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// ClusterServers is a JetStream cluster of embedded servers.
type ClusterServers struct {
	Servers []*bus.Embedded
	URLs    []string
	// Conn is connected to all URLs; JS is jetstream.New(Conn). Nil for a
	// SecureCluster (connect with credentials instead).
	Conn *nats.Conn
	JS   jetstream.JetStream

	opts []bus.EmbeddedOptions // each server's, with its actual client port
}

// Cluster starts n embedded servers (names sendense-1..n) that form one
// JetStream cluster, each with its own t.TempDir() store and random client
// port, waits until the meta group has a leader and all n peers, and
// stops them in cleanup.
func Cluster(tb testing.TB, n int) *ClusterServers {
	tb.Helper()
	c := startCluster(tb, n, nil, nil)
	c.Conn, c.JS = connect(tb, Logger(tb), c.URLs...)
	return c
}

// ClusterWith is Cluster with each server's options passed through
// adjust (i from 0) before it starts, for example to put one server's
// DataDir on a testutil.Tmpfs or to shorten its StoreCheckInterval. adjust may be
// nil. Listen, ServerName, ClusterName, ClusterListen and Routes make the
// cluster: leave them.
func ClusterWith(tb testing.TB, n int, adjust func(i int, opts *bus.EmbeddedOptions)) *ClusterServers {
	tb.Helper()
	c := startCluster(tb, n, nil, adjust)
	c.Conn, c.JS = connect(tb, Logger(tb), c.URLs...)
	return c
}

// SecureCluster is Cluster with servers that admit only users, each with
// its role's permissions, as `sendense serve` runs them.
func SecureCluster(tb testing.TB, n int, users []bus.User) *ClusterServers {
	tb.Helper()
	return startCluster(tb, n, users, nil)
}

// SecureClusterWith is SecureCluster with each server's options passed
// through adjust (see ClusterWith), for example to give them one TLSDir.
func SecureClusterWith(tb testing.TB, n int, users []bus.User, adjust func(i int, opts *bus.EmbeddedOptions)) *ClusterServers {
	tb.Helper()
	return startCluster(tb, n, users, adjust)
}

func startCluster(tb testing.TB, n int, users []bus.User, adjust func(i int, opts *bus.EmbeddedOptions)) *ClusterServers {
	tb.Helper()
	log := Logger(tb)
	ports := make([]int, n)
	var routes []string
	for i := range n {
		ports[i] = freePort(tb)
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[i]))
	}
	c := &ClusterServers{}
	for i := range n {
		name := fmt.Sprintf("sendense-%d", i+1)
		opts := bus.EmbeddedOptions{
			DataDir:       tb.TempDir(),
			Listen:        fmt.Sprintf("127.0.0.1:%d", freePort(tb)),
			ServerName:    name,
			ClusterName:   "sendense-test",
			ClusterListen: fmt.Sprintf("127.0.0.1:%d", ports[i]),
			Routes:        routes,
			Users:         users,
			Log:           log.With().Str("node", name).Logger(),
		}
		if adjust != nil {
			adjust(i, &opts)
		}
		e := startEmbedded(tb, opts)
		c.Servers = append(c.Servers, e)
		c.URLs = append(c.URLs, e.ClientURL())
		c.opts = append(c.opts, opts)
	}
	c.waitReady(tb, n)
	return c
}

// Stop shuts server i down (its files stay).
func (c *ClusterServers) Stop(i int) { c.Servers[i].Shutdown() }

// Start starts server i again on its store and ports.
func (c *ClusterServers) Start(tb testing.TB, i int) {
	tb.Helper()
	c.Servers[i] = startEmbedded(tb, c.opts[i])
}

// waitReady waits until the meta group has a leader and all n peers.
func (c *ClusterServers) waitReady(tb testing.TB, n int) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !c.ready(n) {
		if time.Now().After(deadline) {
			tb.Fatalf("jetstream cluster of %d servers not ready after 30s", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *ClusterServers) ready(n int) bool {
	leaders := 0
	for _, e := range c.Servers {
		s := e.Server()
		if !s.JetStreamIsCurrent() {
			return false
		}
		if s.JetStreamIsLeader() {
			leaders++
			if len(s.JetStreamClusterPeers()) != n {
				return false
			}
		}
	}
	return leaders == 1
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Logger returns a logger writing through tb.Log at debug level. It drops
// everything once the test's cleanups have finished (it registers the
// first cleanup, which runs last), so callbacks that fire late never write
// to a finished test.
func Logger(tb testing.TB) zerolog.Logger {
	w := &quietWriter{w: zerolog.NewTestWriter(tb)}
	tb.Cleanup(w.stop)
	return zerolog.New(zerolog.ConsoleWriter{Out: w, NoColor: true, PartsExclude: []string{zerolog.TimestampFieldName}}).
		Level(zerolog.DebugLevel)
}

type quietWriter struct {
	mu      sync.Mutex
	w       io.Writer
	stopped bool
}

func (q *quietWriter) Write(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return len(p), nil
	}
	return q.w.Write(p)
}

func (q *quietWriter) stop() {
	q.mu.Lock()
	q.stopped = true
	q.mu.Unlock()
}
