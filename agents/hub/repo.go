package hub

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/manifest"
	"github.com/sendense/sendense/repository"
)

// LeaseHolders tells who holds a lease key (ok false when nobody);
// *bus.Leases implements it.
type LeaseHolders interface {
	Holder(ctx context.Context, key string) (h bus.Holder, ok bool, err error)
}

// RepoOptions configure the repository service.
type RepoOptions struct {
	// Repositories maps names to opened repositories. Required; requests
	// for other names get CodeUnknownRepository.
	Repositories map[string]*repository.Repo
	// Leases lets the reaper see whether a target's job still holds its VM's
	// lease. Nil disables reaping of vanished agents' targets.
	Leases LeaseHolders
	// ReapInterval is how often the reaper runs. Default 10 s.
	ReapInterval time.Duration
	// ReapGrace is how long a target may exist without its job holding the
	// lease before it is reaped. Default 1 minute (longer than a lease TTL).
	ReapGrace time.Duration
	// RestoreTTL bounds a restore export's life. Default 1 hour.
	RestoreTTL time.Duration
	// Catalog tells which jobs completed; *catalog.Client implements it.
	// Progress tells whether the catalog has applied everything in
	// BACKUP_EVENTS; NewConsumerProgress implements it. With either nil,
	// an open never removes a file it did not make itself (it answers
	// CodeUnavailable while a file of the job exists) and no orphan is
	// ever removed (reconciliation, and the orphan part of a check, need
	// both and Leases).
	Catalog  Catalog
	Progress CatalogProgress
	// ReconcileInterval is how often reconciliation removes orphans: the
	// backup files that are no completed backup, no open target and no
	// target of a job holding its VM's lease. A round also runs when Serve
	// starts; a round skipped because the catalog was behind or did not
	// answer is retried after at most ReconcileRetry. Default 10 minutes;
	// negative turns periodic rounds off (Reconcile still works).
	ReconcileInterval time.Duration
	// ReconcileGrace is how long after its last modification a file is
	// safe from reconciliation, whatever the catalog says: it covers a
	// target between its close and its backup.completed being applied.
	// Default 10 minutes.
	ReconcileGrace time.Duration
	// Registry receives the service's metrics
	// (sendense_repo_reconciled_files_total, ..._bytes_total,
	// sendense_repo_reconcile_rounds_total). Nil: none.
	Registry prometheus.Registerer
	// SocketDir is where export sockets and TCP exports' TLS keys go,
	// each in a private directory removed when the export closes.
	// Default os.TempDir().
	SocketDir string
	// Listen is the host or address exports are served on over TCP with
	// TLS, for agents and restores on other hosts. Each export gets a port
	// of Ports and a fresh TLS pre-shared key that travels only in the
	// reply to the requester (OpenReply.TLS, RestoreOpenReply.TLS). Default
	// "": unix sockets in SocketDir, for a single host.
	Listen string
	// Advertise is the host put in the nbds:// URIs of the replies: the
	// name or address the agents reach this host by. Default Listen;
	// required when Listen is an unspecified address (0.0.0.0, ::).
	Advertise string
	// Ports is the range TCP exports take their ports from; a port taken
	// by another program is skipped. Default DefaultPorts (10809-10909).
	Ports PortRange
	// Shared is qemu-nbd's --shared for writable exports. Default 4.
	Shared int
	// Publisher publishes the hub's events about completed jobs
	// (backup.pruning, backup.pruned); bus.NewHubPublisher. LeaseTaker
	// takes a VM's lease while its chains change; *bus.Leases. Without
	// both (and Catalog and Progress) forget only plans (dry run) and no
	// pending prune is resumed.
	Publisher  EventPublisher
	LeaseTaker LeaseTaker
	// PruneRetry is how often pending prunes left at start (their VM's
	// lease held) are tried again. Default 30 s.
	PruneRetry time.Duration
	// ForgetRetry is how long a forget request (a forget schedule's
	// firing, ServeForgetRequests) whose VM was busy, or whose catalog
	// did not answer, waits before it is taken again. Default
	// bus.ForgetBusyDelay (2 minutes).
	ForgetRetry time.Duration
	// PruneHook, for tests, is called at each step of a prune (the
	// repository's steps and StepIntent, StepDone); an error stops the
	// prune there. Nil: none.
	PruneHook repository.PruneHook
	Log       zerolog.Logger
}

// PortRange is an inclusive range of TCP ports.
type PortRange struct{ Lo, Hi int }

// DefaultPorts is the default range of ports of TCP exports.
var DefaultPorts = PortRange{Lo: 10809, Hi: 10909}

// String formats the range as LO-HI.
func (p PortRange) String() string { return fmt.Sprintf("%d-%d", p.Lo, p.Hi) }

// ParsePortRange parses "LO-HI" (or a single port).
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, found := strings.Cut(s, "-")
	if !found {
		hi = lo
	}
	var p PortRange
	var err1, err2 error
	p.Lo, err1 = strconv.Atoi(strings.TrimSpace(lo))
	p.Hi, err2 = strconv.Atoi(strings.TrimSpace(hi))
	if err1 != nil || err2 != nil {
		return PortRange{}, fmt.Errorf("port range %q: want LO-HI", s)
	}
	return p, p.validate()
}

func (p PortRange) validate() error {
	if p.Lo < 1 || p.Hi > 65535 || p.Lo > p.Hi {
		return fmt.Errorf("port range %s: want 1 <= LO <= HI <= 65535", p)
	}
	return nil
}

// CheckListen checks the TCP export settings of RepoOptions (Listen,
// Advertise, Ports) before anything starts: an advertised host needs a
// listen address, an unspecified listen address (0.0.0.0, ::) needs an
// advertised host, and the port range must be valid.
func CheckListen(listen, advertise string, ports PortRange) error {
	if listen == "" {
		if advertise != "" {
			return errors.New("an advertised address without a listen address (exports are on unix sockets)")
		}
		return nil
	}
	if err := ports.validate(); err != nil {
		return err
	}
	if ip := net.ParseIP(listen); advertise == "" && ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("listen address %s is no address agents can reach: set the advertised address", listen)
	}
	return nil
}

// ReconcileRetry bounds the wait before the next reconciliation round
// after a skipped one (the catalog starts after the hub in `sendense
// serve`, so the round at start is usually skipped).
const ReconcileRetry = 30 * time.Second

// RepoService is the sendense.repo service. Its methods are safe for
// concurrent use.
type RepoService struct {
	opts    RepoOptions
	log     zerolog.Logger
	metrics *metrics

	// reconcileMu serialises reconciliation rounds (periodic and checks),
	// so a file is removed and counted once.
	reconcileMu sync.Mutex

	mu       sync.Mutex
	targets  map[repoapi.TargetRef]*target
	restores map[string]*restoreExport
	// busy holds the refs an open or a reconciliation is working on: the
	// file of a busy ref is removed or made by that one operation only.
	busy map[repoapi.TargetRef]struct{}
	// nextPort is the offset in opts.Ports of the next TCP export's first
	// try; ports rotate so a closed export's port is reused last.
	nextPort int
	// pruning holds the VMs a prune runs on; restoring counts the restore
	// exports of each VM open or being opened. A prune starts only with
	// none, and a restore only while no prune runs.
	pruning   map[string]bool
	restoring map[string]int
}

type target struct {
	ref    repoapi.TargetRef
	path   string
	export *repository.Export
	opened time.Time
	// backing (the base's file name, "" for a full) and capacity are
	// what the open made: the close checks the file still says so.
	backing  string
	capacity int64
	// man is the manifest the close writes: the base's (incremental) or
	// all zero chunks (full), with the digests the agent sends. Guarded
	// by RepoService.mu.
	man *manifest.Manifest
}

type restoreExport struct {
	export  *repository.Export
	expires time.Time
	vm      string
}

// NewRepoService makes the service; Serve registers it on NATS.
func NewRepoService(opts RepoOptions) (*RepoService, error) {
	if len(opts.Repositories) == 0 {
		return nil, errors.New("repository service: no repositories configured")
	}
	if opts.ReapInterval <= 0 {
		opts.ReapInterval = 10 * time.Second
	}
	if opts.ReapGrace <= 0 {
		opts.ReapGrace = time.Minute
	}
	if opts.RestoreTTL <= 0 {
		opts.RestoreTTL = time.Hour
	}
	if opts.Shared <= 0 {
		opts.Shared = repository.DefaultShared
	}
	if opts.ReconcileInterval == 0 {
		opts.ReconcileInterval = 10 * time.Minute
	}
	if opts.ReconcileGrace <= 0 {
		opts.ReconcileGrace = 10 * time.Minute
	}
	if opts.Listen != "" && opts.Ports == (PortRange{}) {
		opts.Ports = DefaultPorts
	}
	if err := CheckListen(opts.Listen, opts.Advertise, opts.Ports); err != nil {
		return nil, fmt.Errorf("repository service: %w", err)
	}
	if opts.Advertise == "" {
		opts.Advertise = opts.Listen
	}
	s := &RepoService{
		opts:     opts,
		log:      opts.Log.With().Str("role", "repository").Logger(),
		metrics:  newMetrics(opts.Registry),
		targets:  map[repoapi.TargetRef]*target{},
		restores: map[string]*restoreExport{},
		busy:     map[repoapi.TargetRef]struct{}{},

		pruning:   map[string]bool{},
		restoring: map[string]int{},
	}
	if s.opts.ForgetRetry <= 0 {
		s.opts.ForgetRetry = bus.ForgetBusyDelay
	}
	if s.opts.PruneRetry <= 0 {
		s.opts.PruneRetry = 30 * time.Second
	}
	for name := range opts.Repositories {
		s.metrics.initRepository(name)
	}
	return s, nil
}

// Serve registers the micro service on nc, closes ready (when not nil) once
// it answers, and runs the reaper until ctx ends; then it stops the service
// and closes every export it made.
func (s *RepoService) Serve(ctx context.Context, nc *nats.Conn, ready chan<- struct{}) error {
	markReady := sync.OnceFunc(func() {
		if ready != nil {
			close(ready)
		}
	})
	defer markReady()
	svc, err := micro.AddService(nc, micro.Config{
		Name:        repoapi.ServiceName,
		Version:     "1.0.0",
		Description: "Sendense repository: QCOW2 targets exported with qemu-nbd",
	})
	if err != nil {
		return fmt.Errorf("add service %s: %w", repoapi.ServiceName, err)
	}
	defer svc.Stop()
	endpoints := []struct {
		name, subject string
		h             func(context.Context, []byte) (any, error)
		timeout       time.Duration // 0: requestTimeout
	}{
		{"info", repoapi.SubjectInfo, s.info, 0},
		{"target-open", repoapi.SubjectTargetOpen, s.openTarget, 0},
		{"target-close", repoapi.SubjectTargetClose, s.closeTarget, 0},
		{"target-abort", repoapi.SubjectTargetAbort, s.abortTarget, 0},
		{"restore-open", repoapi.SubjectRestoreOpen, s.openRestore, 0},
		{"restore-close", repoapi.SubjectRestoreClose, s.closeRestore, 0},
		{"check", repoapi.SubjectCheck, s.check, 0},
		{"forget", repoapi.SubjectForget, s.forget, forgetTimeout},
		{"target-digests", repoapi.SubjectTargetDigests, s.targetDigests, 0},
		{"verify", repoapi.SubjectVerify, s.verify, repoapi.VerifyTimeout},
		{"manifest", repoapi.SubjectManifest, s.manifestPage, 0},
	}
	// Handlers run in their own goroutines; shutdown waits for them before
	// closing everything, so no export or file is made after closeAll.
	var (
		inflightMu sync.Mutex
		inflight   sync.WaitGroup
		stopping   bool
	)
	for _, e := range endpoints {
		h, timeout := e.h, cmp.Or(e.timeout, requestTimeout)
		if err := svc.AddEndpoint(e.name, bus.GuardReply(s.log, micro.HandlerFunc(func(r micro.Request) {
			inflightMu.Lock()
			defer inflightMu.Unlock()
			if stopping {
				_ = r.Error(repoapi.CodeInternal, "repository service stopping", nil)
				return
			}
			inflight.Add(1)
			subject, reply, data := r.Subject(), r.Reply(), r.Data()
			go func() {
				defer inflight.Done()
				s.handle(ctx, nc, subject, reply, data, timeout, h)
			}()
		})), micro.WithEndpointSubject(e.subject)); err != nil {
			return fmt.Errorf("add endpoint %s: %w", e.subject, err)
		}
	}
	// The server must have the subscriptions before anyone is told the
	// service answers: a request sent before would find no responder.
	if err := nc.Flush(); err != nil {
		s.log.Warn().Err(err).Msg("flush repository service subscriptions")
	}
	s.log.Info().Int("repositories", len(s.opts.Repositories)).Msg("repository service ready")
	markReady()

	var reconciler sync.WaitGroup
	switch {
	case s.opts.ReconcileInterval < 0:
	case !s.canReconcile():
		s.log.Warn().Err(errReconcileOff).Msg("orphan files will not be removed")
	default:
		reconciler.Go(func() { s.reconcileLoop(ctx) })
	}
	if s.canPrune(false) == nil {
		reconciler.Go(func() { s.resumeLoop(ctx) })
	}
	t := time.NewTicker(s.opts.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			svc.Stop()
			inflightMu.Lock()
			stopping = true
			inflightMu.Unlock()
			inflight.Wait()
			reconciler.Wait()
			s.closeAll()
			return nil
		case <-t.C:
			s.Reap(ctx)
		}
	}
}

// reconcileLoop runs a reconciliation round now and every
// ReconcileInterval, or after ReconcileRetry when a round was skipped,
// until ctx ends.
func (s *RepoService) reconcileLoop(ctx context.Context) {
	for {
		next := s.opts.ReconcileInterval
		if _, err := s.Reconcile(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			next = min(next, ReconcileRetry)
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// requestTimeout bounds a request's work; forgetTimeout a forget's, which
// merges and rebases whole images (VerifyTimeout a verify's).
const (
	requestTimeout = 2 * time.Minute
	forgetTimeout  = 30 * time.Minute
)

// handle runs one request; errors become micro errors with a code. It
// answers through nc, not through the micro.Request: micro reads the
// request's state when the callback returns, so the request must not be
// touched from this goroutine.
func (s *RepoService) handle(ctx context.Context, nc *nats.Conn, subject, reply string, data []byte, timeout time.Duration, h func(context.Context, []byte) (any, error)) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := h(ctx, data)
	resp := &nats.Msg{Subject: reply}
	if err != nil {
		code := repoapi.CodeInternal
		var ce *codedError
		if errors.As(err, &ce) {
			code = ce.code
		}
		s.log.Warn().Err(err).Str("subject", subject).Str("code", code).Msg("repository request failed")
		resp.Header = nats.Header{micro.ErrorHeader: {err.Error()}, micro.ErrorCodeHeader: {code}}
	} else if resp.Data, err = json.Marshal(out); err != nil {
		resp.Header = nats.Header{micro.ErrorHeader: {err.Error()}, micro.ErrorCodeHeader: {repoapi.CodeInternal}}
	}
	if reply == "" {
		return
	}
	if err := nc.PublishMsg(resp); err != nil {
		s.log.Warn().Err(err).Str("subject", subject).Msg("repository reply")
	}
}

type codedError struct {
	code string
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

func coded(code string, err error) error { return &codedError{code: code, err: err} }

func (s *RepoService) repo(name string) (*repository.Repo, error) {
	r, ok := s.opts.Repositories[name]
	if !ok {
		return nil, coded(repoapi.CodeUnknownRepository, fmt.Errorf("unknown repository %q", name))
	}
	return r, nil
}

// decodeRepo decodes a request into v and returns the repository it names
// (*repo is read after decoding).
func (s *RepoService) decodeRepo(data []byte, v any, repo *string) (*repository.Repo, error) {
	if err := decode(data, v); err != nil {
		return nil, err
	}
	return s.repo(*repo)
}

func decode(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return coded(repoapi.CodeBadRequest, fmt.Errorf("decode request: %w", err))
	}
	return nil
}

func (s *RepoService) info(_ context.Context, data []byte) (any, error) {
	var req repoapi.InfoRequest
	r, err := s.decodeRepo(data, &req, &req.Repository)
	if err != nil {
		return nil, err
	}
	return repoapi.InfoReply{Repository: req.Repository, Root: r.Root()}, nil
}

func (s *RepoService) openTarget(ctx context.Context, data []byte) (any, error) {
	var req repoapi.OpenRequest
	r, err := s.decodeRepo(data, &req, &req.Repository)
	if err != nil {
		return nil, err
	}
	if err := validateOpen(r, req); err != nil {
		return nil, err
	}
	log := s.log.With().Str("job_id", req.JobID).Str("vm_uuid", req.VMUUID).Int32("disk_key", req.DiskKey).Logger()
	release, err := s.reserve(req.TargetRef)
	if err != nil {
		return nil, err
	}
	defer release()
	s.mu.Lock()
	old := s.targets[req.TargetRef]
	delete(s.targets, req.TargetRef)
	s.mu.Unlock()
	if old != nil {
		// An earlier attempt of this job left its target open: it is
		// partial (a target becomes a backup only after its close).
		log.Warn().Str("path", old.path).Msg("closing target of an earlier attempt")
		_ = old.export.Close(ctx)
		if err := r.Remove(req.VMUUID, req.DiskKey, req.JobID); err != nil {
			return nil, classify(fmt.Errorf("remove partial target of job %s disk %d: %w", req.JobID, req.DiskKey, err))
		}
	} else if err := s.removeEarlierFile(ctx, r, req.TargetRef, log); err != nil {
		return nil, err
	}
	if req.BackingJobID != "" {
		// A base that is gone or broken would make an incremental that
		// cannot be restored: say so, and the agent takes a full.
		if err := r.CheckBase(ctx, req.VMUUID, req.DiskKey, req.BackingJobID); err != nil {
			return nil, classify(err)
		}
	}
	man, err := s.startManifest(r, req)
	if err != nil {
		return nil, err
	}
	path, err := r.Create(ctx, req.VMUUID, req.DiskKey, req.JobID, req.CapacityBytes, req.BackingJobID)
	if err != nil {
		return nil, classify(err)
	}
	exp, psk, err := s.export(ctx, r, path, repository.ExportOptions{Shared: s.opts.Shared, Owner: req.JobID})
	if err != nil {
		_ = r.Remove(req.VMUUID, req.DiskKey, req.JobID)
		return nil, classify(err)
	}
	var backing string
	if req.BackingJobID != "" {
		bpath, _ := r.Path(req.VMUUID, req.DiskKey, req.BackingJobID) // validated by validateOpen
		backing = filepath.Base(bpath)
	}
	s.mu.Lock()
	s.targets[req.TargetRef] = &target{ref: req.TargetRef, path: path, export: exp, opened: time.Now(), man: man,
		backing: backing, capacity: req.CapacityBytes}
	s.mu.Unlock()
	rel, _ := filepath.Rel(r.Root(), path)
	log.Info().Str("target", rel).Str("backing_job_id", req.BackingJobID).Str("uri", exp.URI()).Msg("target opened")
	return repoapi.OpenReply{URI: exp.URI(), Target: rel, Path: path, TLS: psk}, nil
}

// export starts an export of path: on a unix socket in SocketDir, or with
// Listen set on a port of Ports with TLS and a fresh pre-shared key, which
// is returned for the reply and kept nowhere else (the export's private
// directory holds it for qemu-nbd until the export closes). Ports taken by
// another program are skipped; all of them taken answers CodeUnavailable.
func (s *RepoService) export(ctx context.Context, r *repository.Repo, path string, opts repository.ExportOptions) (*repository.Export, *repository.PSK, error) {
	opts.SocketDir = s.opts.SocketDir
	if s.opts.Listen == "" {
		exp, err := r.Export(ctx, path, opts)
		return exp, nil, err
	}
	psk, err := repository.NewPSK()
	if err != nil {
		return nil, nil, err
	}
	opts.PSK = &psk
	opts.AdvertiseHost = s.opts.Advertise
	n := s.opts.Ports.Hi - s.opts.Ports.Lo + 1
	for range n {
		s.mu.Lock()
		port := s.opts.Ports.Lo + s.nextPort
		s.nextPort = (s.nextPort + 1) % n
		s.mu.Unlock()
		opts.TCPAddr = net.JoinHostPort(s.opts.Listen, strconv.Itoa(port))
		exp, err := r.Export(ctx, path, opts)
		if errors.Is(err, repository.ErrAddrInUse) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		return exp, &psk, nil
	}
	return nil, nil, coded(repoapi.CodeUnavailable, fmt.Errorf("export %s: every port of %s on %s is in use", path, s.opts.Ports, s.opts.Listen))
}

// validateOpen refuses a request that could never succeed before anything
// is touched.
func validateOpen(r *repository.Repo, req repoapi.OpenRequest) error {
	if _, err := r.Path(req.VMUUID, req.DiskKey, req.JobID); err != nil {
		return coded(repoapi.CodeBadRequest, err)
	}
	if err := repository.ValidateCapacity(req.CapacityBytes); err != nil {
		return coded(repoapi.CodeBadRequest, err)
	}
	if req.BackingJobID == "" {
		return nil
	}
	if err := repository.ValidateJobID(req.BackingJobID); err != nil {
		return coded(repoapi.CodeBadRequest, fmt.Errorf("backing job id: %w", err))
	}
	if req.BackingJobID == req.JobID {
		return coded(repoapi.CodeBadRequest, fmt.Errorf("job %s cannot back onto itself: %w", req.JobID, repository.ErrInvalidID))
	}
	return nil
}

// reserve marks ref busy until release is called. A ref already busy (a
// reconciliation removing its file, or another open of it) answers
// CodeUnavailable: the agent tries again later.
func (s *RepoService) reserve(ref repoapi.TargetRef) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.busy[ref]; ok {
		return nil, coded(repoapi.CodeUnavailable, fmt.Errorf("target of job %s disk %d of vm %s is being opened or reconciled", ref.JobID, ref.DiskKey, ref.VMUUID))
	}
	s.busy[ref] = struct{}{}
	return func() {
		s.mu.Lock()
		delete(s.busy, ref)
		s.mu.Unlock()
	}, nil
}

// removeEarlierFile removes the file of the job that an earlier attempt
// left (the target was not open in this service: the hub restarted, or the
// reaper closed it), but never a completed backup: a job the catalog shows
// completed answers CodeConflict and its file stays. Any other file is
// removed only when the catalog has applied everything BACKUP_EVENTS holds,
// so a backup.completed stored but not yet applied cannot be missed; when
// it has not, or nothing can tell, CodeUnavailable.
func (s *RepoService) removeEarlierFile(ctx context.Context, r *repository.Repo, req repoapi.TargetRef, log zerolog.Logger) error {
	path, err := r.Path(req.VMUUID, req.DiskKey, req.JobID)
	if err != nil {
		return classify(err)
	}
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("stat earlier file of job %s disk %d: %w", req.JobID, req.DiskKey, err)
	}
	if s.opts.Catalog == nil || s.opts.Progress == nil {
		return coded(repoapi.CodeUnavailable, fmt.Errorf("file %s of job %s exists and no catalog is configured to tell whether it is a completed backup", path, req.JobID))
	}
	// Progress first, the job second: an event stored before the
	// progress read is then in the job we read.
	behind := s.opts.Progress.CaughtUp(ctx)
	job, err := s.opts.Catalog.Job(ctx, req.JobID)
	switch {
	case err == nil && job.Status == backup.StatusCompleted:
		return coded(repoapi.CodeConflict, fmt.Errorf("job %s is completed in the catalog: its file %s is a backup and stays", req.JobID, path))
	case err != nil && !errors.Is(err, backup.ErrNotFound):
		return coded(repoapi.CodeUnavailable, fmt.Errorf("ask the catalog whether job %s completed: %w", req.JobID, err))
	case behind != nil:
		return coded(repoapi.CodeUnavailable, fmt.Errorf("file %s of job %s exists and the catalog cannot vouch it is no completed backup: %w", path, req.JobID, behind))
	}
	log.Info().Str("path", path).Str("status", job.Status).Msg("removing the file of an earlier attempt")
	if err := r.Remove(req.VMUUID, req.DiskKey, req.JobID); err != nil {
		return classify(fmt.Errorf("remove file of an earlier attempt of job %s disk %d: %w", req.JobID, req.DiskKey, err))
	}
	return nil
}

// classify maps repository errors to service codes.
func classify(err error) error {
	switch {
	case errors.Is(err, repository.ErrNoSpace), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return coded(repoapi.CodeRepositoryFull, err)
	case errors.Is(err, repository.ErrNoBacking):
		return coded(repoapi.CodeBaseMissing, err)
	case errors.Is(err, repository.ErrBrokenChain), errors.Is(err, repository.ErrCorrupt):
		return coded(repoapi.CodeBaseInvalid, err)
	case errors.Is(err, repository.ErrInvalidID), errors.Is(err, repository.ErrInvalidCapacity),
		errors.Is(err, repository.ErrCapacityMismatch):
		return coded(repoapi.CodeBadRequest, err)
	case errors.Is(err, repository.ErrExists), errors.Is(err, repository.ErrBusy), errors.Is(err, repository.ErrIsBacking):
		return coded(repoapi.CodeConflict, err)
	}
	return err
}

func (s *RepoService) take(ref repoapi.TargetRef) (*target, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.targets[ref]
	if !ok {
		return nil, coded(repoapi.CodeNotFound, fmt.Errorf("no open target for job %s disk %d of vm %s", ref.JobID, ref.DiskKey, ref.VMUUID))
	}
	delete(s.targets, ref)
	return t, nil
}

// takeSame removes t from the open targets if it is still the one open
// for its ref: a newer attempt of the job may have replaced it.
func (s *RepoService) takeSame(t *target) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.targets[t.ref] != t {
		return false
	}
	delete(s.targets, t.ref)
	return true
}

func (s *RepoService) closeTarget(ctx context.Context, data []byte) (any, error) {
	var ref repoapi.TargetRef
	r, err := s.decodeRepo(data, &ref, &ref.Repository)
	if err != nil {
		return nil, err
	}
	t, err := s.take(ref)
	if err != nil {
		return nil, err
	}
	if err := t.export.Close(ctx); err != nil {
		// Written data may be lost (SIGKILL): this target is not a backup.
		_ = r.Remove(ref.VMUUID, ref.DiskKey, ref.JobID)
		return nil, fmt.Errorf("close target of job %s disk %d: %w", ref.JobID, ref.DiskKey, err)
	}
	if err := t.export.ExitErr(); err != nil {
		_ = r.Remove(ref.VMUUID, ref.DiskKey, ref.JobID)
		return nil, fmt.Errorf("target of job %s disk %d died before close: %w", ref.JobID, ref.DiskKey, err)
	}
	// The headers of the file and its backing chain, not qemu-img info
	// (25 ms a disk): every file of the chain opens as a qcow2, none is
	// marked corrupt, and the file still has the backing file and the
	// size the open gave it.
	info, err := r.HeaderChain(t.path)
	if err != nil {
		return nil, fmt.Errorf("info of target of job %s disk %d: %w", ref.JobID, ref.DiskKey, err)
	}
	if info.BackingFile != t.backing || info.VirtualSize != t.capacity {
		return nil, fmt.Errorf("target of job %s disk %d: backing file %q and %d bytes, opened with %q and %d",
			ref.JobID, ref.DiskKey, info.BackingFile, info.VirtualSize, t.backing, t.capacity)
	}
	mpath, err := r.ManifestPath(ref.VMUUID, ref.DiskKey, ref.JobID)
	if err != nil {
		return nil, classify(err)
	}
	s.mu.Lock()
	man := t.man
	t.man = nil
	s.mu.Unlock()
	if man == nil {
		_ = r.Remove(ref.VMUUID, ref.DiskKey, ref.JobID)
		return nil, fmt.Errorf("target of job %s disk %d has no manifest", ref.JobID, ref.DiskKey)
	}
	sum, err := manifest.Write(mpath, man)
	if err != nil {
		_ = r.Remove(ref.VMUUID, ref.DiskKey, ref.JobID)
		return nil, classify(fmt.Errorf("manifest of job %s disk %d: %w", ref.JobID, ref.DiskKey, err))
	}
	rel, _ := filepath.Rel(r.Root(), t.path)
	s.log.Info().Str("job_id", ref.JobID).Int32("disk_key", ref.DiskKey).Str("target", rel).
		Int64("actual_size_bytes", info.ActualSize).Str("manifest_sha256", sum.String()).Msg("target closed")
	return repoapi.CloseReply{Target: rel, ActualSizeBytes: info.ActualSize, VirtualSize: info.VirtualSize, BackingFile: info.BackingFile,
		ManifestSHA256: sum.String()}, nil
}

func (s *RepoService) abortTarget(ctx context.Context, data []byte) (any, error) {
	var ref repoapi.TargetRef
	r, err := s.decodeRepo(data, &ref, &ref.Repository)
	if err != nil {
		return nil, err
	}
	log := s.log.With().Str("job_id", ref.JobID).Int32("disk_key", ref.DiskKey).Logger()
	if t, err := s.take(ref); err == nil {
		// Open here, never closed: a partial file by definition.
		_ = t.export.Close(ctx)
		if err := r.Remove(ref.VMUUID, ref.DiskKey, ref.JobID); err != nil {
			return nil, classify(err)
		}
		log.Info().Msg("target aborted, partial file removed")
		return struct{}{}, nil
	}
	// Closed already (or never open here): it may be a completed backup
	// whose agent failed afterwards. Only the catalog can say it is not.
	if err := s.removeEarlierFile(ctx, r, ref, log); err != nil {
		return nil, err
	}
	log.Info().Msg("closed target aborted, its file removed")
	return struct{}{}, nil
}

func (s *RepoService) openRestore(ctx context.Context, data []byte) (any, error) {
	var ref repoapi.TargetRef
	r, err := s.decodeRepo(data, &ref, &ref.Repository)
	if err != nil {
		return nil, err
	}
	path, err := r.Path(ref.VMUUID, ref.DiskKey, ref.JobID)
	if err != nil {
		return nil, classify(err)
	}
	// No restore while the VM's chain changes, and none of a point being
	// pruned or pruned.
	s.mu.Lock()
	if s.pruning[ref.VMUUID] {
		s.mu.Unlock()
		return nil, coded(repoapi.CodeBusy, fmt.Errorf("restore of job %s: vm %s is being pruned, try again later", ref.JobID, ref.VMUUID))
	}
	s.restoring[ref.VMUUID]++
	s.mu.Unlock()
	opened := false
	defer func() {
		if !opened {
			s.restoreDone(ref.VMUUID)
		}
	}()
	if s.opts.Catalog != nil {
		j, err := s.opts.Catalog.Job(ctx, ref.JobID)
		switch {
		case err == nil && j.Status == backup.StatusPruned:
			return nil, coded(repoapi.CodeNotFound, fmt.Errorf("restore of job %s: the point was pruned", ref.JobID))
		case err == nil && j.Prune != nil && j.Prune.State == backup.PrunePending:
			return nil, coded(repoapi.CodeBusy, fmt.Errorf("restore of job %s: the point is being pruned", ref.JobID))
		}
	}
	info, err := r.Info(ctx, path)
	if err != nil {
		return nil, coded(repoapi.CodeNotFound, fmt.Errorf("backup of job %s disk %d: %w", ref.JobID, ref.DiskKey, err))
	}
	id := "restore-" + strings.ToLower(nuid.Next())
	exp, psk, err := s.export(ctx, r, path, repository.ExportOptions{ReadOnly: true, Shared: 4, Owner: id})
	if err != nil {
		return nil, err
	}
	opened = true
	s.mu.Lock()
	s.restores[id] = &restoreExport{export: exp, expires: time.Now().Add(s.opts.RestoreTTL), vm: ref.VMUUID}
	s.mu.Unlock()
	return repoapi.RestoreOpenReply{ExportID: id, URI: exp.URI(), Path: path, VirtualSize: info.VirtualSize, TLS: psk}, nil
}

func (s *RepoService) closeRestore(ctx context.Context, data []byte) (any, error) {
	var req repoapi.RestoreCloseRequest
	if err := decode(data, &req); err != nil {
		return nil, err
	}
	s.mu.Lock()
	re, ok := s.restores[req.ExportID]
	delete(s.restores, req.ExportID)
	s.mu.Unlock()
	if !ok {
		return nil, coded(repoapi.CodeNotFound, fmt.Errorf("no restore export %q", req.ExportID))
	}
	defer s.restoreDone(re.vm)
	return struct{}{}, re.export.Close(ctx)
}

// restoreDone counts one restore export of vm less.
func (s *RepoService) restoreDone(vm string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.restoring[vm]--; s.restoring[vm] <= 0 {
		delete(s.restoring, vm)
	}
}

// Reap closes targets whose job no longer holds its VM's lease (the agent
// vanished) and removes their partial files, and closes expired restore
// exports. It runs every ReapInterval; tests call it directly.
func (s *RepoService) Reap(ctx context.Context) {
	now := time.Now()
	var stale []*target
	s.mu.Lock()
	for ref, t := range s.targets {
		if now.Sub(t.opened) < s.opts.ReapGrace {
			continue
		}
		stale = append(stale, t)
		_ = ref
	}
	var expired []*restoreExport
	for id, re := range s.restores {
		if now.After(re.expires) {
			expired = append(expired, re)
			delete(s.restores, id)
		}
	}
	s.mu.Unlock()
	for _, re := range expired {
		_ = re.export.Close(ctx)
		s.restoreDone(re.vm)
	}
	if s.opts.Leases == nil {
		return
	}
	for _, t := range stale {
		holder, held, err := s.opts.Leases.Holder(ctx, bus.VMLeaseKey(t.ref.VMUUID))
		if err != nil {
			s.log.Warn().Err(err).Msg("reaper: read lease")
			continue
		}
		if held && holder.JobID == t.ref.JobID {
			continue
		}
		s.reapTarget(ctx, t, holder)
	}
}

// reapTarget closes a target whose job lost its lease and removes its
// partial file, unless an open of the same ref is running or the target
// was closed or replaced meanwhile.
func (s *RepoService) reapTarget(ctx context.Context, t *target, holder bus.Holder) {
	release, err := s.reserve(t.ref)
	if err != nil {
		return // a newer attempt is opening it: leave it to that open
	}
	defer release()
	if !s.takeSame(t) {
		return // closed, or replaced by a newer attempt, meanwhile
	}
	s.log.Warn().Str("job_id", t.ref.JobID).Int32("disk_key", t.ref.DiskKey).Str("holder", holder.String()).
		Msg("reaping target of a job that no longer holds its lease")
	_ = t.export.Close(ctx)
	if r, ok := s.opts.Repositories[t.ref.Repository]; ok {
		if err := r.Remove(t.ref.VMUUID, t.ref.DiskKey, t.ref.JobID); err != nil {
			s.log.Warn().Err(err).Str("job_id", t.ref.JobID).Msg("reaper: remove partial file")
		}
	}
}

// OpenTargets returns how many targets are open (for tests and metrics).
func (s *RepoService) OpenTargets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.targets)
}

func (s *RepoService) closeAll() {
	s.mu.Lock()
	targets := s.targets
	restores := s.restores
	s.targets = map[repoapi.TargetRef]*target{}
	s.restores = map[string]*restoreExport{}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, t := range targets {
		_ = t.export.Close(ctx)
		if r, ok := s.opts.Repositories[t.ref.Repository]; ok {
			_ = r.Remove(t.ref.VMUUID, t.ref.DiskKey, t.ref.JobID)
		}
	}
	for _, re := range restores {
		_ = re.export.Close(ctx)
		s.restoreDone(re.vm)
	}
}
