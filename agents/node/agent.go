package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/copier"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
	"github.com/sendense/sendense/vmware"
)

// VCenter is what the agent needs of vCenter; *vmware.Client implements it.
type VCenter interface {
	FindVM(ctx context.Context, id string) (*vmware.VM, error)
	CreateSnapshot(ctx context.Context, vm *vmware.VM, name string, quiesce bool) (types.ManagedObjectReference, error)
	SnapshotDisks(ctx context.Context, snap types.ManagedObjectReference) ([]vmware.Disk, error)
	ChangedAreas(ctx context.Context, vm *vmware.VM, snap types.ManagedObjectReference, diskKey int32, changeID string, capacity int64) ([]vmware.Extent, error)
	RemoveSnapshot(ctx context.Context, snap types.ManagedObjectReference, consolidate bool) error
	StaleSnapshots(ctx context.Context, vm *vmware.VM, prefix string) ([]vmware.Snapshot, error)
}

// Catalog is what the agent asks the catalog; the catalog service client
// implements it.
type Catalog interface {
	Job(ctx context.Context, id string) (store.Job, error)
	ChainHead(ctx context.Context, vmUUID string, diskKey int32, repo string) (store.Link, error)
}

// Targets opens and closes backup targets; *hub.Client implements it.
type Targets interface {
	Info(ctx context.Context, repo string) (hub.InfoReply, error)
	Open(ctx context.Context, req hub.OpenRequest) (hub.OpenReply, error)
	Close(ctx context.Context, ref hub.TargetRef) (hub.CloseReply, error)
	Abort(ctx context.Context, ref hub.TargetRef) error
}

// Publisher publishes events; *bus.Publisher implements it.
type Publisher interface {
	PublishEvent(ctx context.Context, subject string, ev schemas.Event) (*jetstream.PubAck, error)
}

// Leases takes VM leases; *bus.Leases implements it.
type Leases interface {
	Acquire(ctx context.Context, key, holder string) (*bus.Lease, error)
}

// Config configures an agent. Zero values take the documented defaults.
type Config struct {
	// AgentID names this agent in lease holders and logs. Required.
	AgentID string
	// MaxJobs is how many backups run at once. Default 2.
	MaxJobs int
	// DiskParallel is how many disks of one VM are copied at once. Default 2.
	DiskParallel int
	// MaxAttempts is how many attempts of a job may fail retryably; the
	// last failure is final. Counted from the job's backup.failed events
	// in the catalog, so redeliveries while waiting for a busy VM's lease
	// do not use attempts up. Default 5.
	MaxAttempts int
	// RetryBackoff is the delay before a retryable failure's redelivery,
	// doubled per attempt up to 8×. Default 5 s.
	RetryBackoff time.Duration
	// LeaseWait is the delay before a request whose VM lease is held is
	// redelivered. Default 2 s.
	LeaseWait time.Duration
	// Quiesce asks VMware Tools to quiesce the guest for the snapshot.
	Quiesce bool
	// ProgressInterval is the least time between progress events. Default 1 s.
	ProgressInterval time.Duration
	// InProgressInterval is how often a running job's request is acked as
	// in progress. Default bus.InProgressInterval.
	InProgressInterval time.Duration
	// CatalogWait bounds the wait, before releasing a lease, for the catalog
	// to show the job's outcome. Default 30 s.
	CatalogWait time.Duration
	// ShutdownTimeout bounds the cleanup of running jobs on shutdown.
	// Default 30 s.
	ShutdownTimeout time.Duration
	// Copy is the template of copier options (Incremental and Progress are
	// set per disk).
	Copy copier.Options
	Log  zerolog.Logger
	// Registry receives the agent's Prometheus metrics (sendense_agent_*).
	// Nil: no metrics.
	Registry prometheus.Registerer
}

func (c *Config) defaults() error {
	if c.AgentID == "" {
		return errors.New("node agent: AgentID is required")
	}
	if c.MaxJobs <= 0 {
		c.MaxJobs = 2
	}
	if c.DiskParallel <= 0 {
		c.DiskParallel = 2
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = 5 * time.Second
	}
	if c.LeaseWait <= 0 {
		c.LeaseWait = 2 * time.Second
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = time.Second
	}
	if c.InProgressInterval <= 0 {
		c.InProgressInterval = bus.InProgressInterval
	}
	if c.CatalogWait <= 0 {
		c.CatalogWait = 30 * time.Second
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	return nil
}

// Deps are the agent's collaborators.
type Deps struct {
	Requests  jetstream.Consumer // durable pull consumer on BACKUP_REQUESTS
	Publisher Publisher
	Leases    Leases
	VCenter   VCenter
	Sources   vmware.Sources
	Targets   Targets
	Catalog   Catalog
}

// Agent runs backups. Run it once.
type Agent struct {
	cfg     Config
	deps    Deps
	log     zerolog.Logger
	metrics *metrics
}

// New checks the configuration and returns an agent.
func New(cfg Config, deps Deps) (*Agent, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if deps.Requests == nil || deps.Publisher == nil || deps.Leases == nil || deps.VCenter == nil ||
		deps.Sources == nil || deps.Targets == nil || deps.Catalog == nil {
		return nil, errors.New("node agent: every dependency is required")
	}
	return &Agent{cfg: cfg, deps: deps, log: cfg.Log.With().Str("role", "agent").Str("agent", cfg.AgentID).Logger(),
		metrics: newMetrics(cfg.Registry)}, nil
}

// Run takes requests until ctx ends. Then it stops taking work, fails its
// running jobs as retryable (their cleanup releases snapshots, targets and
// leases) and returns within Config.ShutdownTimeout plus the cleanup time.
func (a *Agent) Run(ctx context.Context) error {
	// Jobs run under their own context, cancelled only after ctx ends, so
	// the fetch loop stops first.
	jobsCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelJobs()
	slots := make(chan struct{}, a.cfg.MaxJobs)
	var wg sync.WaitGroup
	a.log.Info().Int("max_jobs", a.cfg.MaxJobs).Msg("agent taking requests")
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return a.shutdown(cancelJobs, &wg)
		}
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		msg, err := a.deps.Requests.Next(jetstream.FetchContext(fctx))
		cancel()
		if err != nil {
			<-slots
			if ctx.Err() != nil {
				return a.shutdown(cancelJobs, &wg)
			}
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
				a.log.Warn().Err(err).Msg("fetch request")
				time.Sleep(time.Second)
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			a.handle(jobsCtx, msg)
		}()
	}
}

func (a *Agent) shutdown(cancelJobs context.CancelFunc, wg *sync.WaitGroup) error {
	a.log.Info().Msg("agent stopping: failing running jobs as retryable")
	cancelJobs()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		a.log.Info().Msg("agent stopped")
		return nil
	case <-time.After(a.cfg.ShutdownTimeout):
		return fmt.Errorf("agent %s: running jobs did not stop within %s", a.cfg.AgentID, a.cfg.ShutdownTimeout)
	}
}
