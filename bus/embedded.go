package bus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Embedded server defaults.
const (
	// DefaultListen is where an embedded server accepts clients, so the
	// nats CLI works against `sendense serve`.
	DefaultListen = "127.0.0.1:4222"
	// ListenNone runs the embedded server without a TCP listener; only
	// in-process connections (Embedded.Connect) reach it.
	ListenNone = "none"
	// DefaultMaxMemory is the JetStream memory-storage limit. Sendense keeps
	// everything in file storage, so this only bounds other users' streams.
	DefaultMaxMemory int64 = 256 << 20
	// DefaultMaxStore is the JetStream file-storage limit.
	DefaultMaxStore int64 = 8 << 30
	// DefaultServerName names a standalone embedded server.
	DefaultServerName = "sendense"
	// defaultReadyTimeout bounds StartEmbedded when ctx has no deadline.
	defaultReadyTimeout = 30 * time.Second
)

// EmbeddedOptions configures StartEmbedded. Only DataDir is required.
type EmbeddedOptions struct {
	// DataDir is the directory the server keeps its state in; JetStream
	// files go to DataDir/jetstream. Required.
	DataDir string
	// Listen is host:port for clients. Default DefaultListen
	// ("127.0.0.1:4222"); ListenNone ("none") for in-process only; port -1
	// (for example "127.0.0.1:-1") picks a free port, see ClientURL.
	Listen string
	// MaxMemory and MaxStore are the JetStream memory and file-storage
	// limits in bytes. Defaults DefaultMaxMemory (256 MiB) and
	// DefaultMaxStore (8 GiB); the server's own defaults (a share of RAM
	// and disk) are never used.
	MaxMemory int64
	MaxStore  int64
	// MaxPayload is the largest message the server accepts, in bytes.
	// Default (0): the server's default, 1 MiB.
	MaxPayload int32
	// ServerName must be unique within a cluster. Default DefaultServerName.
	ServerName string
	// ClusterName, ClusterListen (host:port) and Routes (nats-route://
	// host:port URLs of all cluster members; our own is ignored) make the
	// server a member of a JetStream cluster. All empty (default):
	// standalone.
	ClusterName   string
	ClusterListen string
	Routes        []string
	// Users are the only clients the server admits, each with the
	// permissions of its role (see PermissionsOf): in-process connections
	// authenticate too. Required unless NoAuth.
	Users []User
	// NoAuth runs the server without authentication: any client may do
	// anything. For tests of the bus itself; never for a server others
	// can reach (it is refused off loopback unless Insecure).
	NoAuth bool
	// TLSDir is the directory of the CA and this server's certificate
	// (TLSDir.EnsureServer; `sendense serve` uses DATA/tls). A server that
	// listens off loopback (for clients or routes), or with TLS, makes
	// them there at its first start, reuses them after, and then requires
	// TLS from every client and on every route of its cluster (mutual).
	// Empty: no TLS, and listening off loopback is refused unless
	// Insecure.
	TLSDir string
	// TLS requires TLS also when the server listens on loopback only
	// (needs TLSDir). Off by default: a single host stays in clear text
	// on loopback, which is simple and fast.
	TLS bool
	// Advertise are the host names or addresses clients reach the server
	// by from other hosts. Each goes into the server certificate, and the
	// first is the address the server gives clients of its cluster
	// (client_advertise, with the listen port).
	Advertise []string
	// Insecure allows Listen on an address other than loopback without
	// TLS (TLSDir empty, or Insecure chosen over it). Off by default:
	// such a server is refused, because credentials and backups'
	// metadata would cross the network in the clear.
	Insecure bool
	// StoreCheckInterval is how often the server checks that JetStream
	// can still write to its store, and so the shortest time between two
	// attempts to recover it (see Embedded.StoreErr). Default
	// DefaultStoreCheckInterval (5 s).
	StoreCheckInterval time.Duration
	// StoreMinFree is the free space, in bytes, the store's file system
	// must have again before JetStream, after it could not write, is
	// restarted. Default (0): DefaultStoreMinFree (64 MiB) or
	// StoreMinFreePercent (1%) of the file system up to 1 GiB, whichever
	// is more. A value set is used as it is.
	StoreMinFree int64
	// Log receives the server's log lines. The zero Logger discards them.
	// Debug and trace lines are enabled when its level allows them.
	Log zerolog.Logger
}

// Embedded is a nats-server running inside this process with JetStream.
// Every write is synced to disk before it is acknowledged (SyncAlways), so
// a PubAck from a single embedded server survives a power cut. A watchdog
// restarts JetStream when it could not write (a full disk) and space is
// back; see StoreErr.
type Embedded struct {
	srv      *server.Server
	opts     EmbeddedOptions
	inproc   bool // ListenNone
	tls      bool // clients and routes must use TLS
	log      zerolog.Logger
	watch    *storeWatch // nil until JetStream is up
	shutdown sync.Once
}

// StartEmbedded starts a server with JetStream on file storage under
// opts.DataDir/jetstream and returns once it accepts connections and
// JetStream is up. ctx bounds only the start (default 30 s when it has no
// deadline); the server runs until Shutdown.
func StartEmbedded(ctx context.Context, opts EmbeddedOptions) (*Embedded, error) {
	sopts, err := serverOptions(opts)
	if err != nil {
		return nil, err
	}
	log := opts.Log.With().Str("component", "nats-server").Logger()
	srv, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("create embedded nats server in %s: %w", opts.DataDir, err)
	}
	sl := &serverLogger{log: log}
	srv.SetLoggerV2(sl, log.GetLevel() <= zerolog.DebugLevel, log.GetLevel() <= zerolog.TraceLevel, false)
	e := &Embedded{srv: srv, opts: opts, log: log, inproc: sopts.DontListen, tls: sopts.TLSConfig != nil}

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultReadyTimeout)
		defer cancel()
	}
	go srv.Start()
	for !srv.ReadyForConnections(50 * time.Millisecond) {
		if f := sl.fatal.Load(); f != nil {
			e.Shutdown()
			return nil, fmt.Errorf("start embedded nats server in %s: %s", opts.DataDir, *f)
		}
		if ctx.Err() != nil {
			e.Shutdown()
			return nil, fmt.Errorf("start embedded nats server in %s: not ready: %w", opts.DataDir, context.Cause(ctx))
		}
	}
	if f := sl.fatal.Load(); f != nil {
		e.Shutdown()
		return nil, fmt.Errorf("start embedded nats server in %s: %s", opts.DataDir, *f)
	}
	if !srv.JetStreamEnabled() {
		e.Shutdown()
		return nil, fmt.Errorf("start embedded nats server in %s: jetstream did not start", opts.DataDir)
	}
	e.watch = startStoreWatch(srv, sopts, opts, log)
	log.Info().Str("url", e.ClientURL()).Bool("tls", e.tls).Str("store_dir", sopts.StoreDir).Str("server", sopts.ServerName).
		Int64("max_store", sopts.JetStreamMaxStore).Int64("max_memory", sopts.JetStreamMaxMemory).
		Dur("store_check_interval", e.watch.interval).Int64("store_min_free", e.watch.needNow()).
		Msg("embedded nats server ready")
	if !sopts.DontListen && !isLoopback(sopts.Host) && sopts.TLSConfig == nil {
		// Only with Insecure (serverOptions refuses it otherwise).
		log.Error().Str("listen", net.JoinHostPort(sopts.Host, strconv.Itoa(sopts.Port))).Bool("insecure", true).
			Msg("INSECURE: nats listens off loopback without TLS; credentials' exchanges and every event cross the network in clear text")
	}
	return e, nil
}

func serverOptions(opts EmbeddedOptions) (*server.Options, error) {
	if opts.DataDir == "" {
		return nil, errors.New("embedded nats server: data dir is required")
	}
	dataDir, err := filepath.Abs(opts.DataDir)
	if err != nil {
		return nil, fmt.Errorf("embedded nats server: data dir %s: %w", opts.DataDir, err)
	}
	so := &server.Options{
		ServerName:         opts.ServerName,
		JetStream:          true,
		StoreDir:           dataDir, // the server keeps its files in <StoreDir>/jetstream
		SyncAlways:         true,
		JetStreamMaxMemory: opts.MaxMemory,
		JetStreamMaxStore:  opts.MaxStore,
		MaxPayload:         opts.MaxPayload,
		NoSigs:             true,
	}
	if so.ServerName == "" {
		so.ServerName = DefaultServerName
	}
	if so.JetStreamMaxMemory <= 0 {
		so.JetStreamMaxMemory = DefaultMaxMemory
	}
	if so.JetStreamMaxStore <= 0 {
		so.JetStreamMaxStore = DefaultMaxStore
	}
	listen := opts.Listen
	if listen == "" {
		listen = DefaultListen
	}
	if listen == ListenNone {
		so.DontListen = true
	} else {
		host, port, err := splitHostPort(listen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats server: listen %q: %w", listen, err)
		}
		if !isLoopback(host) && !opts.Insecure && opts.TLSDir == "" {
			return nil, fmt.Errorf("embedded nats server: refusing to listen on %s, which is not loopback, without TLS; "+
				"give a TLS directory, listen on 127.0.0.1, or accept clear text on the network with --insecure: %w", listen, ErrInsecureListen)
		}
		if !isLoopback(host) && opts.NoAuth {
			return nil, fmt.Errorf("embedded nats server: refusing to listen on %s without authentication: %w", listen, ErrInsecureListen)
		}
		so.Host, so.Port = host, port
	}
	switch {
	case opts.NoAuth:
	case len(opts.Users) == 0:
		return nil, errors.New("embedded nats server: no users: give the users it admits (or NoAuth for a test server)")
	default:
		so.Nkeys = serverUsers(opts.Users)
	}
	if opts.ClusterName != "" || opts.ClusterListen != "" || len(opts.Routes) > 0 {
		if opts.ClusterName == "" || opts.ClusterListen == "" {
			return nil, errors.New("embedded nats server: a cluster needs a cluster name and a cluster listen address")
		}
		host, port, err := splitHostPort(opts.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats server: cluster listen %q: %w", opts.ClusterListen, err)
		}
		so.Cluster.Name, so.Cluster.Host, so.Cluster.Port = opts.ClusterName, host, port
		for _, r := range opts.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("embedded nats server: route %q: %w", r, err)
			}
			so.Routes = append(so.Routes, u)
		}
	}
	if err := serverTLS(so, opts); err != nil {
		return nil, err
	}
	return so, nil
}

// tlsHandshakeTimeout bounds a client's or route's TLS handshake, in
// seconds (nats-server's default of 2 s is tight on a loaded host).
const tlsHandshakeTimeout = 5

// serverTLS turns on TLS for clients and routes when the server listens
// off loopback with a TLSDir (unless Insecure) or when TLS is asked, making
// the CA and the server certificate on first use.
func serverTLS(so *server.Options, opts EmbeddedOptions) error {
	if opts.TLS && opts.TLSDir == "" {
		return errors.New("embedded nats server: tls needs a tls directory")
	}
	clientOff := !so.DontListen && !isLoopback(so.Host)
	routesOff := so.Cluster.Name != "" && !isLoopback(so.Cluster.Host)
	if routesOff && opts.TLSDir == "" && !opts.Insecure {
		return fmt.Errorf("embedded nats server: refusing cluster routes on %s, which is not loopback, without TLS; "+
			"give a TLS directory, or accept clear text on the network with --insecure: %w",
			net.JoinHostPort(so.Cluster.Host, strconv.Itoa(so.Cluster.Port)), ErrInsecureListen)
	}
	if opts.TLSDir == "" || !(opts.TLS || (clientOff || routesOff) && !opts.Insecure) {
		return nil
	}
	if so.DontListen && so.Cluster.Name == "" {
		return errors.New("embedded nats server: tls without a listener (listen none)")
	}
	hosts := []string{so.Host}
	if so.Cluster.Host != "" {
		hosts = append(hosts, so.Cluster.Host)
	}
	hosts = append(hosts, opts.Advertise...)
	files, err := TLSDir{Dir: opts.TLSDir}.EnsureServer(hosts)
	if err != nil {
		return fmt.Errorf("embedded nats server: tls: %w", err)
	}
	tc, err := serverTLSConfig(files)
	if err != nil {
		return fmt.Errorf("embedded nats server: tls: %w", err)
	}
	if !so.DontListen {
		so.TLS, so.TLSConfig, so.TLSTimeout = true, tc, tlsHandshakeTimeout
		if len(opts.Advertise) > 0 {
			so.ClientAdvertise = opts.Advertise[0]
		}
	}
	if so.Cluster.Name != "" {
		rc, err := routeTLSConfig(files)
		if err != nil {
			return fmt.Errorf("embedded nats server: route tls: %w", err)
		}
		so.Cluster.TLSConfig, so.Cluster.TLSTimeout = rc, tlsHandshakeTimeout
	}
	return nil
}

// isLoopback reports whether a listen host only reaches this machine.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func splitHostPort(hp string) (string, int, error) {
	host, ps, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < -1 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number in -1..65535", ps)
	}
	return host, port, nil
}

// ClientURL returns the URL clients outside the process use, with the
// actual port when Listen asked for a random one: tls:// when the server
// requires TLS, nats:// otherwise; "" with ListenNone. A server on every
// address (0.0.0.0, ::) gives 127.0.0.1, which its certificate names.
func (e *Embedded) ClientURL() string {
	if e.inproc {
		return ""
	}
	u := e.srv.ClientURL()
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	if ip := net.ParseIP(p.Hostname()); ip != nil && ip.IsUnspecified() {
		p.Host = net.JoinHostPort("127.0.0.1", p.Port())
	}
	return p.String()
}

// TLS reports whether the server requires TLS from clients and routes.
func (e *Embedded) TLS() bool { return e.tls }

// ClusterURL returns the nats-route:// URL of the cluster listener, or ""
// when the server is standalone.
func (e *Embedded) ClusterURL() string {
	a := e.srv.ClusterAddr()
	if a == nil {
		return ""
	}
	return "nats-route://" + a.String()
}

// Server returns the nats-server instance, for tests and health checks.
func (e *Embedded) Server() *server.Server { return e.srv }

// StoreDir returns the JetStream storage directory.
func (e *Embedded) StoreDir() string { return e.srv.StoreDir() }

// Connect returns a client connection that reaches the server in-process,
// without TCP (nats.InProcessServer), whether or not it listens. It
// authenticates with opts' credentials and uses its inbox prefix and name
// (opts.URLs are ignored); a server with users refuses it without them.
// It logs like Connect and reconnects while the server lives; it cannot
// reconnect to a server restarted later (use ClientURL with Connect).
func (e *Embedded) Connect(log zerolog.Logger, opts Options) (*nats.Conn, error) {
	log = log.With().Str("component", "nats").Logger()
	nopts, err := authOptions(opts)
	if err != nil {
		return nil, err
	}
	name := opts.Name
	if name == "" {
		name = e.srv.Name() + "-inprocess"
	}
	nopts = append(nopts, connOptions(name, opts.InboxPrefix, log, nil, "inprocess://"+e.srv.Name())...)
	nopts = append(nopts, nats.InProcessServer(e.srv))
	nc, err := nats.Connect("", nopts...)
	if err != nil {
		return nil, fmt.Errorf("connect in-process to embedded nats server %s: %w", e.srv.Name(), err)
	}
	return nc, nil
}

// Shutdown stops the store watchdog, then the server, and waits until it
// has stopped and closed its files. Clients see a disconnect. Safe to call
// more than once.
func (e *Embedded) Shutdown() {
	e.shutdown.Do(func() {
		// The watchdog first: the server's shutdown turns JetStream off,
		// which the watchdog would otherwise take for a failure to repair.
		if e.watch != nil {
			e.watch.close()
		}
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
		e.log.Info().Str("server", e.srv.Name()).Msg("embedded nats server stopped")
	})
}

// serverLogger routes nats-server's log into zerolog. The server's text is
// data here (field nats_log); the message is fixed. Fatalf is logged at
// error level and recorded, never exits the process: StartEmbedded turns it
// into an error.
type serverLogger struct {
	log   zerolog.Logger
	fatal atomic.Pointer[string]
}

func (l *serverLogger) line(ev *zerolog.Event, format string, v []any) {
	ev.Str("nats_log", fmt.Sprintf(format, v...)).Msg("nats server")
}

func (l *serverLogger) Noticef(format string, v ...any) { l.line(l.log.Info(), format, v) }
func (l *serverLogger) Warnf(format string, v ...any)   { l.line(l.log.Warn(), format, v) }
func (l *serverLogger) Errorf(format string, v ...any)  { l.line(l.log.Error(), format, v) }
func (l *serverLogger) Debugf(format string, v ...any)  { l.line(l.log.Debug(), format, v) }
func (l *serverLogger) Tracef(format string, v ...any)  { l.line(l.log.Trace(), format, v) }
func (l *serverLogger) Fatalf(format string, v ...any) {
	s := fmt.Sprintf(format, v...)
	l.fatal.CompareAndSwap(nil, &s)
	l.log.Error().Bool("fatal", true).Str("nats_log", s).Msg("nats server")
}
