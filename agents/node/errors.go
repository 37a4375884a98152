package node

import (
	"context"
	"errors"
	"fmt"

	"github.com/sendense/sendense/schemas"
)

// errAttemptTaken: the stream already holds another started event of this
// job and attempt. The run publishes nothing more under the attempt and its
// request comes back later: by then the catalog shows whose job it is (a
// reused job id is rejected) or which attempts it has seen.
var errAttemptTaken = errors.New("attempt already taken by another run")

// jobError is a failure classified where it was born: a reason code that
// crosses the bus and whether trying again may help.
type jobError struct {
	reason    string
	retryable bool
	err       error
}

func (e *jobError) Error() string { return e.err.Error() }
func (e *jobError) Unwrap() error { return e.err }

func fail(reason string, retryable bool, err error) error {
	return &jobError{reason: reason, retryable: retryable, err: err}
}

// rejection is bad input: answered with backup.rejected, never retried.
type rejection struct {
	reason string
	err    error
}

func (e *rejection) Error() string { return e.err.Error() }
func (e *rejection) Unwrap() error { return e.err }

func reject(reason string, format string, a ...any) error {
	return &rejection{reason: reason, err: fmt.Errorf(format, a...)}
}

// classify returns the reason code and retryability of err. What stopped a
// job from outside (a cancel, shutdown, a lost lease, NATS unable to store) wins
// over the error of the step it interrupted.
func classify(err error) (reason string, retryable bool) {
	var je *jobError
	isJob := errors.As(err, &je)
	switch {
	case isJob && (je.reason == schemas.FailCanceled || je.reason == schemas.FailShutdown || je.reason == schemas.FailLeaseLost || je.reason == schemas.FailNATS):
		return je.reason, je.retryable
	case errors.Is(err, context.Canceled):
		// Whatever was under way when the job's context ended (shutdown;
		// a lost lease is classified by the caller), trying again may work.
		return schemas.FailShutdown, true
	case isJob:
		return je.reason, je.retryable
	case errors.Is(err, context.DeadlineExceeded):
		return schemas.FailInternal, true
	}
	return schemas.FailInternal, false
}

// canceledError is the failure of a job admin canceled (Cancel): reason
// canceled, never retried; err is what the cancel interrupted.
func canceledError(err error) error {
	return fail(schemas.FailCanceled, false, fmt.Errorf("%w (it stopped: %w)", ErrCanceled, err))
}
