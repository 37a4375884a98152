package system

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/vim25/methods"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/agents/node"
	"github.com/sendense/sendense/agents/simctl"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/copier"
	"github.com/sendense/sendense/internal/datadir"
	"github.com/sendense/sendense/internal/health"
	"github.com/sendense/sendense/repository"
	"github.com/sendense/sendense/store"
	"github.com/sendense/sendense/testbed"
	"github.com/sendense/sendense/vmware"
)

// Config selects the roles and their settings. Zero values take defaults.
type Config struct {
	// DataDir holds the catalog (catalog.db), the embedded NATS store (nats/)
	// and the default repository (repo/). Required.
	DataDir string
	// NATS connects to an external server when NATS.URLs is set (its TLS
	// settings apply to every role's connection; its credentials are
	// ignored: each role connects with its own from CredsDir); otherwise
	// an embedded server is started listening on NATSListen
	// ("127.0.0.1:4222" by default, "none" for in-process only).
	NATS       bus.Options
	NATSListen string
	// CredsDir holds one nkey seed per identity (bus.Creds). Default
	// DataDir/creds. With an embedded server every missing seed of the
	// roles and of this process's agent is made at start, and the server
	// admits exactly the identities found there.
	CredsDir string
	// NATSInsecure lets an embedded server listen off loopback without
	// TLS (see bus.EmbeddedOptions.Insecure).
	NATSInsecure bool
	// NATSTLSDir, NATSTLS and NATSAdvertise are the embedded server's
	// bus.EmbeddedOptions TLSDir (default DataDir/tls: off loopback it
	// makes its CA and certificate there and requires TLS), TLS and
	// Advertise.
	NATSTLSDir    string
	NATSTLS       bool
	NATSAdvertise []string
	// NATSStoreDir is the embedded server's state directory. Default
	// DataDir/nats.
	NATSStoreDir string
	// NATSStoreCheck tunes how the embedded server notices that JetStream
	// cannot write and restarts it once its disk has space again
	// (bus.EmbeddedOptions StoreCheckInterval and StoreMinFree); zero
	// values take bus's defaults.
	NATSStoreCheckInterval time.Duration
	NATSStoreMinFree       int64
	// Replicas of the streams and the lease bucket (1 on a single server).
	Replicas int

	Catalog bool // run the catalog consumer and sendense.catalog
	Hub     bool // run sendense.repo and the request API
	Agent   bool // run a node agent

	// Repositories maps names to directories; default {"default": DataDir/repo}.
	Repositories map[string]string
	// RepoListen, RepoAdvertise and RepoPorts serve the hub's exports over
	// TCP with TLS-PSK for agents on other hosts (hub.RepoOptions Listen,
	// Advertise, Ports). Default "": unix sockets.
	RepoListen    string
	RepoAdvertise string
	RepoPorts     hub.PortRange
	// APIListen is the request API's address; "" or "none" disables it.
	APIListen string
	// RepositoryIDs maps the replaced system's repository_id to a
	// repository name (hub.API.RepositoryIDs); nil: hub's default.
	RepositoryIDs map[string]string
	// ReconcileInterval and ReconcileGrace tune the hub's reconciliation
	// of the repository with the catalog (hub.RepoOptions); zero values
	// take hub's defaults (10 min each).
	ReconcileInterval time.Duration
	ReconcileGrace    time.Duration
	// MetricsListen serves Prometheus metrics (/metrics) and the health
	// endpoints (/healthz, /readyz); "" or "none" disables it.
	MetricsListen string
	// StartupTimeout bounds the wait at start for what the roles need and
	// may not be there yet: the NATS servers, the streams, the lease
	// bucket, the consumers, vCenter. Each wait is logged (bus.Await).
	// Default DefaultStartupTimeout.
	StartupTimeout time.Duration
	// StartupAttemptTimeout bounds one try of each such wait. Default
	// bus.AwaitAttemptTimeout.
	StartupAttemptTimeout time.Duration

	// SimulateVCenter starts the testbed (govmomi simulator with CBT) with
	// SimVMs (default testbed.SampleVMs; at the first start on DataDir, later
	// starts restore the state kept under DataDir/vcenter) and its control
	// service, and points the
	// agent at it with local nbdkit sources.
	SimulateVCenter bool
	SimVMs          []testbed.VMSpec

	// A real vCenter: URL (https://host/sdk), user, a file holding the
	// password, and the VDDK library directory for nbdkit's VDDK plugin.
	VCenterURL          string
	VCenterUser         string
	VCenterPasswordFile string
	VCenterInsecure     bool
	VDDKLibDir          string
	// VCenterCAFile is a PEM file of the CAs (or the self-signed
	// certificate) vCenter's certificate is verified with instead of the
	// system's; `sendense vcenter-sim` writes its own as DATA/vcenter/sdk.pem.
	VCenterCAFile string
	// Transport is how the agent reads disks: TransportHTTPS (vCenter's
	// /folder with nbdkit curl) or TransportVDDK (nbdkit's VDDK plugin).
	// Default: vddk when VDDKLibDir is set, else https. With
	// SimulateVCenter the default reads the testbed's frozen images as
	// local files; TransportHTTPS reads them over its /folder instead.
	Transport string

	// CatalogOptions tunes the catalog consumer (AckWait, MaxBatch);
	// Registry and Log are set by Start.
	CatalogOptions catalog.Options
	// Name names the NATS connection. Default "sendense".
	Name string

	// Agent settings; AgentID defaults to the host name.
	AgentID  string
	MaxJobs  int
	LeaseTTL time.Duration
	// RequestAckWait is the agents' request consumer's ack wait, which the
	// hub sets when it creates the consumer (default bus.RequestAckWait):
	// how long a request an agent took may go without an ack before
	// another agent gets it, so how soon a crashed agent's job is retried.
	// Agents ack in progress every third of it.
	RequestAckWait time.Duration
	// AgentConfig is a template for the remaining node agent settings.
	AgentConfig node.Config

	Log zerolog.Logger
}

// DefaultStartupTimeout is Config.StartupTimeout's default.
const DefaultStartupTimeout = 2 * time.Minute

// System is a running pipeline.
type System struct {
	cfg Config
	log zerolog.Logger

	// Health holds the readiness checks of the running roles (served at
	// /readyz on the metrics listener and the request API).
	Health *health.Registry
	// MetricsAddr is the metrics listener's address ("" without one).
	MetricsAddr string
	lock        *datadir.Lock
	runDir      string // see openRunDir

	// NC and JS are the admin identity's connection (nil when CredsDir
	// has no admin seed): the simulated vCenter's control service, the
	// demo and tests use it. Each role has a connection of its own.
	NC       *nats.Conn
	JS       jetstream.JetStream
	Creds    bus.Creds
	Embedded *bus.Embedded
	Catalog  *store.Catalog
	Testbed  *testbed.Testbed
	Repos    map[string]*repository.Repo
	RepoSvc  *hub.RepoService
	APIAddr  string
	Registry *prometheus.Registry
	// Leases is the hub's view of the lease bucket (read only; nil
	// without the hub role).
	Leases *bus.Leases

	vc       *vmware.Client
	services []micro.Service
	conns    []*nats.Conn // every role's connection, closed by Stop
	// agent is the running node agent, for readiness.
	agent *node.Agent
	// simCA is the simulated vCenter's certificate file (SimulateVCenter).
	simCA string

	mu      sync.Mutex
	roles   []*role
	errOnce sync.Once
	err     error
	failed  chan struct{}
}

// role is one long-running goroutine, stopped in reverse start order.
type role struct {
	name   string
	cancel context.CancelFunc
	done   chan struct{}
}

// Start starts the configured roles and returns once they are ready.
//
// Its first step locks the data directory (datadir.Acquire): a second
// process on the same DataDir gets an error wrapping datadir.ErrLocked
// before any file under it is created or opened. The metrics listener (with
// /healthz and /readyz) starts next, so that the wait for the cluster can
// be watched; everything that may not be there yet is then waited for with
// bus.Await until cfg.StartupTimeout or until ctx ends.
func Start(ctx context.Context, cfg Config) (_ *System, err error) {
	if cfg.DataDir == "" {
		return nil, errors.New("system: DataDir is required")
	}
	lock, err := datadir.Acquire(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && lock != nil {
			_ = lock.Release()
		}
	}()
	if cfg.StartupTimeout <= 0 {
		cfg.StartupTimeout = DefaultStartupTimeout
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.AgentID == "" {
		h, _ := os.Hostname()
		cfg.AgentID = sanitize(h)
	}
	if len(cfg.Repositories) == 0 {
		cfg.Repositories = map[string]string{"default": filepath.Join(cfg.DataDir, "repo")}
	}
	if cfg.CredsDir == "" {
		cfg.CredsDir = filepath.Join(cfg.DataDir, "creds")
	}
	if cfg.NATSTLSDir == "" {
		cfg.NATSTLSDir = filepath.Join(cfg.DataDir, "tls")
	}
	if cfg.Name == "" {
		cfg.Name = "sendense"
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s := &System{cfg: cfg, log: cfg.Log, failed: make(chan struct{}), Registry: reg, Creds: bus.Creds{Dir: cfg.CredsDir},
		Health: health.New()}
	defer func() {
		if err != nil {
			s.Stop()
			lock = nil // Stop released it
		}
	}()
	s.lock = lock
	if s.runDir, err = openRunDir(cfg.DataDir, s.log); err != nil {
		return nil, err
	}
	// Not ready until Start returns: /readyz says so while it waits.
	s.Health.Add("startup", func(context.Context) error { return errors.New("starting") })
	if cfg.MetricsListen != "" && cfg.MetricsListen != "none" {
		if err := s.startMetrics(); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.StartupTimeout,
		fmt.Errorf("start-up timeout (%s) reached", cfg.StartupTimeout))
	defer cancel()
	if err := s.startNATS(ctx); err != nil {
		return nil, err
	}
	if cfg.Hub {
		// The hub's process makes the streams, the lease and cancel buckets
		// and the agents' consumer, as admin: no other role may create or change
		// them. The other roles bind to them.
		if s.JS == nil {
			return nil, fmt.Errorf("hub: the streams are made with the admin credentials, and %s has none", s.Creds.File(bus.Identity{Role: bus.RoleAdmin}))
		}
		if err := bus.EnsureStreams(ctx, s.JS, bus.StreamOptions{Replicas: cfg.Replicas, Await: s.await()}); err != nil {
			return nil, err
		}
		ttl := cfg.LeaseTTL
		if ttl <= 0 {
			ttl = bus.DefaultLeaseTTL
		}
		if _, err := bus.NewLeases(ctx, s.JS, bus.LeaseBucket, ttl, bus.LeaseReplicas(cfg.Replicas), bus.LeaseAwait(s.await())); err != nil {
			return nil, err
		}
		if _, err := bus.EnsureCancels(ctx, s.JS, cfg.Replicas, s.await()); err != nil {
			return nil, err
		}
		if _, err := bus.EnsureRequestConsumer(ctx, s.JS, bus.RequestConsumerOptions{AckWait: cfg.RequestAckWait, Await: s.await()}); err != nil {
			return nil, err
		}
		if _, err := bus.EnsureVerifyConsumer(ctx, s.JS, s.await()); err != nil {
			return nil, err
		}
		if _, err := bus.EnsureForgetConsumer(ctx, s.JS, s.await()); err != nil {
			return nil, err
		}
		hnc, hjs, err := s.connect(ctx, bus.Identity{Role: bus.RoleHub})
		if err != nil {
			return nil, err
		}
		var leases *bus.Leases
		if err := bus.Await(ctx, "lease bucket "+bus.LeaseBucket+" (as hub)", func(ctx context.Context) (err error) {
			leases, err = bus.OpenLeases(ctx, hjs, bus.LeaseBucket, bus.LeaseLogger(s.log))
			return err
		}, s.await()); err != nil {
			return nil, err
		}
		s.Leases = leases
		if err := s.startHub(hnc, hjs, leases); err != nil {
			return nil, err
		}
		adminJS := s.JS
		s.Health.Add("hub/streams", func(ctx context.Context) error { return bus.StoreReady(ctx, adminJS) })
		s.Health.Add("hub/consumer "+bus.ConsumerAgents, func(ctx context.Context) error {
			_, err := adminJS.Consumer(ctx, bus.StreamRequests, bus.ConsumerAgents)
			return err
		})
	}
	if cfg.Catalog {
		if err := s.startCatalog(ctx); err != nil {
			return nil, err
		}
	}
	if cfg.SimulateVCenter {
		if err := s.startTestbed(ctx); err != nil {
			return nil, err
		}
	}
	if cfg.Agent {
		if err := s.startAgent(ctx); err != nil {
			return nil, err
		}
	}
	s.Health.Remove("startup")
	return s, nil
}

// await is how this system's start-up waits are logged.
func (s *System) await() bus.AwaitOptions {
	return bus.AwaitOptions{Log: s.log, AttemptTimeout: s.cfg.StartupAttemptTimeout}
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "agent"
	}
	return b.String()
}

// run starts fn as a role; a role that returns an error fails the system.
func (s *System) run(name string, fn func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &role{name: name, cancel: cancel, done: make(chan struct{})}
	s.mu.Lock()
	s.roles = append(s.roles, r)
	s.mu.Unlock()
	s.log.Info().Str("role", name).Msg("role started")
	go func() {
		defer close(r.done)
		err := fn(ctx)
		if err == nil && ctx.Err() == nil {
			err = errors.New("stopped on its own")
		}
		if err != nil && ctx.Err() == nil {
			s.log.Error().Err(err).Str("role", name).Msg("role failed")
			s.fail(fmt.Errorf("role %s: %w", name, err))
			return
		}
		s.log.Info().Str("role", name).Msg("role stopped")
	}()
}

func (s *System) fail(err error) {
	s.errOnce.Do(func() {
		s.err = err
		close(s.failed)
	})
}

// Failed is closed when a role stopped with an error; Err tells which.
func (s *System) Failed() <-chan struct{} { return s.failed }

// Err is the first role error, if any.
func (s *System) Err() error {
	select {
	case <-s.failed:
		return s.err
	default:
		return nil
	}
}

// identities are the NATS users this process's roles connect as.
func (s *System) identities() []bus.Identity {
	ids := []bus.Identity{{Role: bus.RoleAdmin}}
	if s.cfg.Hub {
		ids = append(ids, bus.Identity{Role: bus.RoleHub})
	}
	if s.cfg.Catalog {
		ids = append(ids, bus.Identity{Role: bus.RoleCatalog})
	}
	if s.cfg.Agent {
		ids = append(ids, bus.AgentIdentity(s.cfg.AgentID))
	}
	return ids
}

// startNATS starts the embedded server (unless NATS.URLs is set), which
// admits the identities of CredsDir, making the missing seeds of every
// role and of this process's agent first; then it connects as admin when
// an admin seed is there.
func (s *System) startNATS(ctx context.Context) error {
	if len(s.cfg.NATS.URLs) == 0 {
		ids := append(s.identities(), bus.Identity{Role: bus.RoleRequester}, bus.Identity{Role: bus.RoleMonitor})
		if err := s.Creds.Ensure(ids...); err != nil {
			return err
		}
		users, err := s.Creds.Users()
		if err != nil {
			return err
		}
		listen := s.cfg.NATSListen
		if listen == "" {
			listen = "127.0.0.1:4222"
		}
		dir := s.cfg.NATSStoreDir
		if dir == "" {
			dir = filepath.Join(s.cfg.DataDir, "nats")
		}
		emb, err := bus.StartEmbedded(ctx, bus.EmbeddedOptions{
			DataDir: dir, Listen: listen, Users: users, Insecure: s.cfg.NATSInsecure,
			TLSDir: s.cfg.NATSTLSDir, TLS: s.cfg.NATSTLS, Advertise: s.cfg.NATSAdvertise,
			StoreCheckInterval: s.cfg.NATSStoreCheckInterval, StoreMinFree: s.cfg.NATSStoreMinFree, Log: s.log,
		})
		if err != nil {
			return err
		}
		s.Embedded = emb
	}
	if _, err := os.Stat(s.Creds.File(bus.Identity{Role: bus.RoleAdmin})); err == nil {
		nc, js, err := s.connect(ctx, bus.Identity{Role: bus.RoleAdmin})
		if err != nil {
			return err
		}
		s.NC, s.JS = nc, js
	}
	return nil
}

// connect opens a connection as id with its seed from CredsDir: in
// process to the embedded server, or to NATS.URLs with NATS's TLS
// settings. Stop closes it.
func (s *System) connect(ctx context.Context, id bus.Identity) (*nats.Conn, jetstream.JetStream, error) {
	opts := s.Creds.Options(id)
	opts.Name = s.cfg.Name + "-" + id.Name()
	if _, err := os.Stat(opts.NKeyFile); err != nil {
		// A server without authentication needs none; one with it refuses
		// the connection and says so.
		s.log.Warn().Str("identity", id.Name()).Str("seed", opts.NKeyFile).Msg("no credentials for this role; connecting without")
		opts.NKeyFile = ""
	}
	var nc *nats.Conn
	var err error
	if s.Embedded != nil {
		nc, err = s.Embedded.Connect(s.log, opts)
	} else {
		n := s.cfg.NATS
		opts.URLs, opts.TLSCA, opts.TLSIfOffered, opts.TLSCert, opts.TLSKey = n.URLs, n.TLSCA, n.TLSIfOffered, n.TLSCert, n.TLSKey
		// bus.Connect keeps trying until its context ends; under Await
		// each try is bounded and logged like every other start-up wait.
		err = bus.Await(ctx, "nats "+strings.Join(opts.URLs, ",")+" as "+id.Name(), func(ctx context.Context) (err error) {
			nc, err = bus.Connect(ctx, opts, s.log)
			return err
		}, s.await())
		if err != nil {
			return nil, nil, err // Await's error names the servers and the identity
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("connect to nats as %s: %w", id, err)
	}
	s.mu.Lock()
	s.conns = append(s.conns, nc)
	s.mu.Unlock()
	s.Health.Add("nats/"+id.Name(), func(context.Context) error {
		if !nc.IsConnected() {
			return fmt.Errorf("not connected to nats (%s)", nc.Status())
		}
		return nil
	})
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, nil, fmt.Errorf("jetstream as %s: %w", id, err)
	}
	return nc, js, nil
}

func (s *System) startCatalog(ctx context.Context) error {
	nc, js, err := s.connect(ctx, bus.Identity{Role: bus.RoleCatalog})
	if err != nil {
		return err
	}
	cat, err := store.Open(CatalogPath(s.cfg.DataDir), &store.Options{Logger: s.log})
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("%w (is another sendense serve or catalog running on --data %s?)", err, s.cfg.DataDir)
	}
	if err != nil {
		return err
	}
	s.Catalog = cat
	svc, err := catalog.Serve(nc, cat, s.log)
	if err != nil {
		return err
	}
	s.services = append(s.services, svc)
	opts := s.cfg.CatalogOptions
	opts.Log, opts.Registry = s.log, s.Registry
	if opts.AttemptTimeout <= 0 {
		opts.AttemptTimeout = s.cfg.StartupAttemptTimeout
	}
	// Bound the wait for BACKUP_EVENTS by the start-up timeout: Run would
	// wait as long as it runs.
	cons, err := catalog.EnsureConsumer(ctx, js, opts)
	if err != nil {
		return err
	}
	s.Health.Add("catalog/consumer", func(ctx context.Context) error {
		_, err := cons.Info(ctx)
		return err
	})
	s.run("catalog", func(ctx context.Context) error {
		return catalog.Run(ctx, js, cat, opts)
	})
	return nil
}

func (s *System) startHub(nc *nats.Conn, js jetstream.JetStream, leases *bus.Leases) error {
	s.Repos = map[string]*repository.Repo{}
	for name, dir := range s.cfg.Repositories {
		r, err := repository.Open(dir)
		if err != nil {
			return fmt.Errorf("open repository %s at %s: %w", name, dir, err)
		}
		s.Repos[name] = r
	}
	// The catalog is asked over NATS as the hub, and its progress read
	// from its durable consumer with the hub's JetStream handle: the hub
	// may run without the catalog in this process.
	cat := catalog.NewClient(nc)
	svc, err := hub.NewRepoService(hub.RepoOptions{
		SocketDir:    s.runDir,
		Repositories: s.Repos, Leases: leases, LeaseTaker: leases, Publisher: bus.NewHubPublisher(js, s.log), Log: s.log,
		Catalog: cat, Progress: hub.NewConsumerProgress(js, bus.ConsumerCatalog), Registry: s.Registry,
		ReconcileInterval: s.cfg.ReconcileInterval, ReconcileGrace: s.cfg.ReconcileGrace,
		Listen: s.cfg.RepoListen, Advertise: s.cfg.RepoAdvertise, Ports: s.cfg.RepoPorts,
	})
	if err != nil {
		return err
	}
	s.RepoSvc = svc
	ready := make(chan struct{})
	s.run("repository", func(ctx context.Context) error {
		return svc.Serve(ctx, nc, ready)
	})
	<-ready
	// Verify schedules fire backup.verify.requested; the hub takes them
	// with its own consumer (made as admin with the streams).
	bctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vcons, err := js.Consumer(bctx, bus.StreamRequests, bus.ConsumerHubVerify)
	if err != nil {
		return fmt.Errorf("bind consumer %s: %w", bus.ConsumerHubVerify, err)
	}
	s.run("verify-requests", func(ctx context.Context) error { return svc.ServeVerifyRequests(ctx, vcons) })
	// Forget schedules fire backup.forget.requested, taken the same way.
	fcons, err := js.Consumer(bctx, bus.StreamRequests, bus.ConsumerHubForget)
	if err != nil {
		return fmt.Errorf("bind consumer %s: %w", bus.ConsumerHubForget, err)
	}
	s.run("forget-requests", func(ctx context.Context) error { return svc.ServeForgetRequests(ctx, fcons) })
	if s.cfg.APIListen != "" && s.cfg.APIListen != "none" {
		ln, err := net.Listen("tcp", s.cfg.APIListen)
		if err != nil {
			return fmt.Errorf("request api listen %s: %w", s.cfg.APIListen, err)
		}
		s.APIAddr = ln.Addr().String()
		api := &hub.API{Publisher: bus.NewPublisher(js, "sendense-hub", s.log), Jobs: cat, Log: s.log, Health: s.Health, RepositoryIDs: s.cfg.RepositoryIDs}
		s.run("api", func(ctx context.Context) error { return api.ServeListener(ctx, ln) })
	}
	return nil
}

func (s *System) startTestbed(ctx context.Context) error {
	vms := s.cfg.SimVMs
	if len(vms) == 0 {
		vms = testbed.SampleVMs()
	}
	// KeepImages: the testbed keeps its state in the data dir, so a
	// restart (or a crash) on it finds the same VMs, CBT and snapshots.
	tb, err := testbed.New(ctx, testbed.Options{Dir: filepath.Join(s.cfg.DataDir, "vcenter"), VMs: vms, KeepImages: true, Log: s.log})
	if err != nil {
		return fmt.Errorf("start simulated vcenter: %w", err)
	}
	s.Testbed = tb
	// The agent trusts the simulated vCenter through its certificate, as
	// an agent of `sendense vcenter-sim` does with --vcenter-ca.
	ca, err := filepath.Abs(filepath.Join(s.cfg.DataDir, "vcenter", "sdk.pem"))
	if err == nil {
		err = os.WriteFile(ca, tb.CertificatePEM(), 0o644)
	}
	if err != nil {
		return fmt.Errorf("write the simulated vcenter's certificate: %w", err)
	}
	s.simCA = ca
	if s.NC == nil {
		return errors.New("simulated vcenter: its control service needs the admin credentials in " + s.cfg.CredsDir)
	}
	svc, err := simctl.Serve(s.NC, tb, s.log, Inventory)
	if err != nil {
		return err
	}
	s.services = append(s.services, svc)
	s.log.Info().Str("url", tb.URL().Redacted()).Int("vms", len(vms)).Msg("simulated vcenter ready")
	return nil
}

// Transports of Config.Transport.
const (
	TransportHTTPS = "https"
	TransportVDDK  = "vddk"
)

func (s *System) startAgent(ctx context.Context) error {
	var sources vmware.Sources
	var u *url.URL
	transport := s.cfg.Transport
	tlsCfg := vmware.TLS{CAFile: s.cfg.VCenterCAFile, Insecure: s.cfg.VCenterInsecure}
	switch {
	case s.Testbed != nil:
		u, tlsCfg = s.Testbed.URL(), vmware.TLS{CAFile: s.simCA}
		if transport == "" {
			sources = &vmware.LocalSources{Image: s.Testbed.SnapshotImage, SocketDir: s.runDir, Log: s.log}
		}
	case s.cfg.VCenterURL != "":
		var err error
		if u, err = url.Parse(s.cfg.VCenterURL); err != nil {
			return fmt.Errorf("parse --vcenter-url: %w", err)
		}
		pw, err := os.ReadFile(s.cfg.VCenterPasswordFile)
		if err != nil {
			return fmt.Errorf("read vcenter password file: %w", err)
		}
		u.User = url.UserPassword(s.cfg.VCenterUser, strings.TrimRight(string(pw), "\r\n"))
		if transport == "" {
			transport = TransportHTTPS
			if s.cfg.VDDKLibDir != "" {
				transport = TransportVDDK
			}
		}
	default:
		return errors.New("agent: no vcenter configured (--simulate-vcenter, or --vcenter-url with --vcenter-user and --vcenter-password-file)")
	}
	if tlsCfg.Insecure {
		s.log.Warn().Str("vcenter", u.Host).Msg("vcenter certificate not verified (insecure): anyone on the path can read the session and the disks")
	}
	var vc *vmware.Client
	if err := bus.Await(ctx, "vcenter "+u.Host, func(ctx context.Context) (err error) {
		vc, err = vmware.ConnectTLS(ctx, u, tlsCfg, s.log)
		return err
	}, s.await()); err != nil {
		return err
	}
	s.vc = vc
	kind := "local files"
	switch {
	case sources != nil:
	case transport == TransportHTTPS:
		kind = "https /folder (nbdkit curl)"
		sources = &vmware.HTTPSSources{Client: vc, SocketDir: s.runDir, Log: s.log}
	case transport == TransportVDDK && s.Testbed == nil:
		kind = "vddk (nbdkit vddk)"
		if s.cfg.VDDKLibDir == "" {
			return errors.New("agent: transport vddk needs --vddk-libdir")
		}
		var thumb string
		if err := bus.Await(ctx, "vcenter "+u.Host+" (tls thumbprint)", func(ctx context.Context) (err error) {
			thumb, err = vmware.ServerThumbprint(ctx, u.Host)
			return err
		}, s.await()); err != nil {
			return err
		}
		sources = &vmware.VDDKSources{Base: vmware.VDDKOptions{
			Server: u.Hostname(), User: s.cfg.VCenterUser, PasswordFile: s.cfg.VCenterPasswordFile,
			Thumbprint: thumb, LibDir: s.cfg.VDDKLibDir,
		}, SocketDir: s.runDir, Log: s.log}
	default:
		return fmt.Errorf("agent: unknown transport %q (want %s or %s; the simulated vcenter has no vddk)", transport, TransportHTTPS, TransportVDDK)
	}
	s.log.Info().Str("vcenter", u.Host).Str("transport", kind).Msg("agent reads disks")
	nc, js, err := s.connect(ctx, bus.AgentIdentity(s.cfg.AgentID))
	if err != nil {
		return err
	}
	// The hub's process makes the lease and cancel buckets and the request
	// consumer: an agent started first waits for them.
	var leases *bus.Leases
	if err := bus.Await(ctx, "lease bucket "+bus.LeaseBucket, func(ctx context.Context) (err error) {
		leases, err = bus.OpenLeases(ctx, js, bus.LeaseBucket, bus.LeaseLogger(s.log))
		return err
	}, s.await()); err != nil {
		return err
	}
	var cancels *bus.Cancels
	if err := bus.Await(ctx, "cancel bucket "+bus.CancelBucket, func(ctx context.Context) (err error) {
		cancels, err = bus.OpenCancels(ctx, js)
		return err
	}, s.await()); err != nil {
		return err
	}
	var cons jetstream.Consumer
	if err := bus.Await(ctx, "consumer "+bus.ConsumerAgents+" on "+bus.StreamRequests, func(ctx context.Context) (err error) {
		cons, err = bus.RequestConsumer(ctx, js)
		return err
	}, s.await()); err != nil {
		return err
	}
	pub, err := bus.NewAgentPublisher(js, s.cfg.AgentID, s.log)
	if err != nil {
		return err
	}
	cfg := s.cfg.AgentConfig
	if cfg.RunDir == "" {
		cfg.RunDir = s.runDir
	}
	cfg.AgentID, cfg.Log, cfg.Registry = s.cfg.AgentID, s.log, s.Registry
	if s.cfg.MaxJobs > 0 {
		cfg.MaxJobs = s.cfg.MaxJobs
	}
	if info := cons.CachedInfo(); cfg.InProgressInterval <= 0 && info != nil && info.Config.AckWait > 0 {
		cfg.InProgressInterval = info.Config.AckWait / 3 // the hub chose the ack wait (RequestAckWait)
	}
	if cfg.Copy.Log.GetLevel() == zerolog.Disabled {
		cfg.Copy = copier.Options{}
	}
	ag, err := node.New(cfg, node.Deps{
		Requests: cons, Publisher: pub, Leases: leases, VCenter: vc, Sources: sources,
		Targets: repoapi.NewClient(nc), Catalog: catalog.NewClient(nc), Cancels: cancels,
		Store: node.StoreFunc(func(ctx context.Context) error {
			if err := bus.StoreReady(ctx, js); err != nil {
				return err
			}
			return leases.Probe(ctx, s.cfg.AgentID)
		}),
	})
	if err != nil {
		return err
	}
	s.agent = ag
	// Admin's `sendense cancel` reaches the agent on nc (closed by Stop).
	if _, err := node.ServeCancel(nc, ag); err != nil {
		return err
	}
	s.addAgentChecks(js, cons, vc, repoapi.NewClient(nc))
	s.run("agent", ag.Run)
	return nil
}

// addAgentChecks adds the agent's readiness: JetStream stores (the agent
// takes requests), its consumer is there, vCenter answers and the hub's
// repository service answers.
func (s *System) addAgentChecks(js jetstream.JetStream, cons jetstream.Consumer, vc *vmware.Client, targets *repoapi.Client) {
	ag := s.agent
	s.Health.Add("agent/streams", func(ctx context.Context) error { return bus.StoreReady(ctx, js) })
	s.Health.Add("agent/consumer", func(ctx context.Context) error {
		_, err := cons.Info(ctx)
		return err
	})
	s.Health.Add("agent/taking requests", func(context.Context) error { return ag.Ready() })
	s.Health.Add("agent/vcenter", func(ctx context.Context) error {
		if _, err := methods.GetCurrentTime(ctx, vc.Vim25()); err != nil {
			return fmt.Errorf("vcenter %s: %w", vc.Host(), err)
		}
		return nil
	})
	s.Health.Add("agent/repository", func(ctx context.Context) error {
		// Any answer of the service will do: an unknown repository is the
		// request's problem, not the agent's.
		if _, err := targets.Info(ctx, "default"); err != nil && !errors.Is(err, repoapi.ErrUnknownRepository) {
			return fmt.Errorf("repository service: %w", err)
		}
		return nil
	})
}

func (s *System) startMetrics() error {
	ln, err := net.Listen("tcp", s.cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("metrics listen %s: %w", s.cfg.MetricsListen, err)
	}
	s.MetricsAddr = ln.Addr().String()
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.Registry, promhttp.HandlerOpts{}))
	s.Health.Register(mux)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s.log.Info().Str("url", "http://"+ln.Addr().String()+"/metrics").Msg("metrics listening")
	s.run("metrics", func(ctx context.Context) error {
		go func() { <-ctx.Done(); _ = srv.Close() }()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return nil
}

// Stop stops every role in reverse order and closes what Start opened. Safe
// to call more than once.
func (s *System) Stop() {
	s.mu.Lock()
	roles := s.roles
	s.roles = nil
	s.mu.Unlock()
	for i := len(roles) - 1; i >= 0; i-- {
		roles[i].cancel()
		<-roles[i].done
	}
	for _, svc := range s.services {
		_ = svc.Stop()
	}
	s.services = nil
	if s.vc != nil {
		_ = s.vc.Close()
		s.vc = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range s.Repos {
		_ = r.Close(ctx)
	}
	if s.Catalog != nil {
		_ = s.Catalog.Close()
		s.Catalog = nil
	}
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for _, nc := range conns {
		_ = nc.Drain()
		nc.Close()
	}
	s.NC, s.JS = nil, nil
	if s.Embedded != nil {
		s.Embedded.Shutdown()
		s.Embedded = nil
	}
	if s.Testbed != nil {
		_ = s.Testbed.Close()
		s.Testbed = nil
	}
	// Last: nothing under DataDir is in use any more.
	_ = s.lock.Release()
	s.lock = nil
}

// StopRole stops one running role (for example "agent") and waits for it,
// leaving the others running. Tests use it to stop an agent mid-backup.
func (s *System) StopRole(name string) {
	s.mu.Lock()
	var r *role
	for i, x := range s.roles {
		if x.name == name {
			r = x
			s.roles = append(s.roles[:i:i], s.roles[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
	}
}

// CatalogPath is the catalog file under a data directory.
func CatalogPath(dataDir string) string { return filepath.Join(dataDir, "catalog.db") }

// NATSURL says where the system's NATS is, for logs.
func (s *System) NATSURL() string {
	if s.Embedded != nil {
		if u := s.Embedded.ClientURL(); u != "" {
			return u
		}
		return "in-process"
	}
	return strings.Join(s.cfg.NATS.URLs, ",")
}

// runSubdirLen is the longest name a socket gets below the run directory:
// a private directory ("sdnbd-", "nbdsrc" and MkdirTemp's up to 10
// digits) and the socket's name ("nbdkit.sock").
const runSubdirLen = len("/nbdsrc4294967295/nbdkit.sock")

// openRunDir empties and returns DATA/run, the private (0700) directory of
// this process's export and source sockets and TLS key files. The data
// directory's lock makes it this process's alone, so whatever is in it
// was left by a predecessor that was killed (its qemu-nbd and nbdkit
// children die with it: Pdeathsig) and nothing left behind survives a
// restart. When its path is too long for unix sockets below it, it
// returns "" (the system's temp dir), and says so.
func openRunDir(dataDir string, log zerolog.Logger) (string, error) {
	dir, err := filepath.Abs(filepath.Join(dataDir, "run"))
	if err != nil {
		return "", fmt.Errorf("run directory: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("empty run directory %s: %w", dir, err)
	}
	if len(dir)+runSubdirLen >= repository.MaxSocketPath {
		log.Warn().Str("dir", dir).Str("instead", os.TempDir()).Msg("data dir path too long for unix sockets below it: sockets go to the temp dir")
		return "", nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("make run directory %s: %w", dir, err)
	}
	return dir, nil
}
