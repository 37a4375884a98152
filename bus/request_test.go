package bus_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
)

// TestRequestLostReplyBoundedByTimeout: a request whose reply never comes
// (lost with a killed server, as in TestMultiHost) ends after the call's
// timeout even under a caller's much longer deadline, so a caller that
// polls asks again instead of waiting out its whole deadline.
func TestRequestLostReplyBoundedByTimeout(t *testing.T) {
	s := bustest.Embedded(t)
	var calls atomic.Int32
	sub, err := s.Conn.Subscribe("test.lossy", func(m *nats.Msg) {
		if calls.Add(1) == 1 {
			return // the first request is lost
		}
		_ = m.Respond([]byte(`{"ok":true}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var reply struct{ OK bool }
	err = bus.Request(ctx, s.Conn, "test.lossy", struct{}{}, &reply, 200*time.Millisecond, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("lost reply: err = %v, want deadline exceeded", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the lost reply was waited for until the caller's deadline, not the call's timeout")
	}
	if err := bus.Request(ctx, s.Conn, "test.lossy", struct{}{}, &reply, 200*time.Millisecond, nil); err != nil || !reply.OK {
		t.Fatalf("second request: reply %+v, err %v", reply, err)
	}

	// Timeout 0: the caller's context alone bounds the call.
	short, cancelShort := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancelShort()
	calls.Store(0)
	if err := bus.Request(short, s.Conn, "test.lossy", struct{}{}, &reply, 0, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("timeout 0, lost reply: err = %v, want the context's deadline", err)
	}
}

// TestRequestDeniedSaysWhy: a request the server refuses to carry ends
// at its timeout with the server's reason, not a bare deadline: an
// identity that may not publish on the subject (a monitor asking the
// catalog), and one that may not subscribe to its reply inbox (a
// requester's key used by a command that connects with admin's inbox, as
// `sendense cancel --nats-nkey requester.nk` did).
func TestRequestDeniedSaysWhy(t *testing.T) {
	s := bustest.SecureEmbedded(t)
	ctx := context.Background()
	const subject = "sendense.catalog.jobs.list"

	mon := s.Connect(t, bus.Identity{Role: bus.RoleMonitor})
	err := bus.Request(ctx, mon.Conn, subject, struct{}{}, nil, time.Second, nil)
	if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), `Publish to "`+subject+`"`) ||
		!strings.Contains(err.Error(), "sendense-monitor") {
		t.Errorf("monitor's request: %v, want the publish violation naming the subject and the connection", err)
	}

	opts := s.Creds.Options(bus.Identity{Role: bus.RoleRequester})
	opts.URLs = []string{s.URL}
	opts.InboxPrefix = bus.Identity{Role: bus.RoleAdmin}.InboxPrefix()
	nc, err := bus.Connect(ctx, opts, bustest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	err = bus.Request(ctx, nc, subject, struct{}{}, nil, time.Second, nil)
	if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), "Subscription to \""+opts.InboxPrefix) {
		t.Errorf("request with another role's inbox: %v, want the subscription violation of the reply inbox", err)
	}
}
