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

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/copier"
	"github.com/sendense/sendense/manifest"
	"github.com/sendense/sendense/schemas"
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
	Job(ctx context.Context, id string) (backup.Job, error)
	ChainHead(ctx context.Context, vmUUID string, diskKey int32, repo string) (backup.Link, error)
}

// Targets opens and closes backup targets; *repoapi.Client implements it.
type Targets interface {
	Info(ctx context.Context, repo string) (repoapi.InfoReply, error)
	Open(ctx context.Context, req repoapi.OpenRequest) (repoapi.OpenReply, error)
	Close(ctx context.Context, ref repoapi.TargetRef) (repoapi.CloseReply, error)
	Digests(ctx context.Context, ref repoapi.TargetRef, entries []manifest.Entry) error
	Abort(ctx context.Context, ref repoapi.TargetRef) error
}

// Publisher publishes the agent's events; the *bus.Publisher of
// bus.NewAgentPublisher implements it.
type Publisher interface {
	PublishEvent(ctx context.Context, ev schemas.Event) (*jetstream.PubAck, error)
}

// Leases takes VM leases; *bus.Leases implements it.
type Leases interface {
	Acquire(ctx context.Context, key string, holder bus.Holder) (*bus.Lease, error)
}

// Cancels reads the durable cancel records; *bus.Cancels implements it.
type Cancels interface {
	Canceled(ctx context.Context, jobID string) (_ bus.CancelRecord, ok bool, _ error)
}

// Store says whether JetStream can store now (bus.StoreReady): nil when
// it can, an error saying why not otherwise.
type Store interface {
	Ready(ctx context.Context) error
}

// StoreFunc adapts a function to Store.
type StoreFunc func(ctx context.Context) error

// Ready calls f.
func (f StoreFunc) Ready(ctx context.Context) error { return f(ctx) }

// Config configures an agent. Zero values take the documented defaults.
type Config struct {
	// AgentID names this agent in lease holders and logs. Required.
	AgentID string
	// MaxJobs is how many backups run at once. Default 2.
	MaxJobs int
	// RunDir is where the agent writes a target's TLS pre-shared key for
	// the copier while it copies (a private 0700 directory per target,
	// removed after). Default os.TempDir().
	RunDir string
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
	// ProgressInterval is how often a running job's progress is sampled and
	// published as backup.progress (and at once when a disk ends). Default 1 s.
	ProgressInterval time.Duration
	// InProgressInterval is how often a running job's request is acked as
	// in progress. Default bus.InProgressInterval.
	InProgressInterval time.Duration
	// CatalogWait bounds the wait, before releasing a lease, for the catalog
	// to show the job's outcome. Default 30 s.
	CatalogWait time.Duration
	// ShutdownTimeout bounds the cleanup of running jobs on shutdown, and
	// any cleanup step (publishing a failure, removing a snapshot).
	// Default 6 s, so a stopping process ends within 10 s.
	ShutdownTimeout time.Duration
	// RepositoryFullBackoff is the least delay before a job that failed
	// because the repository is full is tried again. Default 5 min.
	RepositoryFullBackoff time.Duration
	// StoreProbeInterval is the first wait between checks of JetStream
	// after it could not store; it doubles up to 10 s while JetStream
	// still cannot. It is also the least pause after a failure, doubled
	// for each failure since the last completed job up to 1 min, so a
	// check that passes while writes still fail cannot make the agent
	// take and fail jobs in a loop. Default 2 s.
	StoreProbeInterval time.Duration
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
		c.ShutdownTimeout = 6 * time.Second
	}
	if c.RepositoryFullBackoff <= 0 {
		c.RepositoryFullBackoff = 5 * time.Minute
	}
	if c.StoreProbeInterval <= 0 {
		c.StoreProbeInterval = 2 * time.Second
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
	// Cancels says which jobs admin canceled (bus.CancelBucket): a delivery
	// of a canceled job ends it as canceled instead of running it.
	Cancels Cancels
	// Store tells when JetStream stores again after a failure; nil: the
	// agent only waits StoreProbeInterval (doubling) before it retries.
	Store Store
}

// Agent runs backups. Run it once.
type Agent struct {
	cfg     Config
	deps    Deps
	log     zerolog.Logger
	metrics *metrics

	// While JetStream cannot store the agent takes no requests: see
	// storeDown and waitStore.
	storeMu     sync.Mutex
	storeErr    error     // why it stopped; nil while it takes requests
	downStreak  int       // failures since the last completed job
	resumeAfter time.Time // the least pause after the last failure

	// jobs are the jobs this agent runs, by job id, for Cancel (cancel.go).
	jobsMu sync.Mutex
	jobs   map[string]*tracked
}

// New checks the configuration and returns an agent.
func New(cfg Config, deps Deps) (*Agent, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if deps.Requests == nil || deps.Publisher == nil || deps.Leases == nil || deps.VCenter == nil ||
		deps.Sources == nil || deps.Targets == nil || deps.Catalog == nil || deps.Cancels == nil {
		return nil, errors.New("node agent: every dependency is required")
	}
	deps.VCenter, deps.Targets, deps.Catalog = timedVCenter{deps.VCenter}, timedTargets{deps.Targets}, timedCatalog{deps.Catalog}
	a := &Agent{cfg: cfg, deps: deps, log: cfg.Log.With().Str("role", "agent").Str("agent", cfg.AgentID).Logger(),
		metrics: newMetrics(cfg.Registry), jobs: map[string]*tracked{}}
	a.metrics.setReady(true)
	return a, nil
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
		// After a free slot: a job that just ended may have found that
		// JetStream cannot store.
		if !a.waitStore(ctx) {
			<-slots
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

// Ready returns nil while the agent takes requests, and why not while it
// waits for JetStream to store again.
func (a *Agent) Ready() error {
	a.storeMu.Lock()
	defer a.storeMu.Unlock()
	return a.storeErr
}

// storeDown stops taking requests after JetStream could not store: a job
// failed with nats_unavailable, or its failure could not be published.
// Taking more work would only create and remove snapshots in a loop.
func (a *Agent) storeDown(cause error) {
	a.storeMu.Lock()
	defer a.storeMu.Unlock()
	a.downStreak++
	pause := a.cfg.StoreProbeInterval
	for i := 1; i < a.downStreak && pause < time.Minute; i++ {
		pause *= 2
	}
	pause = min(pause, time.Minute)
	a.resumeAfter = time.Now().Add(pause)
	if a.storeErr == nil {
		a.log.Error().Err(cause).Dur("pause", pause).Msg("jetstream cannot store; agent stops taking requests until it can")
	}
	a.storeErr = fmt.Errorf("jetstream cannot store: %w", cause)
	a.metrics.setReady(false)
}

// storeUp resets the pause after a job completed: JetStream stores.
func (a *Agent) storeUp() {
	a.storeMu.Lock()
	defer a.storeMu.Unlock()
	a.downStreak = 0
}

// waitStore returns at once while JetStream stores. After storeDown it
// waits until the pause is over and Deps.Store says JetStream can store,
// checking every StoreProbeInterval (doubling up to 10 s), then takes
// requests again. It returns false when ctx ends first.
func (a *Agent) waitStore(ctx context.Context) bool {
	a.storeMu.Lock()
	down, until := a.storeErr != nil, a.resumeAfter
	a.storeMu.Unlock()
	if !down {
		return true
	}
	wait := a.cfg.StoreProbeInterval
	for {
		if d := time.Until(until); d > 0 {
			if !sleep(ctx, d) {
				return false
			}
		}
		err := ctx.Err()
		if err == nil && a.deps.Store != nil {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = a.deps.Store.Ready(pctx)
			cancel()
		}
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			a.storeMu.Lock()
			a.storeErr = nil
			a.storeMu.Unlock()
			a.metrics.setReady(true)
			a.log.Info().Msg("jetstream stores again; agent takes requests")
			return true
		}
		a.log.Debug().Err(err).Dur("wait", wait).Msg("jetstream still cannot store")
		until = time.Now().Add(wait)
		wait = min(2*wait, 10*time.Second)
	}
}

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
