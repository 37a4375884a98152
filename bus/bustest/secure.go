package bustest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/bus"
)

// Secure is a NATS server that admits only the identities of Creds, each
// with the permissions of its role, as `sendense serve` runs it.
type Secure struct {
	// Kind is "embedded" or "external" (a nats-server process configured
	// with bus.ServerConfig).
	Kind string
	// URL is the client URL.
	URL string
	// Creds holds a seed for every role and for each agent named at start.
	Creds bus.Creds
	// Embedded is the server for Kind "embedded".
	Embedded *Server
}

// SecureFunc starts a Secure server for a test.
type SecureFunc func(tb testing.TB, agents ...string) *Secure

// SecureImpls are the ways ForEachSecure runs: embedded and external.
func SecureImpls() map[string]SecureFunc {
	return map[string]SecureFunc{"embedded": SecureEmbedded, "external": SecureExternal}
}

// ForEachSecure runs fn as a subtest once per secured implementation.
func ForEachSecure(t *testing.T, fn func(t *testing.T, start SecureFunc)) {
	t.Helper()
	for _, name := range []string{"embedded", "external"} {
		start := SecureImpls()[name]
		t.Run(name, func(t *testing.T) { fn(t, start) })
	}
}

// secureCreds makes a seed for every role and for agents in a temp dir.
func secureCreds(tb testing.TB, agents []string) (bus.Creds, []bus.User) {
	tb.Helper()
	c := bus.Creds{Dir: filepath.Join(tb.TempDir(), "creds")}
	ids := []bus.Identity{}
	for _, r := range bus.Roles() {
		ids = append(ids, bus.Identity{Role: r})
	}
	for _, a := range agents {
		ids = append(ids, bus.AgentIdentity(a))
	}
	if err := c.Ensure(ids...); err != nil {
		tb.Fatalf("make credentials: %v", err)
	}
	users, err := c.Users()
	if err != nil {
		tb.Fatalf("read credentials: %v", err)
	}
	return c, users
}

// SecureEmbedded starts an embedded server (bus.StartEmbedded with Users)
// on 127.0.0.1 and a random port; stopped in cleanup.
func SecureEmbedded(tb testing.TB, agents ...string) *Secure {
	tb.Helper()
	c, users := secureCreds(tb, agents)
	dir := tb.TempDir()
	e := startEmbedded(tb, bus.EmbeddedOptions{DataDir: dir, Listen: "127.0.0.1:-1", Users: users, Log: Logger(tb)})
	return &Secure{Kind: "embedded", URL: e.ClientURL(), Creds: c, Embedded: &Server{Kind: "embedded", URL: e.ClientURL(), DataDir: dir, Embedded: e}}
}

// SecureExternal starts a nats-server process whose configuration is the
// authorization block bus.ServerConfig prints, plus JetStream with every
// write synced: what a user of an external NATS configures. Stopped in
// cleanup.
func SecureExternal(tb testing.TB, agents ...string) *Secure {
	tb.Helper()
	c, users := secureCreds(tb, agents)
	return &Secure{Kind: "external", URL: ExternalWithConfig(tb, bus.ServerConfig(users)), Creds: c}
}

// Conn is a test connection as one identity.
type Conn struct {
	*nats.Conn
	JS jetstream.JetStream
}

// Connect connects as id with its seed, closed in cleanup.
func (s *Secure) Connect(tb testing.TB, id bus.Identity) *Conn {
	tb.Helper()
	opts := s.Creds.Options(id)
	opts.URLs = []string{s.URL}
	return connectOpts(tb, opts)
}

// ConnectAnonymous connects without credentials; it returns the error.
func (s *Secure) ConnectAnonymous(tb testing.TB) error {
	tb.Helper()
	nc, err := nats.Connect(s.URL, nats.Timeout(5*time.Second))
	if err == nil {
		nc.Close()
	}
	return err
}

func connectOpts(tb testing.TB, opts bus.Options) *Conn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := bus.Connect(ctx, opts, Logger(tb))
	if err != nil {
		tb.Fatalf("connect as %s: %v", opts.Name, err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return &Conn{Conn: nc, JS: js}
}

// writeConf writes a nats-server configuration file.
func writeConf(tb testing.TB, dir, text string) string {
	tb.Helper()
	path := filepath.Join(dir, "nats-server.conf")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		tb.Fatalf("write nats-server config: %v", err)
	}
	return path
}

// ExternalWithConfig runs a nats-server process configured with conf (for
// example the authorization block `sendense creds server-config` prints)
// plus JetStream with every write synced, on 127.0.0.1 and a random port,
// stopped in cleanup. It returns the client URL.
func ExternalWithConfig(tb testing.TB, conf string) string {
	tb.Helper()
	conf += "\njetstream {\n  sync_interval: always\n}\n"
	return startExternalConf(tb, NatsServerBinary(tb), tb.TempDir(), -1, conf, Logger(tb)).url
}

// ExternalWithConfigNoSync is ExternalWithConfig with the server's
// default sync interval instead of a sync per write: for benchmarks that
// must store many messages fast, never for a test of durability. The
// server's log is discarded.
func ExternalWithConfigNoSync(tb testing.TB, conf string) string {
	tb.Helper()
	return startExternalConf(tb, NatsServerBinary(tb), tb.TempDir(), -1, conf, zerolog.Nop()).url
}

// RoleCreds makes a seed for every role and for each agent in a temp dir
// and returns them with the users a server admits (for WriteClusterConfig
// and NewTLSCluster).
func RoleCreds(tb testing.TB, agents ...string) (bus.Creds, []bus.User) {
	tb.Helper()
	return secureCreds(tb, agents)
}
