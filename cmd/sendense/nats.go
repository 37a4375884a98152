package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/pflag"

	"github.com/sendense/sendense/bus"
)

// natsFlags are the global NATS options. With no --nats-url, `serve` (and
// `catalog`) start an embedded server; client commands connect to
// nats://127.0.0.1:4222, where `serve` listens by default.
type natsFlags struct {
	urls     []string
	creds    string
	user     string
	password string
	nkey     string
	tlsCA    string
	tlsCert  string
	tlsKey   string
	listen   string
}

const defaultClientURL = "nats://127.0.0.1:4222"

func (f *natsFlags) register(fs *pflag.FlagSet) {
	fs.StringSliceVar(&f.urls, "nats-url", nil, "NATS server URL(s), comma-separated for a cluster (default: embedded server for serve/catalog, "+defaultClientURL+" for clients)")
	fs.StringVar(&f.creds, "nats-creds", "", "NATS credentials file")
	fs.StringVar(&f.user, "nats-user", "", "NATS user")
	fs.StringVar(&f.password, "nats-password", "", "NATS password")
	fs.StringVar(&f.nkey, "nats-nkey", "", "NATS NKey seed file")
	fs.StringVar(&f.tlsCA, "nats-tls-ca", "", "CA certificate for the NATS server")
	fs.StringVar(&f.tlsCert, "nats-tls-cert", "", "client certificate for NATS")
	fs.StringVar(&f.tlsKey, "nats-tls-key", "", "client key for NATS")
	fs.StringVar(&f.listen, "nats-listen", "127.0.0.1:4222", "embedded server listen address, or none for in-process only")
}

func (f *natsFlags) options(name string, urls []string) bus.Options {
	return bus.Options{
		URLs: urls, Creds: f.creds, User: f.user, Password: f.password, NKeyFile: f.nkey,
		TLSCA: f.tlsCA, TLSCert: f.tlsCert, TLSKey: f.tlsKey, Name: name,
	}
}

// clientConnectTimeout bounds connect when ctx has no deadline: a user
// command should fail, not wait forever, when no server is reachable.
const clientConnectTimeout = 10 * time.Second

// connect opens a client connection for user commands.
func (a *app) connect(ctx context.Context, name string) (*nats.Conn, error) {
	urls := a.nats.urls
	if len(urls) == 0 {
		urls = []string{defaultClientURL}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, clientConnectTimeout)
		defer cancel()
	}
	nc, err := bus.Connect(ctx, a.nats.options(name, urls), a.log)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %v (is `sendense serve` running?): %w", urls, err)
	}
	return nc, nil
}

// natsRuntime is what a long-running role gets: a connection and, when no
// --nats-url was given, the embedded server behind it.
type natsRuntime struct {
	nc       *nats.Conn
	embedded *bus.Embedded
}

func (r *natsRuntime) Close() {
	if r.nc != nil {
		r.nc.Drain()
		r.nc.Close()
	}
	if r.embedded != nil {
		r.embedded.Shutdown()
	}
}

// startNATS connects to --nats-url, or starts the embedded server under
// DATA/nats and connects to it in process.
func (a *app) startNATS(ctx context.Context, name string) (*natsRuntime, error) {
	if len(a.nats.urls) > 0 {
		nc, err := bus.Connect(ctx, a.nats.options(name, a.nats.urls), a.log)
		if err != nil {
			return nil, fmt.Errorf("connect to nats %v: %w", a.nats.urls, err)
		}
		return &natsRuntime{nc: nc}, nil
	}
	emb, err := bus.StartEmbedded(ctx, bus.EmbeddedOptions{
		DataDir: filepath.Join(a.dataDir, "nats"),
		Listen:  a.nats.listen,
		Log:     a.log,
	})
	if err != nil {
		return nil, fmt.Errorf("start embedded nats in %s: %w", a.dataDir, err)
	}
	nc, err := emb.Connect(a.log)
	if err != nil {
		emb.Shutdown()
		return nil, fmt.Errorf("connect to embedded nats: %w", err)
	}
	return &natsRuntime{nc: nc, embedded: emb}, nil
}
