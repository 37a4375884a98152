package bus_test

import (
	"context"
	"errors"
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
