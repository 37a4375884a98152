package bus

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
)

// Store watchdog defaults (EmbeddedOptions.StoreCheckInterval and
// StoreMinFree).
const (
	// DefaultStoreCheckInterval is how often an embedded server checks
	// that JetStream can write, and the shortest time between two attempts
	// to recover it.
	DefaultStoreCheckInterval = 5 * time.Second
	// DefaultStoreMinFree is the least free space, in bytes, on the
	// store's file system before JetStream is restarted after it could not
	// write, when EmbeddedOptions.StoreMinFree is not set: 64 MiB, or
	// StoreMinFreePercent of the file system up to 1 GiB when that is
	// more. 64 MiB holds what a restart writes (each stream's index and
	// consumer state) and 64 messages of the largest payload (1 MiB), so a
	// restart on a disk that is only just not full does not fail again at
	// its first writes.
	DefaultStoreMinFree int64 = 64 << 20
	// StoreMinFreePercent is the share of the file system, in percent,
	// that must be free at least (up to 1 GiB) by the default rule: on a
	// large disk something else filled, a few MiB freed are likely gone
	// again before JetStream has stored anything.
	StoreMinFreePercent = 1
	// storeMinFreePercentCap caps the percentage rule, so an operator of
	// a large disk is not asked for tens of GiB.
	storeMinFreePercentCap int64 = 1 << 30
	// storeRestartBackoffMax bounds the wait between restarts that do not
	// hold (JetStream fails again at once); the wait starts at the check
	// interval and doubles. It is also how long JetStream must have stored
	// since the last restart for the wait to start over, and how often the
	// wait for free space is logged again.
	storeRestartBackoffMax = time.Minute
	// healthzWriteError is how nats-server's Healthz words a stream's
	// write error ("JetStream stream '$G > S' write error: ..."). Healthz
	// is the only place the server shows it; the full-disk test fails if a
	// new nats-server words it otherwise.
	healthzWriteError = "write error"
)

// errJetStreamDown is the problem of a server whose JetStream is shut down.
var errJetStreamDown = errors.New("jetstream is shut down")

// storeWatch is the watchdog of an embedded server's JetStream store. A
// standalone nats-server that fails to write a stream's file (ENOSPC)
// keeps the error on the stream and never answers a publish to it again,
// even once space is back; a clustered one shuts JetStream down. Either
// way only a JetStream restart recovers. Every interval the watchdog
// checks; when JetStream cannot write and the store's file system has
// space again it shuts JetStream down (if it is still up) and enables it
// again with the configuration it started with. It never restarts faster
// than the interval; restarts that do not hold are spaced out up to
// storeRestartBackoffMax.
type storeWatch struct {
	srv      *server.Server
	cfg      server.JetStreamConfig // as the server builds it at start; StoreDir is the parent of jetstream/
	dir      string                 // the JetStream directory, whose file system is measured
	interval time.Duration
	minFree  int64 // 0: the default rule (DefaultStoreMinFree)
	log      zerolog.Logger
	stop     chan struct{}
	done     chan struct{}

	err      atomic.Pointer[error] // what the last check found; nil when JetStream stores
	restarts atomic.Int64

	// Only the watchdog's goroutine uses these.
	backoff     time.Duration // wait after the next restart before another one
	notBefore   time.Time     // no restart before this
	lastRestart time.Time
	lastWaitLog time.Time
}

// startStoreWatch starts the watchdog of srv, whose JetStream is up with
// the options sopts made from opts.
func startStoreWatch(srv *server.Server, sopts *server.Options, opts EmbeddedOptions, log zerolog.Logger) *storeWatch {
	w := &storeWatch{
		srv: srv,
		// What Server.Start passes to EnableJetStream (nats-server
		// v2.15.2 server/server.go): the same limits and sync, and the
		// parent of the jetstream directory, which EnableJetStream appends.
		// JetStreamConfig() would give the directory itself, and nothing
		// once JetStream is shut down.
		cfg: server.JetStreamConfig{
			StoreDir:     sopts.StoreDir,
			SyncInterval: sopts.SyncInterval,
			SyncAlways:   sopts.SyncAlways,
			Strict:       !sopts.NoJetStreamStrict,
			MaxMemory:    sopts.JetStreamMaxMemory,
			MaxStore:     sopts.JetStreamMaxStore,
			Domain:       sopts.JetStreamDomain,
			CompressOK:   true,
			UniqueTag:    sopts.JetStreamUniqueTag,
		},
		dir:      srv.StoreDir(),
		interval: opts.StoreCheckInterval,
		minFree:  opts.StoreMinFree,
		log:      log.With().Str("component", "jetstream-watchdog").Str("store_dir", srv.StoreDir()).Logger(),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if w.interval <= 0 {
		w.interval = DefaultStoreCheckInterval
	}
	w.backoff = w.interval
	go w.run()
	return w
}

// close stops the watchdog and waits for it, a restart in progress
// included.
func (w *storeWatch) close() {
	close(w.stop)
	<-w.done
}

func (w *storeWatch) run() {
	defer close(w.done)
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
		w.check()
	}
}

// storeErr returns what the last check found.
func (w *storeWatch) storeErr() error {
	if p := w.err.Load(); p != nil {
		return *p
	}
	return nil
}

func (w *storeWatch) setErr(err error) { w.err.Store(&err) }

// check looks at JetStream once and restarts it when it cannot write and
// space allows.
func (w *storeWatch) check() {
	if !w.srv.Running() {
		return // shutting down: nothing to repair
	}
	problem := w.problem()
	if problem == nil {
		w.stores()
		return
	}
	if w.storeErr() == nil {
		w.log.Error().Err(problem).Msg("jetstream cannot store")
	}
	cannot := fmt.Errorf("embedded jetstream in %s cannot store: %w: %w", w.dir, ErrUnavailable, problem)
	if errors.Is(problem, errJetStreamDown) && w.srv.JetStreamConfig() != nil {
		// The server is still shutting JetStream down (it does so in the
		// background after running out of space); enabling it now would
		// race with that shutdown. Look again next time.
		w.setErr(cannot)
		return
	}
	free, need, err := w.space()
	switch {
	case err != nil:
		// Unknown space is no reason to stay down: restart and see.
		w.log.Warn().Err(err).Msg("store free space unknown")
	case free < need:
		w.setErr(fmt.Errorf("%w; restart waits for %d bytes free, %d free", cannot, need, free))
		if now := time.Now(); now.Sub(w.lastWaitLog) >= storeRestartBackoffMax {
			w.lastWaitLog = now
			w.log.Warn().Int64("free_bytes", free).Int64("need_bytes", need).Msg("jetstream restart waits for free space")
		}
		return
	}
	w.setErr(cannot)
	if time.Now().Before(w.notBefore) {
		return
	}
	w.restart()
}

// stores records that JetStream stores (again).
func (w *storeWatch) stores() {
	if w.storeErr() != nil {
		w.log.Info().Int64("restarts", w.restarts.Load()).Msg("jetstream stores again")
	}
	w.err.Store(nil)
	w.lastWaitLog = time.Time{}
	if w.backoff > w.interval && time.Since(w.lastRestart) >= storeRestartBackoffMax {
		w.backoff = w.interval
	}
}

// problem says why JetStream cannot write, or nil. A standalone server
// shows a stream's write error only in Healthz; a clustered server shuts
// JetStream down itself when a write fails for lack of space, and its
// Healthz reports passing cluster conditions (no meta leader, a stream
// catching up) that a restart must not answer, so only the former is
// looked at there.
func (w *storeWatch) problem() error {
	if !w.srv.JetStreamEnabled() {
		return errJetStreamDown
	}
	if w.srv.JetStreamIsClustered() {
		return nil
	}
	hs := w.srv.Healthz(&server.HealthzOptions{Details: true})
	var werrs []string
	for _, he := range hs.Errors {
		// Only write errors: a stream whose directory exists but that is
		// not loaded yet ("could not be recovered") shows up while it is
		// being created.
		if he.Type == server.HealthzErrorStream && strings.Contains(he.Error, healthzWriteError) {
			werrs = append(werrs, he.Error)
		}
	}
	if len(werrs) == 0 {
		return nil
	}
	return errors.New(strings.Join(werrs, "; "))
}

// space returns the free space of the store's file system and how much a
// restart waits for.
func (w *storeWatch) space() (free, need int64, err error) {
	free, size, err := freeSpace(w.dir)
	if err != nil {
		return 0, 0, fmt.Errorf("free space of %s: %w", w.dir, err)
	}
	return free, restartNeeds(w.minFree, size), nil
}

// needNow returns what a restart would wait for now, for the log.
func (w *storeWatch) needNow() int64 {
	_, need, err := w.space()
	if err != nil {
		return w.minFree
	}
	return need
}

// restartNeeds returns the free bytes a restart waits for on a file system
// of size bytes: minFree when set, else the default rule.
func restartNeeds(minFree, size int64) int64 {
	if minFree > 0 {
		return minFree
	}
	return max(DefaultStoreMinFree, min(size/100*StoreMinFreePercent, storeMinFreePercentCap))
}

// restart shuts JetStream down if it is up and enables it again.
func (w *storeWatch) restart() {
	n := w.restarts.Add(1)
	log := w.log.With().Int64("restart", n).Logger()
	begin := time.Now()
	w.lastRestart = begin
	w.notBefore = begin.Add(w.backoff)
	retryIn := w.backoff
	w.backoff = min(2*w.backoff, max(w.interval, storeRestartBackoffMax))

	if w.srv.JetStreamEnabled() {
		log.Warn().Msg("jetstream shutting down for a restart")
		if err := w.srv.ShutdownJetStream(); err != nil {
			log.Error().Err(err).Msg("jetstream shutdown for a restart failed")
		}
	}
	// EnableJetStream, as a configuration reload would call it, minus the
	// INFO flag ("jetstream": true for new clients) that the shutdown
	// cleared and only a reload sets again; nothing here reads it.
	cfg := w.cfg // EnableJetStream changes the configuration it is given
	log.Warn().Int64("max_store", cfg.MaxStore).Int64("max_memory", cfg.MaxMemory).Bool("sync_always", cfg.SyncAlways).
		Msg("jetstream starting again")
	if err := w.srv.EnableJetStream(&cfg); err != nil {
		// A JetStream that failed half-way counts as enabled and would
		// refuse the next EnableJetStream: take it down again.
		_ = w.srv.ShutdownJetStream()
		log.Error().Err(err).Dur("retry_in", retryIn).Msg("jetstream restart failed")
		return
	}
	problem := w.problem()
	if problem != nil {
		w.setErr(fmt.Errorf("embedded jetstream in %s cannot store after a restart: %w: %w", w.dir, ErrUnavailable, problem))
		log.Error().Err(problem).Dur("took", time.Since(begin)).Dur("retry_in", retryIn).Msg("jetstream still cannot store after a restart")
		return
	}
	log.Warn().Dur("took", time.Since(begin)).Msg("jetstream restarted")
	w.stores()
}

// StoreErr reports whether JetStream could store at the watchdog's last
// check, at most StoreCheckInterval ago: nil when it could (and before the
// first check). Otherwise the error wraps ErrUnavailable and says why: a
// stream's write error (a full disk), or JetStream shut down; and, while
// the watchdog waits for space before restarting JetStream, how much it
// waits for. It clears once a restart succeeded. Safe for concurrent use.
func (e *Embedded) StoreErr() error {
	if e.watch == nil {
		return nil
	}
	return e.watch.storeErr()
}
