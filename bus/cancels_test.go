package bus_test

import (
	"testing"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
)

// TestCancelRecords: admin creates the cancel bucket and records a
// canceled job; an agent reads the record but can neither write one nor
// delete one (no agent may cancel another's job, nor revive a canceled
// one); the hub, the catalog and a requester cannot write either.
func TestCancelRecords(t *testing.T) {
	bustest.ForEachSecure(t, func(t *testing.T, start bustest.SecureFunc) {
		s := start(t, "node1")
		adm := admin(t, s)
		recs, err := bus.EnsureCancels(testCtx(t), adm.JS, 1, bus.AwaitOptions{})
		if err != nil {
			t.Fatalf("admin creates the cancel bucket: %v", err)
		}
		if err := recs.Record(testCtx(t), "job-1", "ops@desk"); err != nil {
			t.Fatalf("admin records a cancel: %v", err)
		}
		if err := recs.Record(testCtx(t), "-rf", "ops@desk"); err == nil {
			t.Error("a cancel of an invalid job id was recorded")
		}

		node1 := s.Connect(t, bus.AgentIdentity("node1"))
		agentRecs, err := bus.OpenCancels(testCtx(t), node1.JS)
		if err != nil {
			t.Fatalf("agent opens the cancel bucket: %v", err)
		}
		rec, ok, err := agentRecs.Canceled(testCtx(t), "job-1")
		if err != nil || !ok || rec.By != "ops@desk" || rec.At.IsZero() {
			t.Errorf("agent reads job-1's cancel: %+v %v %v, want ops@desk's record", rec, ok, err)
		}
		if _, ok, err := agentRecs.Canceled(testCtx(t), "job-2"); err != nil || ok {
			t.Errorf("job-2, never canceled: canceled %v, err %v", ok, err)
		}

		for _, who := range []bus.Identity{bus.AgentIdentity("node1"), {Role: bus.RoleHub}, {Role: bus.RoleCatalog}, {Role: bus.RoleRequester}} {
			c := s.Connect(t, who)
			subject := "$KV." + bus.CancelBucket + "." + bus.CancelKey("job-3")
			if err := c.Publish(subject, []byte(`{}`)); err != nil {
				t.Fatal(err)
			}
			wantViolation(t, who.String(), c, subject)
		}
		if _, ok, _ := agentRecs.Canceled(testCtx(t), "job-3"); ok {
			t.Error("a forged cancel record was stored")
		}
	})
}
