package nbd

import (
	"errors"
	"syscall"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrConnectTimeout: the connection or NBD handshake did not finish
	// before the deadline (the caller's, or Options.ConnectTimeout). The
	// usual cause is a qemu-nbd whose --shared limit is already used: it
	// accepts the socket but never starts the handshake. Errors carrying it
	// also match context.DeadlineExceeded.
	ErrConnectTimeout = errors.New("nbd: connect deadline passed")

	// ErrClosed: the handle was closed, by Close or because a synchronous
	// call's context ended while its command was in flight.
	ErrClosed = errors.New("nbd: handle closed")

	// ErrNoMetaContext: block status was asked for a meta context that was
	// not requested in Options.MetaContexts or that the server did not
	// agree to.
	ErrNoMetaContext = errors.New("nbd: meta context not negotiated")

	// ErrUnsupported: the server does not advertise the operation (for
	// example zero, trim or flush).
	ErrUnsupported = errors.New("nbd: operation not supported by server")

	// ErrDisconnected: the connection is gone (the server closed it or it
	// failed). Commands that were in flight were retired with errors, and
	// new ones cannot be started.
	ErrDisconnected = errors.New("nbd: connection closed by server")

	// ErrTLS: the TLS handshake of a connection with Options.TLS failed:
	// the server knows another key for the identity, or serves no TLS-PSK.
	ErrTLS = errors.New("nbd: tls handshake failed")

	// ErrTLSURI: Options.TLS with a URI that is not nbds:// or
	// nbds+unix:// (libnbd would connect in clear), or without a psk file
	// or username.
	ErrTLSURI = errors.New("nbd: tls psk needs an nbds uri, a psk file and a username")

	// ErrReadOnly: a write was attempted on a read-only export.
	ErrReadOnly = errors.New("nbd: export is read-only")
)

// Error is an error reported by libnbd: the call that failed, the errno
// libnbd recorded (0 if none) and libnbd's message, which already names the
// call and the cause ("nbd_aio_connect_uri: connect: No such file or
// directory"). errors.Is(err, syscall.ECONNREFUSED) and the like work
// through Unwrap.
type Error struct {
	Op    string
	Errno syscall.Errno
	Msg   string
}

func (e *Error) Error() string { return e.Msg }

// Unwrap returns the errno, so errors.Is matches syscall errors.
func (e *Error) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}
