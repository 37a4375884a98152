package main

import (
	"context"
	"fmt"
	"io"
	stdlog "log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/system"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

func init() { extraCommands = append(extraCommands, newServeCmd, newHubCmd, newAgentCmd) }

// serveCmd runs every role in one process.
type serveCmd struct {
	proc    processFlags
	catalog catalogFlags
	hub     hubFlags
	agent   agentFlags
}

func newServeCmd(a *app) *cobra.Command {
	c := &serveCmd{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run everything in one process: embedded NATS (unless --nats-url), catalog, hub and an agent",
		Long: `Run everything in one process until SIGINT or SIGTERM.

Without --nats-url it starts an embedded NATS server with JetStream under
DATA/nats, listening on --nats-listen, so nats pub/sub and the sendense client
commands work against it. It creates the streams, then starts the catalog
(BACKUP_EVENTS into DATA/catalog.db, and sendense.catalog.*), the hub
(sendense.repo with the repository under DATA/repo, and the request API) and a
node agent. With --simulate-vcenter a simulated vCenter with CBT runs inside
it, with sample VMs (pgtest1) and the sendense.testbed control service.
Roles stop in reverse order.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := a.systemConfig("sendense-serve", c.proc)
			c.catalog.apply(&cfg)
			if err := c.hub.apply(&cfg); err != nil {
				return err
			}
			cfg.Catalog, cfg.Hub = true, true
			if c.agent.configured() {
				if err := c.agent.apply(&cfg); err != nil {
					return err
				}
				cfg.Agent = true
			} else {
				a.log.Warn().Msg("no vcenter configured (--simulate-vcenter or --vcenter-url): running without a node agent")
			}
			return a.runSystem(cmd.Context(), cfg)
		},
	}
	c.proc.register(cmd.Flags())
	c.catalog.register(cmd.Flags())
	c.hub.register(cmd.Flags())
	c.agent.register(cmd.Flags())
	return cmd
}

func newHubCmd(a *app) *cobra.Command {
	var proc processFlags
	var hub hubFlags
	cmd := &cobra.Command{
		Use:   "hub",
		Short: "Run the hub alone: the repository service (sendense.repo) and the request API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := a.systemConfig("sendense-hub", proc)
			if err := hub.apply(&cfg); err != nil {
				return err
			}
			cfg.Hub = true
			return a.runSystem(cmd.Context(), cfg)
		},
	}
	proc.register(cmd.Flags())
	hub.register(cmd.Flags())
	return cmd
}

func newAgentCmd(a *app) *cobra.Command {
	var proc processFlags
	var agent agentFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a node agent alone: take backup.requested and run the backups",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := a.systemConfig("sendense-agent", proc)
			if err := agent.apply(&cfg); err != nil {
				return err
			}
			cfg.Agent = true
			return a.runSystem(cmd.Context(), cfg)
		},
	}
	proc.register(cmd.Flags())
	agent.register(cmd.Flags())
	return cmd
}

// processFlags are the flags of every long-running process.
type processFlags struct {
	metricsListen  string
	streamReplicas int
	startupTimeout time.Duration
	startupAttempt time.Duration
}

func (f *processFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "serve Prometheus metrics (/metrics) and health (/healthz, /readyz) on this host:port (default: off)")
	fs.IntVar(&f.streamReplicas, "stream-replicas", 1, "replicas of the streams created or updated at start (3 or 5 in a cluster)")
	fs.DurationVar(&f.startupTimeout, "startup-timeout", system.DefaultStartupTimeout, "how long to wait at start for NATS, the streams, the lease bucket, the consumers and vCenter before giving up")
	fs.DurationVar(&f.startupAttempt, "startup-attempt-timeout", 0, "bound of one try of each start-up wait (default 5s)")
	_ = fs.MarkHidden("startup-attempt-timeout")
}

// catalogFlags tune the catalog role (hidden: defaults suit production).
type catalogFlags struct {
	ackWait  time.Duration
	maxBatch int
}

func (f *catalogFlags) register(fs *pflag.FlagSet) {
	fs.DurationVar(&f.ackWait, "catalog-ack-wait", 0, "catalog consumer ack wait (default 30s)")
	fs.IntVar(&f.maxBatch, "catalog-max-batch", 0, "events per catalog transaction at most (default 256)")
	_ = fs.MarkHidden("catalog-ack-wait")
	_ = fs.MarkHidden("catalog-max-batch")
}

func (f *catalogFlags) apply(cfg *system.Config) {
	cfg.CatalogOptions.AckWait = f.ackWait
	cfg.CatalogOptions.MaxBatch = f.maxBatch
}

// hubFlags configure the repository service and the request API.
type hubFlags struct {
	apiListen         string
	repositories      []string
	repositoryIDs     []string
	reconcileInterval time.Duration
	reconcileGrace    time.Duration
	requestAckWait    time.Duration
	leaseTTL          time.Duration
	repoListen        string
	repoAdvertise     string
	repoPorts         string
}

func (f *hubFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.apiListen, "api-listen", "127.0.0.1:8080", "request API address (POST /api/v1/backups), or none")
	fs.StringSliceVar(&f.repositories, "repository", nil, "repository as NAME=DIR, repeatable (default: default=DATA/repo)")
	fs.StringSliceVar(&f.repositoryIDs, "repository-id", nil, "the replaced system's repository_id as ID=NAME, repeatable: POST /api/v1/backups with {\"vm_name\":…,\"repository_id\":ID} writes to repository NAME (default: 1=default)")
	fs.DurationVar(&f.reconcileInterval, "reconcile-interval", 0, "how often the hub removes repository files no completed job or running backup owns (default 10m)")
	fs.DurationVar(&f.reconcileGrace, "reconcile-grace", 0, "how old such a file must be before it is removed (default 10m)")
	fs.StringVar(&f.repoListen, "repo-listen", "", "host or address to serve backup targets and restores on over TCP with TLS (a fresh key per export), for agents on other hosts (default: unix sockets, single host)")
	fs.StringVar(&f.repoAdvertise, "repo-advertise", "", "host agents reach the exports by, put in their nbds:// URIs (default: --repo-listen)")
	fs.StringVar(&f.repoPorts, "repo-ports", hub.DefaultPorts.String(), "TCP port range LO-HI of the exports with --repo-listen")
	fs.DurationVar(&f.requestAckWait, "request-ack-wait", bus.RequestAckWait, "how long a backup request an agent took may go unacknowledged before another agent takes it (how soon a crashed agent's job is retried); agents ack in progress every third of it; set when the hub creates the agents' consumer")
	fs.DurationVar(&f.leaseTTL, "lease-ttl", bus.DefaultLeaseTTL, "how long a VM's lease outlives its holder's last renewal (how soon a crashed agent's VM can be backed up again); set when the hub creates the lease bucket")
}

func (f *hubFlags) apply(cfg *system.Config) error {
	ports, err := hub.ParsePortRange(f.repoPorts)
	if err != nil {
		return fmt.Errorf("--repo-ports: %w", err)
	}
	if err := hub.CheckListen(f.repoListen, f.repoAdvertise, ports); err != nil {
		return fmt.Errorf("--repo-listen, --repo-advertise, --repo-ports: %w", err)
	}
	cfg.RepoListen, cfg.RepoAdvertise, cfg.RepoPorts = f.repoListen, f.repoAdvertise, ports
	cfg.APIListen = f.apiListen
	cfg.ReconcileInterval, cfg.ReconcileGrace = f.reconcileInterval, f.reconcileGrace
	if f.requestAckWait < time.Second || f.leaseTTL < time.Second {
		return fmt.Errorf("--request-ack-wait %s, --lease-ttl %s: each must be at least 1s", f.requestAckWait, f.leaseTTL)
	}
	cfg.RequestAckWait, cfg.LeaseTTL = f.requestAckWait, f.leaseTTL
	for _, r := range f.repositories {
		name, dir, ok := strings.Cut(r, "=")
		if !ok {
			name, dir = "default", r
		}
		if cfg.Repositories == nil {
			cfg.Repositories = map[string]string{}
		}
		cfg.Repositories[name] = dir
	}
	for _, r := range f.repositoryIDs {
		id, name, ok := strings.Cut(r, "=")
		if !ok || id == "" || name == "" {
			return fmt.Errorf("--repository-id %q: want ID=NAME, e.g. 1=default", r)
		}
		if _, known := cfg.Repositories[name]; !known && !(len(cfg.Repositories) == 0 && name == schemas.DefaultRepository) {
			return fmt.Errorf("--repository-id %q: no repository %s (--repository NAME=DIR names them)", r, name)
		}
		if cfg.RepositoryIDs == nil {
			cfg.RepositoryIDs = map[string]string{}
		}
		cfg.RepositoryIDs[id] = name
	}
	return nil
}

// agentFlags configure the node agent and its vCenter.
type agentFlags struct {
	simulate     bool
	inventory    string
	vcenterURL   string
	user         string
	passwordFile string
	insecure     bool
	caFile       string
	transport    string
	vddkLibDir   string
	agentID      string
	maxJobs      int
}

func (f *agentFlags) register(fs *pflag.FlagSet) {
	fs.BoolVar(&f.simulate, "simulate-vcenter", false, "run a simulated vCenter with CBT and sample VMs (pgtest1) in this process")
	fs.StringVar(&f.inventory, "simulate-inventory", "sample", "simulated VMs at the first start on a data dir: "+system.InventorySyntax+" (later starts restore the VMs, images, CBT state and snapshots kept under DATA/vcenter)")
	fs.StringVar(&f.vcenterURL, "vcenter-url", "", "vCenter SDK URL, https://HOST/sdk")
	fs.StringVar(&f.user, "vcenter-user", "", "vCenter user")
	fs.StringVar(&f.passwordFile, "vcenter-password-file", "", "file holding the vCenter password")
	fs.BoolVar(&f.insecure, "vcenter-insecure", false, "do not verify vCenter's TLS certificate (anyone on the path can read the session and the disks)")
	fs.StringVar(&f.caFile, "vcenter-ca", "", "PEM file of the CA (or self-signed certificate) to verify vCenter with, instead of the system's CAs")
	fs.StringVar(&f.transport, "transport", "", "how disks are read: https (vCenter's /folder with nbdkit curl) or vddk (nbdkit's VDDK plugin) (default: vddk with --vddk-libdir, else https)")
	fs.StringVar(&f.vddkLibDir, "vddk-libdir", "", "VDDK library directory for nbdkit's VDDK plugin")
	fs.StringVar(&f.agentID, "agent-id", "", "agent name in leases and logs (default: host name)")
	fs.IntVar(&f.maxJobs, "max-jobs", 2, "concurrent backups of this agent")
}

func (f *agentFlags) configured() bool { return f.simulate || f.vcenterURL != "" }

func (f *agentFlags) apply(cfg *system.Config) error {
	if !f.simulate && f.vcenterURL == "" {
		return fmt.Errorf("no vcenter: give --simulate-vcenter, or --vcenter-url with --vcenter-user and --vcenter-password-file")
	}
	if !f.simulate && (f.user == "" || f.passwordFile == "") {
		return fmt.Errorf("--vcenter-url needs --vcenter-user and --vcenter-password-file")
	}
	switch f.transport {
	case "", system.TransportHTTPS:
	case system.TransportVDDK:
		if f.vddkLibDir == "" {
			return fmt.Errorf("--transport vddk needs --vddk-libdir")
		}
	default:
		return fmt.Errorf("unknown --transport %q (want https or vddk)", f.transport)
	}
	if f.insecure && f.caFile != "" {
		return fmt.Errorf("--vcenter-insecure and --vcenter-ca exclude each other")
	}
	cfg.SimulateVCenter = f.simulate
	if f.simulate {
		vms, err := system.Inventory(f.inventory)
		if err != nil {
			return err
		}
		cfg.SimVMs = vms
	}
	cfg.VCenterURL, cfg.VCenterUser, cfg.VCenterPasswordFile = f.vcenterURL, f.user, f.passwordFile
	cfg.VCenterInsecure, cfg.VDDKLibDir = f.insecure, f.vddkLibDir
	cfg.VCenterCAFile, cfg.Transport = f.caFile, f.transport
	if f.caFile != "" {
		abs, err := filepath.Abs(f.caFile) // nbdkit curl is given it as cainfo=
		if err != nil {
			return fmt.Errorf("--vcenter-ca: %w", err)
		}
		cfg.VCenterCAFile = abs
	}
	cfg.AgentID, cfg.MaxJobs = f.agentID, f.maxJobs
	return nil
}

// systemConfig maps the global flags onto a system configuration.
func (a *app) systemConfig(name string, p processFlags) system.Config {
	return system.Config{
		DataDir:               a.dataDir,
		NATS:                  a.natsOptions(name, a.nats.urls),
		NATSListen:            a.nats.listen,
		NATSInsecure:          a.nats.insecure,
		NATSTLSDir:            a.tlsDir().Dir,
		NATSTLS:               a.nats.tls,
		NATSAdvertise:         a.nats.advertise,
		CredsDir:              a.creds().Dir,
		Replicas:              p.streamReplicas,
		MetricsListen:         p.metricsListen,
		StartupTimeout:        p.startupTimeout,
		StartupAttemptTimeout: p.startupAttempt,
		Name:                  name,
		Log:                   a.log,
	}
}

// stopTimeout bounds the time from SIGINT/SIGTERM to the process's exit,
// whatever it is doing then (waiting for the cluster at start, stopping a
// backup): past it the process exits with status 1.
const stopTimeout = 9 * time.Second

// runSystem starts the configured roles and runs them until SIGINT/SIGTERM
// or until one fails; then it stops them in reverse order. From the signal
// on, the process exits within stopTimeout.
func (a *app) runSystem(ctx context.Context, cfg system.Config) error {
	if a.log.GetLevel() > zerolog.DebugLevel {
		// govmomi's simulator prints faults it answers through the
		// standard logger; they are expected, not errors.
		stdlog.SetOutput(io.Discard)
	}
	watchdog := context.AfterFunc(ctx, func() {
		time.AfterFunc(stopTimeout, func() {
			a.log.Error().Dur("stop_timeout", stopTimeout).Msg("did not stop in time after the signal; exiting")
			os.Exit(1)
		})
	})
	defer watchdog()
	sys, err := system.Start(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			// Stopped by a signal while starting: what was asked for.
			a.log.Info().AnErr("start", err).Msg("stopped while starting")
			return nil
		}
		return err
	}
	a.log.Info().Str("process", cfg.Name).Str("data", cfg.DataDir).Str("nats_url", sys.NATSURL()).
		Bool("embedded_nats", sys.Embedded != nil).Str("api", sys.APIAddr).Str("metrics", sys.MetricsAddr).Msg("serving")
	if sys.Embedded != nil && sys.Embedded.ClientURL() != "" {
		// So that `nats --context sendense pub backup.requested ...` and
		// `nats --context sendense-monitor sub 'backup.>'` work at once.
		if paths, err := writeNATSContexts(a.creds(), sys.Embedded.ClientURL(), a.serverCA(sys.Embedded)); err != nil {
			a.log.Warn().Err(err).Msg("write nats cli contexts")
		} else {
			a.log.Info().Strs("paths", paths).Msg("nats cli contexts written")
		}
	}
	select {
	case <-ctx.Done():
		a.log.Info().Msg("stopping")
	case <-sys.Failed():
	}
	sys.Stop()
	return sys.Err()
}

// catalogPath is the catalog file under the data directory.
func catalogPath(dataDir string) string { return system.CatalogPath(dataDir) }
