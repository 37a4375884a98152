package copier

import (
	"errors"
	"fmt"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrTargetTooSmall: the target export is smaller than the source.
	ErrTargetTooSmall = errors.New("copier: target smaller than source")

	// ErrBadExtents: an extent has a negative offset or length, or ends
	// beyond the source (for example because the disk was resized).
	ErrBadExtents = errors.New("copier: invalid extents")

	// ErrBadOptions: Options are inconsistent (for example ChunkSize not a
	// multiple of ZeroBlock).
	ErrBadOptions = errors.New("copier: invalid options")

	// ErrStalled: requests were in flight and none completed for
	// Options.StallTimeout.
	ErrStalled = errors.New("copier: no request completed within the stall timeout")

	// ErrConnectionLost: a source or target connection closed or failed
	// during the copy; requests in flight on it cannot be retried.
	ErrConnectionLost = errors.New("copier: connection lost")
)

// RequestError is a request that failed after all its attempts: which
// operation, where, how often it was tried, and the last cause (an
// *nbd.Error for errors the server reported).
type RequestError struct {
	Op       string // "read", "write" or "zero"
	URI      string // the source's or target's URI
	Offset   int64
	Length   int64
	Attempts int
	Err      error
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("%s %d bytes at offset %d of %s (%d attempts): %v", e.Op, e.Length, e.Offset, e.URI, e.Attempts, e.Err)
}

// Unwrap returns the cause.
func (e *RequestError) Unwrap() error { return e.Err }
