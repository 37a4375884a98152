package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/store"
)

func init() { extraCommands = append(extraCommands, newServeCmd) }

// serveCmd runs every role in one process: the embedded NATS server (no
// --nats-url) and the roles of serveRoles.
type serveCmd struct {
	proc    processFlags
	catalog catalogFlags
}

func newServeCmd(a *app) *cobra.Command {
	c := &serveCmd{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run everything in one process: embedded NATS (unless --nats-url), the catalog, ...",
		Long: `Run everything in one process until SIGINT or SIGTERM.

Without --nats-url it starts an embedded NATS server with JetStream under
DATA/nats, listening on --nats-listen, so nats pub/sub and the sendense client
commands work against it. It creates the streams, then starts its roles in
order (the catalog: consumer of BACKUP_EVENTS into DATA/catalog.db and the
sendense.catalog.* service) and stops them in reverse order.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.run(cmd.Context(), a)
		},
	}
	c.proc.register(cmd.Flags())
	c.catalog.register(cmd.Flags())
	return cmd
}

// serveRoles are the roles of `serve`, in start order; they stop in
// reverse order. Add a role here (hub, repository, agent) after the ones
// it depends on: the catalog starts first, so agents can ask it for chain
// heads as soon as they run.
func (c *serveCmd) serveRoles() []role {
	return []role{
		catalogRole(c.catalog),
	}
}

func (c *serveCmd) run(ctx context.Context, a *app) error {
	return a.runProcess(ctx, "sendense-serve", c.proc, c.serveRoles())
}

// processFlags are the flags of a long-running process (serve, catalog).
type processFlags struct {
	metricsListen  string
	streamReplicas int
}

func (f *processFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "serve Prometheus metrics on this host:port at /metrics (default: off)")
	fs.IntVar(&f.streamReplicas, "stream-replicas", 1, "replicas of the streams created or updated at start (3 or 5 in a cluster)")
}

// roleEnv is what every role gets. runProcess opens it once and closes it
// after every role has stopped.
type roleEnv struct {
	log     zerolog.Logger
	dataDir string
	nc      *nats.Conn
	js      jetstream.JetStream
	metrics *prometheus.Registry
}

// role is one long-running part of a process. run sets the role up, calls
// ready once it serves (the next role starts only then), and runs until
// ctx ends; it returns nil after a clean stop. Returning before ctx ends,
// with or without an error, stops the whole process.
type role struct {
	name string
	run  func(ctx context.Context, env *roleEnv, ready func()) error
}

// roleStopTimeout bounds how long one role may take to stop.
const roleStopTimeout = 30 * time.Second

// runProcess connects to NATS (or starts the embedded server), creates the
// streams, and runs roles (after the metrics endpoint, if enabled) until
// ctx ends or a role fails.
func (a *app) runProcess(ctx context.Context, name string, f processFlags, roles []role) error {
	rt, err := a.startNATS(ctx, name)
	if err != nil {
		return err
	}
	defer rt.Close()
	js, err := jetstream.New(rt.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = bus.EnsureStreams(sctx, js, bus.StreamOptions{Replicas: f.streamReplicas})
	cancel()
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	env := &roleEnv{log: a.log, dataDir: a.dataDir, nc: rt.nc, js: js, metrics: reg}
	if f.metricsListen != "" {
		roles = append([]role{metricsRole(f.metricsListen)}, roles...)
	}
	natsURL := "in-process"
	if rt.embedded != nil && rt.embedded.ClientURL() != "" {
		natsURL = rt.embedded.ClientURL()
	} else if len(a.nats.urls) > 0 {
		natsURL = fmt.Sprint(a.nats.urls)
	}
	a.log.Info().Str("process", name).Str("data", a.dataDir).Str("nats_url", natsURL).
		Bool("embedded_nats", rt.embedded != nil).Msg("starting")
	return runRoles(ctx, env, roles)
}

// runRoles starts roles in order, each once the previous one is ready, and
// runs them until ctx ends or one of them stops; then it stops the
// started roles in reverse order, each within roleStopTimeout. It returns
// the first role's error, or nil after a clean stop.
func runRoles(ctx context.Context, env *roleEnv, roles []role) error {
	type running struct {
		name   string
		cancel context.CancelFunc
		done   chan struct{}
	}
	var g errgroup.Group
	failed := make(chan struct{})
	var failOnce sync.Once
	var started []*running
	stopAll := func() error {
		for i := len(started) - 1; i >= 0; i-- {
			r := started[i]
			r.cancel()
			select {
			case <-r.done:
			case <-time.After(roleStopTimeout):
				return fmt.Errorf("role %s did not stop within %s", r.name, roleStopTimeout)
			}
		}
		return g.Wait()
	}
	for _, rl := range roles {
		log := env.log.With().Str("role", rl.name).Logger()
		rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		r := &running{name: rl.name, cancel: cancel, done: make(chan struct{})}
		ready := make(chan struct{})
		var readyOnce sync.Once
		g.Go(func() error {
			defer close(r.done)
			err := rl.run(rctx, env, func() { readyOnce.Do(func() { close(ready) }) })
			if err == nil && rctx.Err() == nil {
				err = errors.New("stopped on its own")
			}
			if err != nil {
				log.Error().Err(err).Msg("role failed")
				failOnce.Do(func() { close(failed) })
				return fmt.Errorf("role %s: %w", rl.name, err)
			}
			log.Info().Msg("role stopped")
			return nil
		})
		started = append(started, r)
		select {
		case <-ready:
			log.Info().Msg("role started")
		case <-r.done:
			return stopAll()
		case <-ctx.Done():
			return stopAll()
		}
	}
	names := make([]string, len(started))
	for i, r := range started {
		names[i] = r.name
	}
	env.log.Info().Strs("roles", names).Msg("serving")
	select {
	case <-ctx.Done():
		env.log.Info().Msg("stopping")
	case <-failed:
	}
	return stopAll()
}

// metricsRole serves env.metrics at http://addr/metrics.
func metricsRole(addr string) role {
	return role{name: "metrics", run: func(ctx context.Context, env *roleEnv, ready func()) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen for metrics on %s: %w", addr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(env.metrics, promhttp.HandlerOpts{}))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ln) }()
		env.log.Info().Str("url", "http://"+ln.Addr().String()+"/metrics").Msg("metrics listening")
		ready()
		select {
		case <-ctx.Done():
		case err := <-errc:
			return fmt.Errorf("serve metrics on %s: %w", addr, err)
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	}}
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

// catalogPath is the catalog file under the data directory.
func catalogPath(dataDir string) string { return filepath.Join(dataDir, "catalog.db") }

// catalogRole opens DATA/catalog.db, answers sendense.catalog.* and runs
// the consumer of BACKUP_EVENTS. On stop, the consumer finishes its batch,
// then the service stops, then the file is closed.
func catalogRole(f catalogFlags) role {
	return role{name: "catalog", run: func(ctx context.Context, env *roleEnv, ready func()) error {
		path := catalogPath(env.dataDir)
		cat, err := store.Open(path, &store.Options{Logger: env.log})
		if errors.Is(err, store.ErrLocked) {
			return fmt.Errorf("%w (is another sendense serve or catalog running on --data %s?)", err, env.dataDir)
		}
		if err != nil {
			return err
		}
		defer func() {
			if err := cat.Close(); err != nil {
				env.log.Error().Err(err).Msg("close catalog")
			}
		}()
		svc, err := catalog.Serve(env.nc, cat, env.log)
		if err != nil {
			return err
		}
		defer func() { _ = svc.Stop() }()
		ready()
		return catalog.Run(ctx, env.js, cat, catalog.Options{
			AckWait:  f.ackWait,
			MaxBatch: f.maxBatch,
			Registry: env.metrics,
			Log:      env.log,
		})
	}}
}
