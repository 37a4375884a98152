package catalog

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
)

// TestReplySubjectAttack: a requester chooses the reply subject of a
// catalog request. With NATS's allow_responses the catalog service would
// publish its answer there, whatever that subject: an agent's event
// subject, a lease key, or the JetStream API (an error answer has an empty
// body, which is exactly what $JS.API.STREAM.DELETE.<stream> takes; a
// reviewer deleted BACKUP_EVENTS of a running serve this way). Services
// answer on inboxes only, and drop other reply subjects.
func TestReplySubjectAttack(t *testing.T) {
	bustest.ForEachSecure(t, func(t *testing.T, start bustest.SecureFunc) {
		s := start(t, "node1")
		hub := s.Connect(t, bus.Identity{Role: bus.RoleAdmin})
		ctx := testCtx(t)
		if err := bus.EnsureStreams(ctx, hub.JS, bus.StreamOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := bus.NewLeases(ctx, hub.JS, "", time.Minute); err != nil {
			t.Fatal(err)
		}
		node1 := s.Connect(t, bus.AgentIdentity("node1"))
		leases, err := bus.OpenLeases(ctx, node1.JS, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leases.Acquire(ctx, bus.VMLeaseKey("vm-1"), bus.Holder{Agent: "node1", JobID: "j1", Attempt: 1}); err != nil {
			t.Fatal(err)
		}
		catConn := s.Connect(t, bus.Identity{Role: bus.RoleCatalog})
		log := bustest.Logger(t)
		cat := openCatalog(t, filepath.Join(t.TempDir(), "catalog.db"), log)
		svc, err := Serve(catConn.Conn, cat, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = svc.Stop() })

		req := s.Connect(t, bus.Identity{Role: bus.RoleRequester})
		send := func(subject, data, reply string) {
			m := nats.NewMsg(subject)
			m.Reply = reply
			m.Data = []byte(data)
			if err := req.PublishMsg(m); err != nil {
				t.Fatal(err)
			}
			_ = req.Flush()
			time.Sleep(300 * time.Millisecond)
		}
		count := func() uint64 {
			st, err := hub.JS.Stream(ctx, bus.StreamEvents)
			if err != nil {
				return 0
			}
			return st.CachedInfo().State.Msgs
		}

		// The same request with an inbox is answered.
		if _, err := req.Request(SubjectStats, []byte(`{}`), 5*time.Second); err != nil {
			t.Fatalf("stats with an inbox: %v", err)
		}

		// 1. A message on node1's completed subject, stored in BACKUP_EVENTS.
		before := count()
		send(SubjectStats, `{}`, bus.AgentSubject("backup.completed", "node1"))
		if n := count(); n != before {
			t.Errorf("requester made the catalog store a message on backup.completed.node1: events %d -> %d", before, n)
		}

		// 2. A lease written by a non-agent: node1's renewal will fail.
		kv, _ := node1.JS.KeyValue(ctx, bus.LeaseBucket)
		e0, _ := kv.Get(ctx, bus.VMLeaseKey("vm-1"))
		send(SubjectStats, `{}`, "$KV."+bus.LeaseBucket+"."+bus.VMLeaseKey("vm-1"))
		if e, err := kv.Get(ctx, bus.VMLeaseKey("vm-1")); err == nil && e.Revision() != e0.Revision() {
			t.Errorf("requester overwrote node1's lease through the catalog's reply: %q", e.Value())
		}

		// 3. The JetStream API: an error reply (empty body) deletes a stream.
		send(SubjectJobGet, `{"id":"no-such-job"}`, "$JS.API.STREAM.DELETE."+bus.StreamEvents)
		if _, err := hub.JS.Stream(ctx, bus.StreamEvents); err != nil {
			t.Errorf("requester deleted %s through the catalog's error reply: %v", bus.StreamEvents, err)
		}
		send(SubjectJobGet, `{"id":"no-such-job"}`, "$JS.API.STREAM.DELETE.KV_"+bus.LeaseBucket)
		if _, err := hub.JS.Stream(ctx, "KV_"+bus.LeaseBucket); err != nil {
			t.Errorf("requester deleted the lease bucket through the catalog's error reply: %v", err)
		}
	})
}
