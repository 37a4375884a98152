package bus_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/internal/testutil"
)

func TestAwait(t *testing.T) {
	errNotYet := errors.New("not there yet")
	tests := []struct {
		name     string
		failures int   // attempts that fail before one succeeds; -1: all fail
		failWith error // what they fail with
		timeout  time.Duration
		wantErr  error // nil: success
		wantMsg  string
		wantLogs int // "waiting" lines
	}{
		{name: "ready at once", failures: 0},
		{name: "ready after three waits", failures: 3, failWith: errNotYet, wantLogs: 3},
		{name: "a starting cluster's 503 is waited for", failures: 2,
			failWith: &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, wantLogs: 2},
		{name: "never ready: gives up at the deadline", failures: -1, failWith: errNotYet, timeout: 300 * time.Millisecond,
			wantErr: errNotYet, wantMsg: "wait for stream TEST: gave up after"},
		{name: "permanent: no wait", failures: -1, failWith: bus.Permanent(errNotYet), wantErr: errNotYet, wantMsg: "wait for stream TEST: not there yet"},
		{name: "a refused configuration (400) is permanent", failures: -1,
			failWith: &jetstream.APIError{Code: 400, ErrorCode: 10058, Description: "stream name already in use"}, wantErr: jetstream.ErrStreamNameAlreadyInUse},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			timeout := tc.timeout
			if timeout == 0 {
				timeout = 30 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			var logs testutil.Buffer
			attempts := 0
			err := bus.Await(ctx, "stream TEST", func(ctx context.Context) error {
				attempts++
				if tc.failures < 0 || attempts <= tc.failures {
					return tc.failWith
				}
				return nil
			}, bus.AwaitOptions{FirstDelay: time.Millisecond, MaxDelay: 20 * time.Millisecond, Log: zerolog.New(&logs)})
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Await: %v", err)
				}
				if attempts != tc.failures+1 {
					t.Errorf("%d attempts, want %d", attempts, tc.failures+1)
				}
			} else {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Await: %v, want %v", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("error %q does not say %q", err, tc.wantMsg)
				}
			}
			if tc.wantLogs > 0 {
				lines := strings.Count(logs.String(), `"message":"waiting"`)
				if lines != tc.wantLogs {
					t.Errorf("%d waiting lines, want %d:\n%s", lines, tc.wantLogs, logs.String())
				}
				for _, field := range []string{`"waiting_for":"stream TEST"`, `"attempt":1`, `"next_delay":`, `"error":`, `"message":"ready after waiting"`} {
					if !strings.Contains(logs.String(), field) {
						t.Errorf("log lacks %s:\n%s", field, logs.String())
					}
				}
			}
		})
	}
}

// An attempt that hangs (a cluster that does not answer) is cut at
// AttemptTimeout and tried again, and the wait still ends with ctx.
func TestAwaitAttemptTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeoutCause(context.Background(), 2*time.Second, errors.New("start-up timeout"))
	defer cancel()
	attempts := 0
	err := bus.Await(ctx, "lease bucket TEST", func(ctx context.Context) error {
		attempts++
		<-ctx.Done()
		return ctx.Err()
	}, bus.AwaitOptions{FirstDelay: time.Millisecond, MaxDelay: time.Millisecond, AttemptTimeout: 50 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "wait for lease bucket TEST") || !strings.Contains(err.Error(), "start-up timeout") {
		t.Fatalf("Await: %v, want an error naming the bucket and the start-up timeout", err)
	}
	if attempts < 3 {
		t.Errorf("%d attempts in 2s with a 50ms attempt timeout, want several", attempts)
	}
}
