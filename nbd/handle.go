package nbd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// DefaultConnectTimeout bounds Open when the context has no deadline.
const DefaultConnectTimeout = 10 * time.Second

// pollSlice bounds one poll(2) so that a context ending is noticed quickly
// even when the server sends nothing.
const pollSlice = 20 * time.Millisecond

// Options configure Open. The zero value is valid.
type Options struct {
	// MetaContexts are requested before connecting, for BlockStatus
	// (MetaBaseAllocation, DirtyBitmapContext(name)). Default: none.
	MetaContexts []string

	// ConnectTimeout bounds the connection and handshake when ctx has no
	// deadline. Default DefaultConnectTimeout (10 s). A deadline on ctx
	// takes precedence.
	ConnectTimeout time.Duration

	// TLS connects with TLS and a pre-shared key; the URI must then be
	// nbds:// or nbds+unix:// (ErrTLSURI otherwise). Default nil: as the
	// URI says (nbds:// without TLS set uses libnbd's x509 defaults).
	TLS *TLS
}

// TLS names a TLS pre-shared key. libnbd reads the key from a file in
// GnuTLS's psk format ("username:hexkey", one a line) during the
// handshake: the file must exist until Open returns and may be removed
// after. Keep it private (0600): whoever reads it can connect.
type TLS struct {
	// PSKFile is the path of the key file. Required.
	PSKFile string
	// Username is the PSK identity looked up in PSKFile. Required.
	Username string
}

// Caps are the export's size and the capabilities the server advertised in
// the handshake.
type Caps struct {
	Size                                       int64
	ReadOnly, Flush, FUA, Trim, Zero, FastZero bool
	MultiConn, Cache, DF                       bool
	BlockMinimum, BlockPreferred, BlockMaximum int64 // 0 when not advertised
}

// Handle is one NBD client connection. It is not safe for concurrent use
// (see the package documentation).
type Handle struct {
	h     cHandle
	e     errBuf // C error buffer for calls that retain a pointer
	uri   string
	caps  Caps
	metas map[string]bool
	why   error // why the handle was closed, if it was closed by a failure
}

// Open connects to the NBD server at uri (nbd://host[:port][/export],
// nbd+unix:///[export]?socket=PATH, and the other forms libnbd accepts),
// requests opts.MetaContexts, and waits for the handshake to finish.
//
// With opts.TLS, TLS is required: a server that does not offer it, or that
// knows another key for the identity, fails the handshake with an error
// matching ErrTLS.
//
// Open fails with ErrConnectTimeout (and context.DeadlineExceeded) when the
// handshake has not finished by the deadline, with ctx.Err() when ctx is
// cancelled, and with an *Error carrying libnbd's errno and message when the
// connection is refused or the server rejects the handshake.
func Open(ctx context.Context, uri string, opts Options) (*Handle, error) {
	timeout := opts.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	start := time.Now()

	ch, err := cCreate()
	if err != nil {
		return nil, fmt.Errorf("create handle for %s: %w", uri, err)
	}
	h := &Handle{h: ch, e: cErrBuf(), uri: uri, metas: map[string]bool{}}
	fail := func(err error) (*Handle, error) {
		h.Close()
		return nil, err
	}
	if opts.TLS != nil {
		if !strings.HasPrefix(uri, "nbds://") && !strings.HasPrefix(uri, "nbds+unix://") {
			return fail(fmt.Errorf("connect to %s with tls psk: %w", uri, ErrTLSURI))
		}
		if opts.TLS.PSKFile == "" || opts.TLS.Username == "" {
			return fail(fmt.Errorf("connect to %s with tls psk: psk file and username required: %w", uri, ErrTLSURI))
		}
		if err := cSetTLSPSK(ch, opts.TLS.Username, opts.TLS.PSKFile); err != nil {
			return fail(fmt.Errorf("connect to %s with tls psk of %s: %w", uri, opts.TLS.Username, err))
		}
		// Failures during the handshake come from libnbd as a closed
		// connection or a GnuTLS message: say it was TLS.
		inner := fail
		fail = func(err error) (*Handle, error) {
			if errors.Is(err, ErrConnectTimeout) || errors.Is(err, context.Canceled) {
				return inner(err)
			}
			return inner(fmt.Errorf("%w (tls psk identity %s: wrong key, or the server serves no tls-psk): %w", ErrTLS, opts.TLS.Username, err))
		}
	}
	for _, m := range opts.MetaContexts {
		if err := cAddMetaContext(ch, m); err != nil {
			return fail(fmt.Errorf("request meta context %s from %s: %w", m, uri, err))
		}
	}
	if err := cAioConnectURI(ch, uri); err != nil {
		return fail(fmt.Errorf("connect to %s: %w", uri, err))
	}
	for {
		switch cState(ch) {
		case stateReady:
			return h.ready(opts.MetaContexts)
		case stateDead, stateClosed:
			return fail(fmt.Errorf("connect to %s: connection closed during handshake (%s)", uri, cConnectionState(ch)))
		}
		if err := ctx.Err(); err != nil {
			state := cConnectionState(ch)
			if errors.Is(err, context.DeadlineExceeded) {
				return fail(fmt.Errorf("connect to %s: handshake not finished after %s, stuck in %s (server busy or at its connection limit?): %w: %w",
					uri, time.Since(start).Round(time.Millisecond), state, ErrConnectTimeout, err))
			}
			return fail(fmt.Errorf("connect to %s: %w", uri, err))
		}
		wait := pollSlice
		if dl, ok := ctx.Deadline(); ok {
			if left := time.Until(dl); left < wait {
				wait = max(left, time.Millisecond)
			}
		}
		if _, _, err := cPoll([]cHandle{ch}, wait); err != nil {
			return fail(fmt.Errorf("connect to %s: %w", uri, err))
		}
	}
}

func (h *Handle) ready(wanted []string) (*Handle, error) {
	caps, err := cCaps(h.h)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("read export info from %s: %w", h.uri, err)
	}
	h.caps = caps
	cTuneSocket(h.h)
	for _, m := range wanted {
		ok, err := cCanMetaContext(h.h, m)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("check meta context %s on %s: %w", m, h.uri, err)
		}
		h.metas[m] = ok
	}
	return h, nil
}

// URI returns the URI the handle was opened with.
func (h *Handle) URI() string { return h.uri }

// Size returns the export's size in bytes.
func (h *Handle) Size() int64 { return h.caps.Size }

// Caps returns everything the server advertised.
func (h *Handle) Caps() Caps { return h.caps }

// CanZero reports whether the server supports write-zeroes.
func (h *Handle) CanZero() bool { return h.caps.Zero }

// CanFlush reports whether the server supports flush.
func (h *Handle) CanFlush() bool { return h.caps.Flush }

// CanTrim reports whether the server supports trim (discard).
func (h *Handle) CanTrim() bool { return h.caps.Trim }

// CanMultiConn reports whether the server allows several connections to
// the export with consistent results (a flush on one covers writes
// completed on all).
func (h *Handle) CanMultiConn() bool { return h.caps.MultiConn }

// ReadOnly reports whether the export is read-only.
func (h *Handle) ReadOnly() bool { return h.caps.ReadOnly }

// CanMetaContext reports whether the server agreed to the meta context,
// which must have been requested in Options.MetaContexts.
func (h *Handle) CanMetaContext(name string) bool { return h.metas[name] }

// Close closes the connection without waiting for the server and frees the
// handle. Commands still in flight are abandoned; after Close libnbd no
// longer touches their buffers. Close is idempotent.
func (h *Handle) Close() error {
	if h.h != nil {
		cClose(h.h)
		h.h = nil
	}
	if h.e != nil {
		cFreeErrBuf(h.e)
		h.e = nil
	}
	return nil
}

// Shutdown asks the server to end the session (NBD_CMD_DISC) once the
// commands in flight have completed, and waits until the connection is
// closed or ctx ends. The handle must still be closed with Close.
func (h *Handle) Shutdown(ctx context.Context) error {
	if err := h.usable(); err != nil {
		return err
	}
	if err := cAioDisconnect(h.h); err != nil {
		return fmt.Errorf("disconnect from %s: %w", h.uri, err)
	}
	for {
		switch cState(h.h) {
		case stateClosed, stateDead:
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("disconnect from %s: %w", h.uri, err)
		}
		if _, _, err := cPoll([]cHandle{h.h}, pollSlice); err != nil {
			// The server closing first is the expected outcome.
			if cState(h.h) == stateClosed {
				return nil
			}
			return fmt.Errorf("disconnect from %s: %w", h.uri, err)
		}
	}
}

func (h *Handle) usable() error {
	if h.h == nil {
		if h.why != nil {
			return fmt.Errorf("use connection to %s: %w (%w)", h.uri, ErrClosed, h.why)
		}
		return fmt.Errorf("use connection to %s: %w", h.uri, ErrClosed)
	}
	return nil
}

// abandon closes the connection because a synchronous call's context ended
// with its command in flight: closing is the only way to be sure libnbd no
// longer writes into the caller's buffer.
func (h *Handle) abandon(cause error) {
	h.why = cause
	cKill(h.h)
	h.Close()
}
