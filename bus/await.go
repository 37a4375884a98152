package bus

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Await defaults.
const (
	// AwaitFirstDelay is the wait after the first failed attempt.
	AwaitFirstDelay = 100 * time.Millisecond
	// AwaitMaxDelay caps the wait between attempts.
	AwaitMaxDelay = 5 * time.Second
	// AwaitAttemptTimeout bounds one attempt when the caller's context
	// leaves more time. A JetStream cluster whose meta group has no leader
	// yet does not answer API requests at all (for its lost-quorum
	// interval, 10 s, after it started), so a try that got no answer is
	// better repeated soon than waited on: the calls waited for are
	// idempotent (create or update, bind).
	AwaitAttemptTimeout = 5 * time.Second
)

// AwaitOptions tunes Await. The zero value gives the defaults.
type AwaitOptions struct {
	// FirstDelay is the wait after the first failed attempt, doubled per
	// attempt up to MaxDelay, plus up to a quarter of random jitter.
	// Defaults AwaitFirstDelay and AwaitMaxDelay.
	FirstDelay time.Duration
	MaxDelay   time.Duration
	// AttemptTimeout bounds each attempt (never beyond ctx's deadline).
	// Default AwaitAttemptTimeout.
	AttemptTimeout time.Duration
	// Log gets one line per failed attempt (what, attempt, next delay, the
	// error) and one when what is ready after waiting. The zero Logger
	// discards.
	Log zerolog.Logger
}

// permanentError marks an error Await does not retry.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err so that Await returns it at once instead of trying
// again: for a failure that waiting cannot fix (bad configuration).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// awaitRetryable reports whether Await tries again after err. Everything is,
// except errors marked Permanent, refused credentials and permissions
// (the server's configuration does not change by waiting), and a
// JetStream API answer with code 400 (a configuration the server refuses,
// such as a stream whose retention differs). What a starting cluster
// answers is retried: no answer (a timeout: the meta group has no leader
// yet), no responders (JetStream not up), 503 "JetStream system
// temporarily unavailable" (10008) or "insufficient resources" (10023,
// not all peers known yet), and not found (another role makes it).
func awaitRetryable(err error) bool {
	var pe *permanentError
	if errors.As(err, &pe) {
		return false
	}
	if errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrPermissionViolation) ||
		errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrConnectionClosed) {
		return false
	}
	var ae *jetstream.APIError
	if errors.As(err, &ae) && ae.Code == 400 {
		return false
	}
	return true
}

// Await calls fn until it returns nil, waiting between attempts with
// exponential backoff and jitter, each attempt under its own timeout
// (opts.AttemptTimeout, bounded by ctx). what names the thing waited for
// in logs and errors ("stream BACKUP_REQUESTS", "lease bucket
// sendense_leases"). It returns nil once fn succeeds; the error of a
// permanent failure (see Permanent) at once; and, when ctx ends first
// (the start-up timeout, or a signal), an error naming what, the number
// of attempts, the time waited, ctx's cause and fn's last error.
//
// Use it for what a role needs from the cluster at start-up; once running,
// the roles rely on the connection's own reconnects.
func Await(ctx context.Context, what string, fn func(ctx context.Context) error, opts AwaitOptions) error {
	first, maxDelay, per := opts.FirstDelay, opts.MaxDelay, opts.AttemptTimeout
	if first <= 0 {
		first = AwaitFirstDelay
	}
	if maxDelay <= 0 {
		maxDelay = AwaitMaxDelay
	}
	if per <= 0 {
		per = AwaitAttemptTimeout
	}
	start := time.Now()
	delay := first
	var last error
	for attempt := 1; ; attempt++ {
		if ctx.Err() != nil {
			return awaitGaveUp(ctx, what, attempt-1, start, last)
		}
		actx, cancel := context.WithTimeout(ctx, per)
		err := fn(actx)
		cancel()
		if err == nil {
			if attempt > 1 {
				opts.Log.Info().Str("waited_for", what).Int("attempts", attempt).
					Dur("waited", time.Since(start)).Msg("ready after waiting")
			}
			return nil
		}
		last = err
		if ctx.Err() != nil {
			return awaitGaveUp(ctx, what, attempt, start, last)
		}
		if !awaitRetryable(err) {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		next := delay + rand.N(delay/4+1)
		opts.Log.Info().Str("waiting_for", what).Int("attempt", attempt).Dur("next_delay", next).
			Err(err).Msg("waiting")
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return awaitGaveUp(ctx, what, attempt, start, last)
		case <-t.C:
		}
		delay = min(2*delay, maxDelay)
	}
}

func awaitGaveUp(ctx context.Context, what string, attempts int, start time.Time, last error) error {
	if last == nil {
		return fmt.Errorf("wait for %s: %w", what, context.Cause(ctx))
	}
	return fmt.Errorf("wait for %s: gave up after %d attempts in %s: %w (last error: %w)",
		what, attempts, time.Since(start).Round(time.Millisecond), context.Cause(ctx), last)
}
