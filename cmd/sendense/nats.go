package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/spf13/pflag"

	"github.com/sendense/sendense/bus"
)

// natsFlags are the global NATS options. With no --nats-url, `serve` (and
// `catalog`) start an embedded server; client commands connect to
// nats://127.0.0.1:4222, where `serve` listens by default. NATS_URL,
// NATS_CREDS, NATS_NKEY, NATS_CA and NATS_CONTEXT give the defaults of
// --nats-url, --nats-creds, --nats-nkey, --nats-ca and --context, as for
// the nats CLI. Client commands also read a nats CLI context (see
// clientOptions for the order).
type natsFlags struct {
	context   string
	urls      []string
	creds     string
	user      string
	password  string
	nkey      string
	tlsCA     string
	tlsCert   string
	tlsKey    string
	listen    string
	advertise []string
	tls       bool
	insecure  bool
}

const defaultClientURL = "nats://127.0.0.1:4222"

func (f *natsFlags) register(fs *pflag.FlagSet) {
	var urls []string
	if u := os.Getenv("NATS_URL"); u != "" {
		urls = strings.Split(u, ",")
	}
	fs.StringSliceVar(&f.urls, "nats-url", urls, "NATS server URL(s), comma-separated for a cluster (default $NATS_URL, else for clients the nats context's URL, else the embedded server for serve/catalog and "+defaultClientURL+" for clients)")
	fs.StringVar(&f.context, "context", os.Getenv("NATS_CONTEXT"), "nats CLI context `NAME` whose URL, credentials and CA client commands use where no flag or NATS_* variable gives them (default $NATS_CONTEXT, else the one 'nats context select' chose)")
	fs.StringVar(&f.creds, "nats-creds", os.Getenv("NATS_CREDS"), "NATS credentials file, for client commands (default $NATS_CREDS, else the command's role seed under DATA/creds)")
	fs.StringVar(&f.user, "nats-user", "", "NATS user, for client commands")
	fs.StringVar(&f.password, "nats-password", "", "NATS password")
	fs.StringVar(&f.nkey, "nats-nkey", os.Getenv("NATS_NKEY"), "NATS nkey seed file, for client commands (default $NATS_NKEY, else the command's role seed under DATA/creds)")
	fs.StringVar(&f.tlsCA, "nats-ca", os.Getenv("NATS_CA"), "CA certificate that signs the NATS servers' certificates (the hub's DATA/tls/ca.pem); connect with TLS only (default $NATS_CA, else DATA/tls/ca.pem when the server asks for TLS)")
	fs.StringVar(&f.tlsCA, "nats-tls-ca", os.Getenv("NATS_CA"), "same as --nats-ca")
	_ = fs.MarkHidden("nats-tls-ca")
	fs.StringVar(&f.tlsCert, "nats-tls-cert", "", "client certificate for NATS (a server that asks for one)")
	fs.StringVar(&f.tlsKey, "nats-tls-key", "", "client key for NATS")
	fs.StringVar(&f.listen, "nats-listen", "127.0.0.1:4222", "embedded server listen address, or none for in-process only; off loopback it requires TLS (certificates in DATA/tls)")
	fs.StringSliceVar(&f.advertise, "nats-advertise", nil, "host names or addresses other hosts reach the embedded server by, comma-separated: they go into its TLS certificate, the first is advertised to clients")
	fs.BoolVar(&f.tls, "nats-tls", false, "the embedded server requires TLS also on loopback")
	fs.BoolVar(&f.insecure, "insecure", false, "let the embedded server listen on a non-loopback address without TLS (clear text on the network)")
}

// explicitAuth reports whether the user named credentials on the command
// line or in the environment; they then win over DATA/creds.
func (f *natsFlags) explicitAuth() bool { return f.creds != "" || f.nkey != "" || f.user != "" }

// natsOptions are the global NATS flags as client options, with the TLS
// CA: --nats-ca (TLS required), else DATA/tls/ca.pem when it exists. With
// the latter, TLS is required too unless every URL is on loopback (the
// hub's host, where the embedded server is in clear text unless it
// listens off loopback): a server elsewhere that does not offer TLS is
// refused rather than trusted in clear text.
func (a *app) natsOptions(name string, urls []string) bus.Options {
	f := &a.nats
	opts := bus.Options{
		URLs: urls, Creds: f.creds, User: f.user, Password: f.password, NKeyFile: f.nkey,
		TLSCA: f.tlsCA, TLSCert: f.tlsCert, TLSKey: f.tlsKey, Name: name,
	}
	if opts.TLSCA == "" {
		if ca := a.tlsDir().CAFile(); fileExists(ca) {
			opts.TLSCA, opts.TLSIfOffered = ca, loopbackURLs(urls)
		}
	}
	return opts
}

// creds is the credentials directory of the data directory.
func (a *app) creds() bus.Creds { return bus.Creds{Dir: filepath.Join(a.dataDir, "creds")} }

// tlsDir is the data directory's TLS directory: the CA and the embedded
// server's certificate.
func (a *app) tlsDir() bus.TLSDir { return bus.TLSDir{Dir: filepath.Join(a.dataDir, "tls")} }

// serverCA is the CA clients of emb need: DATA/tls/ca.pem when it
// requires TLS, else "".
func (a *app) serverCA(emb *bus.Embedded) string {
	if emb == nil || !emb.TLS() {
		return ""
	}
	return a.tlsDir().CAFile()
}

// loopbackURLs reports whether every URL names a loopback host (none:
// the default, 127.0.0.1).
func loopbackURLs(urls []string) bool {
	for _, list := range urls {
		for _, u := range strings.Split(list, ",") {
			u = strings.TrimSpace(u)
			if !strings.Contains(u, "://") {
				u = "nats://" + u // as nats.go reads it
			}
			p, err := url.Parse(u)
			if err != nil || p.Host == "" {
				return false
			}
			h := p.Hostname()
			if ip := net.ParseIP(h); h != "localhost" && (ip == nil || !ip.IsLoopback()) {
				return false
			}
		}
	}
	return true
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// clientOptions are the options of a client command acting as role.
// Each setting comes from the first of: its flag, its environment variable
// (NATS_URL, NATS_CREDS, NATS_NKEY, NATS_CA), the nats CLI context
// (--context, else $NATS_CONTEXT, else the one `nats context select`
// chose), the default. The defaults: URL nats://127.0.0.1:4222;
// credentials the role's seed under DATA/creds when it is there (a
// command on the hub's host); CA DATA/tls/ca.pem when it is there.
// Replies come to the role's inbox (or the context's inbox_prefix with
// the context's credentials): a server that enforces roles lets each user
// subscribe only there. source says where the URL came from.
func (a *app) clientOptions(role bus.Role) (opts bus.Options, source string, err error) {
	nctx, err := loadNATSContext(a.nats.context)
	if err != nil {
		return bus.Options{}, "", err
	}
	urls, source := a.nats.urls, "--nats-url or $NATS_URL"
	switch {
	case len(urls) > 0:
	case nctx != nil && nctx.URL != "":
		urls, source = strings.Split(nctx.URL, ","), fmt.Sprintf("nats context %q", nctx.Name)
	default:
		urls, source = []string{defaultClientURL}, "the default"
	}
	id := bus.Identity{Role: role}
	opts = a.natsOptions("sendense-"+string(role), urls)
	opts.InboxPrefix = id.InboxPrefix()
	if nctx != nil {
		if a.nats.tlsCA == "" && nctx.CA != "" {
			opts.TLSCA, opts.TLSIfOffered = nctx.CA, false
		}
		if a.nats.tlsCert == "" && a.nats.tlsKey == "" {
			opts.TLSCert, opts.TLSKey = nctx.Cert, nctx.Key
		}
	}
	if a.nats.explicitAuth() {
		return opts, source, nil
	}
	if nctx != nil && nctx.hasAuth() {
		opts.Creds, opts.NKeyFile, opts.User, opts.Password = nctx.Creds, nctx.NKey, nctx.User, nctx.Password
		if nctx.InboxPrefix != "" {
			opts.InboxPrefix = nctx.InboxPrefix
		}
		return opts, source, nil
	}
	if _, err := os.Stat(a.creds().File(id)); err == nil {
		opts.NKeyFile = a.creds().File(id)
	}
	return opts, source, nil
}

// clientConnectTimeout bounds connect when ctx has no deadline. Client
// connections fail fast anyway (a refused dial returns at once); this
// bounds a server that accepts but never answers.
const clientConnectTimeout = 10 * time.Second

// connect opens a client connection acting as role (see clientOptions).
// It tries each server once: a command a person waits on fails at once,
// naming the URL and the dial's error, rather than retrying. The
// connection's lifecycle lines (connected, closed) are not logged at the
// default level, only problems.
func (a *app) connect(ctx context.Context, role bus.Role) (*nats.Conn, error) {
	return a.dial(ctx, role, true)
}

// connectDaemon is connect for a long-running command that retries
// connect itself (vcenter-sim): the connection's lifecycle is logged.
func (a *app) connectDaemon(ctx context.Context, role bus.Role) (*nats.Conn, error) {
	return a.dial(ctx, role, false)
}

func (a *app) dial(ctx context.Context, role bus.Role, quiet bool) (*nats.Conn, error) {
	opts, source, err := a.clientOptions(role)
	if err != nil {
		return nil, err
	}
	opts.FailFast = true
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, clientConnectTimeout)
		defer cancel()
	}
	log := a.log
	if quiet && log.GetLevel() == zerolog.InfoLevel {
		log = log.Level(zerolog.WarnLevel)
	}
	nc, err := bus.Connect(ctx, opts, log)
	if err != nil {
		hint := "is `sendense serve` running?"
		if !errors.Is(err, syscall.ECONNREFUSED) && opts.NKeyFile == "" && opts.Creds == "" && opts.User == "" {
			hint = fmt.Sprintf("no credentials: run on the hub's host with --data, or give --nats-creds/--nats-nkey (the %s role's seed) or --context", role)
		}
		return nil, fmt.Errorf("%w (url from %s, as %s; %s)", err, source, role, hint)
	}
	return nc, nil
}

// natsRuntime is what a long-running command gets: a connection and, when
// no --nats-url was given, the embedded server behind it.
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

// startNATS connects as id to --nats-url with id's seed from DATA/creds, or
// starts the embedded server under DATA/nats (admitting DATA/creds'
// identities) and connects to it in process.
func (a *app) startNATS(ctx context.Context, id bus.Identity) (*natsRuntime, error) {
	opts := a.creds().Options(id)
	if len(a.nats.urls) > 0 {
		g := a.natsOptions("", a.nats.urls)
		opts.URLs, opts.TLSCA, opts.TLSIfOffered, opts.TLSCert, opts.TLSKey = g.URLs, g.TLSCA, g.TLSIfOffered, g.TLSCert, g.TLSKey
		nc, err := bus.Connect(ctx, opts, a.log)
		if err != nil {
			return nil, fmt.Errorf("connect to nats %v as %s: %w", a.nats.urls, id, err)
		}
		return &natsRuntime{nc: nc}, nil
	}
	users, err := a.creds().Users()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no credentials in %s: has `sendense serve` ever run on --data %s?", a.creds().Dir, a.dataDir)
	}
	if err != nil {
		return nil, err
	}
	emb, err := bus.StartEmbedded(ctx, bus.EmbeddedOptions{
		DataDir: filepath.Join(a.dataDir, "nats"), Listen: a.nats.listen, Users: users, Insecure: a.nats.insecure,
		TLSDir: a.tlsDir().Dir, TLS: a.nats.tls, Advertise: a.nats.advertise, Log: a.log,
	})
	if err != nil {
		return nil, fmt.Errorf("start embedded nats in %s: %w", a.dataDir, err)
	}
	nc, err := emb.Connect(a.log, opts)
	if err != nil {
		emb.Shutdown()
		return nil, fmt.Errorf("connect to embedded nats as %s: %w", id, err)
	}
	return &natsRuntime{nc: nc, embedded: emb}, nil
}
