package bus_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
)

const leaseTTL = 2 * time.Second

func newLeases(t *testing.T, js jetstream.JetStream, opts ...bus.LeasesOption) *bus.Leases {
	t.Helper()
	opts = append([]bus.LeasesOption{bus.LeaseLogger(bustest.Logger(t))}, opts...)
	l, err := bus.NewLeases(testCtx(t), js, "", leaseTTL, opts...)
	if err != nil {
		t.Fatalf("NewLeases: %v", err)
	}
	return l
}

// jobHolder is the holder of the tests: agent "test", attempt 1 of job.
func jobHolder(job string) bus.Holder { return bus.Holder{Agent: "test", JobID: job, Attempt: 1} }

func acquire(t *testing.T, ctx context.Context, l *bus.Leases, key, holder string) *bus.Lease {
	t.Helper()
	le, err := l.Acquire(ctx, key, jobHolder(holder))
	if err != nil {
		t.Fatalf("Acquire(%s, %s): %v", key, holder, err)
	}
	return le
}

// wantHeld asserts that key is held by holder.
func wantHeld(t *testing.T, l *bus.Leases, key, holder string) {
	t.Helper()
	le, err := l.Acquire(testCtx(t), key, jobHolder("intruder"))
	if err == nil {
		_ = le.Release(testCtx(t))
		t.Fatalf("lease %s could be taken, want it held by %s", key, holder)
	}
	var held *bus.HeldError
	if !errors.Is(err, bus.ErrLeaseHeld) || !errors.As(err, &held) || held.Holder != jobHolder(holder) {
		t.Fatalf("Acquire of a held lease: %v, want ErrLeaseHeld by %s", err, holder)
	}
}

// takeWhenFree polls Acquire until it succeeds and returns the lease and
// how long it took.
func takeWhenFree(t *testing.T, l *bus.Leases, key, holder string, limit time.Duration) (*bus.Lease, time.Duration) {
	t.Helper()
	begin := time.Now()
	for {
		le, err := l.Acquire(testCtx(t), key, jobHolder(holder))
		if err == nil {
			return le, time.Since(begin)
		}
		if !errors.Is(err, bus.ErrLeaseHeld) {
			t.Fatalf("Acquire: %v", err)
		}
		if time.Since(begin) > limit {
			t.Fatalf("lease %s still held after %v", key, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestLeases(t *testing.T) {
	s := bustest.Embedded(t)
	l := newLeases(t, s.JS)
	if l.TTL() != leaseTTL {
		t.Errorf("TTL = %v", l.TTL())
	}

	t.Run("exclusive and renewed beyond ttl", func(t *testing.T) {
		t.Parallel()
		key := bus.VMLeaseKey("vm-renew")
		a := acquire(t, testCtx(t), l, key, "agent-a/job-1/1")
		wantHeld(t, l, key, "agent-a/job-1/1")
		time.Sleep(3 * leaseTTL) // three ttls: only renewal keeps it
		wantHeld(t, l, key, "agent-a/job-1/1")
		if err := a.Err(); err != nil {
			t.Fatalf("lease ended: %v", err)
		}
		select {
		case <-a.Lost():
			t.Fatal("lease reported lost")
		default:
		}
		if err := a.Release(testCtx(t)); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if !errors.Is(context.Cause(a.Context()), bus.ErrLeaseReleased) {
			t.Errorf("context cause after release: %v", context.Cause(a.Context()))
		}
		// Released: free at once.
		b := acquire(t, testCtx(t), l, key, "agent-b/job-2/1")
		if err := b.Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("crashed holder expires, its late release deletes nothing", func(t *testing.T) {
		t.Parallel()
		key := bus.VMLeaseKey("vm-crash")
		crashCtx, crash := context.WithCancel(context.Background())
		a := acquire(t, crashCtx, l, key, "agent-a/job-1/1")
		crash() // the agent dies: no more renewals, no release
		<-a.Context().Done()
		wantHeld(t, l, key, "agent-a/job-1/1")

		b, took := takeWhenFree(t, l, key, "agent-b/job-1/2", 4*leaseTTL)
		if took < leaseTTL/2 {
			t.Errorf("lease of a crashed holder free after %v, want about the ttl %v", took, leaseTTL)
		}
		// The old holder comes back and releases: B's lease must survive.
		if err := a.Release(testCtx(t)); !errors.Is(err, bus.ErrLeaseLost) {
			t.Errorf("late Release by the old holder: %v, want ErrLeaseLost", err)
		}
		wantHeld(t, l, key, "agent-b/job-1/2")
		if err := b.Err(); err != nil {
			t.Errorf("B's lease ended: %v", err)
		}
		if err := b.Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("taken away is lost", func(t *testing.T) {
		t.Parallel()
		key := bus.VMLeaseKey("vm-stolen")
		a := acquire(t, testCtx(t), l, key, "agent-a/job-1/1")
		kv, err := s.JS.KeyValue(testCtx(t), bus.LeaseBucket)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(testCtx(t), key, []byte(`{"holder":"admin"}`)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-a.Lost():
		case <-time.After(2 * leaseTTL):
			t.Fatal("lease not lost after someone else wrote its key")
		}
		if !errors.Is(context.Cause(a.Context()), bus.ErrLeaseLost) || !errors.Is(a.Err(), bus.ErrLeaseLost) {
			t.Errorf("cause %v, Err %v; want ErrLeaseLost", context.Cause(a.Context()), a.Err())
		}
		if err := a.Release(testCtx(t)); !errors.Is(err, bus.ErrLeaseLost) {
			t.Errorf("Release of a lost lease: %v", err)
		}
		if e, err := kv.Get(testCtx(t), key); err != nil || string(e.Value()) != `{"holder":"admin"}` {
			t.Errorf("the new value was touched: %v", err)
		}
	})

	t.Run("deleted is lost within one renewal interval", func(t *testing.T) {
		t.Parallel()
		key := bus.VMLeaseKey("vm-deleted")
		a := acquire(t, testCtx(t), l, key, "agent-a/job-1/1")
		kv, err := s.JS.KeyValue(testCtx(t), bus.LeaseBucket)
		if err != nil {
			t.Fatal(err)
		}
		if err := kv.Delete(testCtx(t), key); err != nil { // what `nats kv del` does
			t.Fatal(err)
		}
		deleted := time.Now()
		select {
		case <-a.Lost():
		case <-time.After(2 * leaseTTL):
			t.Fatal("lease not lost after its key was deleted")
		}
		if took := time.Since(deleted); took > leaseTTL/3+leaseTTL/4 {
			t.Errorf("loss noticed after %v, want within one renewal interval (%v)", took, leaseTTL/3)
		}
		if !errors.Is(a.Err(), bus.ErrLeaseLost) || errors.Is(a.Err(), bus.ErrUnavailable) {
			t.Errorf("Err %v, want ErrLeaseLost and not ErrUnavailable", a.Err())
		}
		if _, err := a.Confirm(testCtx(t)); !errors.Is(err, bus.ErrLeaseLost) {
			t.Errorf("Confirm of a deleted lease: %v, want ErrLeaseLost", err)
		}
	})

	t.Run("confirm renews and says how long it holds", func(t *testing.T) {
		t.Parallel()
		key := bus.VMLeaseKey("vm-confirm")
		a := acquire(t, testCtx(t), l, key, "agent-a/job-1/1")
		rev := a.Revision()
		d, err := a.Confirm(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		if d <= leaseTTL/2 || d > leaseTTL {
			t.Errorf("Confirm holds for %v, want between ttl/2 and ttl (%v)", d, leaseTTL)
		}
		if a.Revision() <= rev {
			t.Errorf("revision %d after Confirm, was %d: no write", a.Revision(), rev)
		}
		if err := a.Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("probe writes a key that is no lease", func(t *testing.T) {
		t.Parallel()
		if err := l.Probe(testCtx(t), "agent-a"); err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"", "a.b", "a b"} {
			if err := l.Probe(testCtx(t), bad); !errors.Is(err, bus.ErrInvalidLeaseKey) {
				t.Errorf("Probe(%q): %v", bad, err)
			}
		}
	})

	t.Run("a renewal that landed unseen is still ours", func(t *testing.T) {
		t.Parallel()
		key := bus.VMLeaseKey("vm-unseen")
		a := acquire(t, testCtx(t), l, key, "agent-a/job-1/1")
		kv, err := s.JS.KeyValue(testCtx(t), bus.LeaseBucket)
		if err != nil {
			t.Fatal(err)
		}
		// What a renewal whose ack was lost leaves behind: our value at a
		// revision the lease never saw.
		e, err := kv.Get(testCtx(t), key)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Update(testCtx(t), key, e.Value(), e.Revision()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * leaseTTL)
		if err := a.Err(); err != nil {
			t.Fatalf("lease ended: %v", err)
		}
		wantHeld(t, l, key, "agent-a/job-1/1")
		if err := a.Release(testCtx(t)); err != nil {
			t.Fatalf("Release: %v", err)
		}
		b := acquire(t, testCtx(t), l, key, "agent-b/job-2/1")
		_ = b.Release(testCtx(t))
	})

	t.Run("invalid keys", func(t *testing.T) {
		t.Parallel()
		for _, key := range []string{"", "vm 1", "vm.*", "vm.>", ".vm", "vm."} {
			if _, err := l.Acquire(testCtx(t), key, jobHolder("h")); !errors.Is(err, bus.ErrInvalidLeaseKey) {
				t.Errorf("Acquire(%q): %v, want ErrInvalidLeaseKey", key, err)
			}
		}
		if _, err := l.Acquire(testCtx(t), "vm.x", bus.Holder{Agent: "a"}); err == nil {
			t.Error("Acquire with an empty holder succeeded")
		}
	})
}

func TestOpenLeases(t *testing.T) {
	s := bustest.Embedded(t)
	if _, err := bus.OpenLeases(testCtx(t), s.JS, ""); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Errorf("OpenLeases before the bucket exists: %v, want ErrBucketNotFound", err)
	}
	if _, err := bus.NewLeases(testCtx(t), s.JS, "", 3*time.Second); err != nil {
		t.Fatal(err)
	}
	l, err := bus.OpenLeases(testCtx(t), s.JS, "")
	if err != nil || l.TTL() != 3*time.Second {
		t.Fatalf("OpenLeases: %v, ttl %v; want the bucket's 3s", err, l.TTL())
	}
	le := acquire(t, testCtx(t), l, bus.VMLeaseKey("vm-1"), "job-1")
	if err := le.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

func TestNewLeasesOptions(t *testing.T) {
	s := bustest.Embedded(t)
	if _, err := bus.NewLeases(testCtx(t), s.JS, "", time.Millisecond); err == nil {
		t.Error("ttl below the minimum accepted")
	}
	l, err := bus.NewLeases(testCtx(t), s.JS, "", 0)
	if err != nil || l.TTL() != bus.DefaultLeaseTTL {
		t.Fatalf("default ttl: %v, %v", l, err)
	}
	// The bucket's max age is the ttl, and a second NewLeases updates it.
	if _, err := bus.NewLeases(testCtx(t), s.JS, "", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	kv, err := s.JS.KeyValue(testCtx(t), bus.LeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != 5*time.Second || st.History() != 1 {
		t.Errorf("bucket ttl %v history %d, want 5s and 1", st.TTL(), st.History())
	}
}

// TestLeaseHolderIsStructured: a lease's holder is its fields, never a
// string to match: a lease rewritten for agent "node10" (same job, attempt
// and acquisition time) is not node1's any more, and Holder reports
// exactly node10. Matching "node1" inside "node10/j-1/1" would keep it.
func TestLeaseHolderIsStructured(t *testing.T) {
	s := bustest.Embedded(t)
	ctx := testCtx(t)
	l := newLeases(t, s.JS)
	key := bus.VMLeaseKey("vm-1")
	le, err := l.Acquire(ctx, key, bus.Holder{Agent: "node1", JobID: "j-1", Attempt: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = le.Release(context.Background()) })

	kv, err := s.JS.KeyValue(ctx, bus.LeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	var val map[string]any
	if err := json.Unmarshal(e.Value(), &val); err != nil {
		t.Fatal(err)
	}
	if val["agent"] != "node1" || val["job_id"] != "j-1" || val["attempt"] != float64(1) {
		t.Fatalf("lease value %s lacks the holder's fields", e.Value())
	}
	val["agent"], val["holder"] = "node10", "node10/j-1/1"
	b, _ := json.Marshal(val)
	if _, err := kv.Put(ctx, key, b); err != nil {
		t.Fatal(err)
	}
	if h, ok, err := l.Holder(ctx, key); err != nil || !ok || h != (bus.Holder{Agent: "node10", JobID: "j-1", Attempt: 1}) {
		t.Errorf("Holder = %+v %t %v, want node10's", h, ok, err)
	}
	if _, err := le.Confirm(ctx); !errors.Is(err, bus.ErrLeaseLost) {
		t.Errorf("node1 confirms a lease node10 holds: %v, want ErrLeaseLost", err)
	}
}
