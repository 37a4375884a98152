package bus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Options says how to reach an external NATS server or cluster. The zero
// value connects to nats://127.0.0.1:4222 without authentication.
type Options struct {
	// URLs of the servers; several for a cluster (the client learns the
	// others from the servers too). Each entry may itself be a
	// comma-separated list. Default: nats://127.0.0.1:4222.
	URLs []string
	// Creds is a credentials file (JWT + nkey seed). At most one of Creds,
	// NKeyFile and User may be set.
	Creds string
	// User and Password authenticate with a user name and password.
	User     string
	Password string
	// NKeyFile is a file holding an nkey seed ("SU…").
	NKeyFile string
	// TLSCA is a PEM file of the CAs that sign the servers' certificates
	// (DATA/tls/ca.pem, given to other hosts as --nats-ca). With it the
	// connection uses TLS, verifies the server against these CAs only, and
	// refuses a server that does not offer TLS. A tls:// URL asks for TLS
	// too (verified against TLSCA, else the system's CAs).
	TLSCA string
	// TLSIfOffered relaxes TLSCA: TLS, verified against TLSCA, only when
	// the server requires it; a server in clear text is accepted. For a
	// CA found on the hub's host, whose embedded server is in clear text
	// on loopback unless it listens off it.
	TLSIfOffered bool
	// TLSCert and TLSKey are the client certificate and key for mutual TLS;
	// both or neither.
	TLSCert string
	TLSKey  string
	// Name is the connection name the server shows (nats server report
	// connections). Default: "sendense".
	Name string
	// InboxPrefix is where replies to this connection's requests arrive
	// (Identity.InboxPrefix). Default: nats.go's "_INBOX". A server that
	// enforces roles lets each user subscribe only to its own prefix.
	InboxPrefix string
	// FailFast makes Connect try each server once and return the first
	// failure (for example the dial's "connection refused") at once,
	// instead of retrying until ctx ends. For commands a person waits on;
	// daemons leave it false and wait for the server. Default false.
	FailFast bool
}

// Connection tuning. The client reconnects forever; see reconnectDelay.
const (
	// PingInterval and MaxPingsOut bound how long a dead TCP connection
	// goes unnoticed: about 3 × 10 s.
	PingInterval = 10 * time.Second
	MaxPingsOut  = 3
	// reconnectBase and reconnectMax bound the exponential reconnect delay.
	reconnectBase = 250 * time.Millisecond
	reconnectMax  = 10 * time.Second
	// dialTimeout bounds one TCP dial, as nats.go's default Timeout does.
	dialTimeout = 2 * time.Second
)

// reconnectDelay is the wait after the attempts-th pass over the server list
// failed: 250 ms doubling up to 10 s, plus up to 25 % random jitter so many
// clients do not reconnect in lockstep.
func reconnectDelay(attempts int) time.Duration {
	d := reconnectBase
	for i := 1; i < attempts && d < reconnectMax; i++ {
		d *= 2
	}
	d = min(d, reconnectMax)
	return d + rand.N(d/4+1)
}

// connOptions are the options every connection of this package gets:
// reconnect forever with backoff, and one structured log line per connect,
// disconnect, reconnect, async error and close. onConnect, if not nil, runs
// after the first connect. fixedURL, if not "", is logged instead of the
// connected URL (in-process connections have none).
func connOptions(name, inboxPrefix string, log zerolog.Logger, onConnect func(), fixedURL string) []nats.Option {
	if name == "" {
		name = "sendense"
	}
	var inbox []nats.Option
	if inboxPrefix != "" {
		inbox = append(inbox, nats.CustomInboxPrefix(inboxPrefix))
	}
	// A disconnected connection no longer reports its URL; keep the last
	// one for the log.
	var lastURL atomic.Value
	lastURL.Store(fixedURL)
	url := func(nc *nats.Conn) string {
		if u := nc.ConnectedUrlRedacted(); u != "" && fixedURL == "" {
			lastURL.Store(u)
		}
		return lastURL.Load().(string)
	}
	return append(inbox,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.PingInterval(PingInterval),
		nats.MaxPingsOutstanding(MaxPingsOut),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", url(nc)).Str("server", nc.ConnectedServerName()).Msg("nats connected")
			if onConnect != nil {
				onConnect()
			}
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			ev := log.Warn()
			if err == nil {
				ev = log.Info() // closed on purpose
			}
			ev.Err(err).Str("url", url(nc)).Msg("nats disconnected")
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", url(nc)).Str("server", nc.ConnectedServerName()).
				Uint64("reconnects", nc.Stats().Reconnects).Msg("nats reconnected")
		}),
		nats.ReconnectErrHandler(func(nc *nats.Conn, err error) {
			log.Debug().Err(err).Msg("nats reconnect attempt failed")
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			ev := log.Info().Str("url", url(nc))
			if err := nc.LastError(); err != nil {
				ev = ev.AnErr("last_error", err)
			}
			ev.Msg("nats connection closed")
		}),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Warn().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("nats async error")
		}),
		nats.LameDuckModeHandler(func(nc *nats.Conn) {
			log.Info().Str("url", url(nc)).Msg("nats server entering lame duck mode")
		}),
	)
}

// Connect connects to the servers of opts and returns once connected. If no
// server is reachable yet it keeps trying with backoff (each failed attempt
// at debug level, a warning every 10 s) until one is or ctx ends; cancel
// ctx to give up.
// After that the connection reconnects forever on its own, with backoff
// and jitter, and logs each disconnect, reconnect and close with the fields
// url, server, reconnects and error. Close it with (*nats.Conn).Close or
// Drain.
func Connect(ctx context.Context, opts Options, log zerolog.Logger) (*nats.Conn, error) {
	urls := strings.Join(opts.URLs, ",")
	if urls == "" {
		urls = nats.DefaultURL
	}
	log = log.With().Str("component", "nats").Logger()
	nopts, err := authOptions(opts)
	if err != nil {
		return nil, err
	}
	connected := make(chan struct{})
	dial := &recordingDialer{Dialer: net.Dialer{Timeout: dialTimeout}}
	nopts = append(nopts, connOptions(opts.Name, opts.InboxPrefix, log, func() { close(connected) }, "")...)
	nopts = append(nopts, nats.RetryOnFailedConnect(!opts.FailFast), nats.SetCustomDialer(dial))
	nc, err := nats.Connect(urls, nopts...)
	if err != nil {
		// nats.go reports a refused connection as "no servers available";
		// the dial's own error says why.
		if last := dial.lastErr(); last != nil && errors.Is(err, nats.ErrNoServers) {
			err = fmt.Errorf("%w: %w", err, last)
		}
		return nil, fmt.Errorf("connect to nats %s: %w", redactURLs(urls), err)
	}
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-connected:
			return nc, nil
		case <-tick.C:
			log.Warn().Str("url", redactURLs(urls)).AnErr("last_error", lastConnectErr(nc, dial)).Msg("nats not reachable yet")
		case <-ctx.Done():
			last := lastConnectErr(nc, dial)
			nc.Close()
			if last == nil {
				return nil, fmt.Errorf("connect to nats %s: %w", redactURLs(urls), context.Cause(ctx))
			}
			return nil, fmt.Errorf("connect to nats %s: %w (last error: %w)", redactURLs(urls), context.Cause(ctx), last)
		}
	}
}

// lastConnectErr is the connection's last error, else the last dial's:
// nats.go does not keep a refused dial as the connection's error.
func lastConnectErr(nc *nats.Conn, d *recordingDialer) error {
	if err := nc.LastError(); err != nil {
		return err
	}
	return d.lastErr()
}

// recordingDialer dials as nats.go does by default and keeps the last
// failure, so a connect that gives up can say why.
type recordingDialer struct {
	net.Dialer
	mu   sync.Mutex
	last error
}

func (d *recordingDialer) Dial(network, address string) (net.Conn, error) {
	c, err := d.Dialer.Dial(network, address)
	d.mu.Lock()
	if err != nil {
		d.last = err
	}
	d.mu.Unlock()
	return c, err
}

func (d *recordingDialer) lastErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}

func authOptions(opts Options) ([]nats.Option, error) {
	var out []nats.Option
	n := 0
	if opts.Creds != "" {
		n++
		out = append(out, nats.UserCredentials(opts.Creds))
	}
	if opts.NKeyFile != "" {
		n++
		o, err := nats.NkeyOptionFromSeed(opts.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("load nkey seed %s: %w", opts.NKeyFile, err)
		}
		out = append(out, o)
	}
	if opts.User != "" {
		n++
		out = append(out, nats.UserInfo(opts.User, opts.Password))
	}
	if n > 1 {
		return nil, errors.New("nats options: set at most one of creds, nkey file and user")
	}
	if (opts.TLSCert == "") != (opts.TLSKey == "") {
		return nil, errors.New("nats options: tls cert and tls key go together")
	}
	if opts.TLSCA == "" && opts.TLSCert == "" {
		return out, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if opts.TLSCA != "" {
		pool, err := loadPool(opts.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("nats options: %w", err)
		}
		tc.RootCAs = pool
	}
	if opts.TLSCert != "" {
		pair, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("nats options: load client certificate %s: %w", opts.TLSCert, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	// nats.RootCAs would always insist on TLS; set the configuration
	// directly so TLSIfOffered can leave that to the server.
	secure := !opts.TLSIfOffered || opts.TLSCert != ""
	out = append(out, func(o *nats.Options) error {
		o.TLSConfig = tc
		o.Secure = o.Secure || secure
		return nil
	})
	return out, nil
}

// redactURLs hides passwords in URLs for error messages.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if at := strings.LastIndex(p, "@"); at >= 0 {
			if scheme := strings.Index(p, "://"); scheme >= 0 && scheme < at {
				parts[i] = p[:scheme+3] + "[redacted]" + p[at:]
			}
		}
	}
	return strings.Join(parts, ",")
}
