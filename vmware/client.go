package vmware

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/session/keepalive"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Default timeouts, applied only when the caller's context has no deadline.
const (
	// DefaultCallTimeout bounds a single vCenter call (property retrieval,
	// QueryChangedDiskAreas, login).
	DefaultCallTimeout = 2 * time.Minute
	// DefaultTaskTimeout bounds waiting for a vCenter task (snapshot create
	// or remove; a quiesced snapshot of a busy VM can take minutes).
	DefaultTaskTimeout = 30 * time.Minute
	// keepAliveIdle is how long the session may stay idle before a keep-alive
	// call is sent; vCenter expires idle sessions after 30 minutes by default.
	keepAliveIdle = 5 * time.Minute
)

// Client is a logged-in vCenter session. It is safe for concurrent use by
// several goroutines (govmomi's SOAP client is). Close it when done.
type Client struct {
	gc   *govmomi.Client
	host string
	tls  TLS
	log  zerolog.Logger
}

// Connect logs in to the vCenter SDK at u (for example
// https://user:pass@vcenter/sdk; the path defaults to /sdk). The user info of u
// carries the credentials. insecure skips TLS certificate verification. A
// keep-alive keeps the session from expiring while a long copy runs.
//
// Errors wrap ErrLoginRejected for refused credentials and ErrUnavailable for
// everything that looks like a network or TLS problem.
func Connect(ctx context.Context, u *url.URL, insecure bool, log zerolog.Logger) (*Client, error) {
	return ConnectTLS(ctx, u, TLS{Insecure: insecure}, log)
}

// TLS says how a Client (and an HTTPSSources reading through it) verifies
// vCenter's certificate. The zero value trusts the system's CAs.
type TLS struct {
	// CAFile is a PEM file of the CAs (or the self-signed certificate,
	// for example the simulated vCenter's) to trust instead of the
	// system's.
	CAFile string
	// Insecure skips verification: anyone on the path can read the
	// session and the disks. Only for tests and the simulated vCenter.
	Insecure bool
}

// ConnectTLS is Connect with a CA file: see TLS.
func ConnectTLS(ctx context.Context, u *url.URL, t TLS, log zerolog.Logger) (*Client, error) {
	insecure := t.Insecure
	if u == nil {
		return nil, fmt.Errorf("connect to vcenter: %w: no url", ErrInvalidOptions)
	}
	su := *u
	if su.Path == "" || su.Path == "/" {
		su.Path = vim25.Path
	}
	if su.User == nil {
		return nil, fmt.Errorf("connect to vcenter %s: %w: no user in url", su.Host, ErrInvalidOptions)
	}
	ctx, cancel := withDefaultTimeout(ctx, DefaultCallTimeout)
	defer cancel()

	sc := soap.NewClient(&su, insecure)
	if t.CAFile != "" && !insecure {
		if err := sc.SetRootCAs(t.CAFile); err != nil {
			return nil, fmt.Errorf("connect to vcenter %s: %w: ca file %s: %w", su.Host, ErrInvalidOptions, t.CAFile, err)
		}
	}
	vc, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("connect to vcenter %s: %w", su.Host, classify(err))
	}
	// The keep-alive starts at Login and stops at Logout.
	vc.RoundTripper = keepalive.NewHandlerSOAP(vc.RoundTripper, keepAliveIdle, nil)
	gc := &govmomi.Client{Client: vc, SessionManager: session.NewManager(vc)}
	if err := gc.Login(ctx, su.User); err != nil {
		vc.CloseIdleConnections()
		return nil, fmt.Errorf("log in to vcenter %s as %s: %w", su.Host, su.User.Username(), classify(err))
	}
	c := &Client{gc: gc, host: su.Host, tls: t, log: log.With().Str("vcenter", su.Host).Logger()}
	c.log.Debug().Bool("is_vc", vc.IsVC()).Msg("vcenter session opened")
	return c, nil
}

// Vim25 returns the underlying govmomi client for calls this package does not
// wrap.
func (c *Client) Vim25() *vim25.Client { return c.gc.Client }

// Host is the vCenter host (and port) this client talks to.
func (c *Client) Host() string { return c.host }

// Logout ends the session and stops the keep-alive.
func (c *Client) Logout(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx, DefaultCallTimeout)
	defer cancel()
	if err := c.gc.Logout(ctx); err != nil {
		return fmt.Errorf("log out of vcenter %s: %w", c.host, classify(err))
	}
	return nil
}

// Close logs out with a short timeout. It is what deferred cleanup calls.
func (c *Client) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Logout(ctx)
}

// withDefaultTimeout adds d to ctx only when ctx has no deadline yet.
func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

// vimFault returns the vSphere fault carried by err (a SOAP fault, a task
// error or a bare fault), or nil when err is not a vSphere fault.
func vimFault(err error) types.BaseMethodFault {
	if err == nil {
		return nil
	}
	// soap.Fault errors, vim fault errors and task.Error all have Fault();
	// errors.As also finds them when wrapped.
	var hf interface{ Fault() types.BaseMethodFault }
	if errors.As(err, &hf) {
		if f := asFaultPointer(hf.Fault()); f != nil {
			return f
		}
	}
	var first types.BaseMethodFault
	func() {
		defer func() { _ = recover() }() // fault.In panics on types it cannot walk
		fault.In(err, func(f types.BaseMethodFault, _ string, _ []types.LocalizableMessage) bool {
			first = f
			return true
		})
	}()
	return asFaultPointer(first)
}

// asFaultPointer returns f as a pointer fault type: SOAP decoding yields
// fault values (types.InvalidLogin), code constructs pointers; callers
// switch on pointer types only.
func asFaultPointer(f any) types.BaseMethodFault {
	if f == nil {
		return nil
	}
	v := reflect.ValueOf(f)
	if v.Kind() != reflect.Pointer {
		p := reflect.New(v.Type())
		p.Elem().Set(v)
		f = p.Interface()
	}
	bf, _ := f.(types.BaseMethodFault)
	return bf
}

// classify wraps err with ErrLoginRejected or ErrUnavailable where that is
// what it is. Other vSphere faults are returned as they are (permanent unless
// the caller knows better); context errors are returned unchanged.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	if f := vimFault(err); f != nil {
		switch f.(type) {
		case *types.InvalidLogin:
			return fmt.Errorf("%w: %w", ErrLoginRejected, err)
		case *types.NotAuthenticated, // the session expired: a new connection fixes it
			*types.HostCommunication, *types.HostNotConnected, *types.HostNotReachable:
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return err
	}
	if soap.IsSoapFault(err) {
		return err
	}
	// Not a vSphere fault: transport, TLS, DNS, timeout, HTTP status.
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// isNotFound reports whether err is a ManagedObjectNotFound fault.
func isNotFound(err error) bool {
	_, ok := vimFault(err).(*types.ManagedObjectNotFound)
	return ok
}
