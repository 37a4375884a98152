package system

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

// TestForgetScheduled: a forget schedule (fired by nats-server onto
// backup.forget.requested) makes the hub apply its policy to the VM's
// backups, publishing backup.pruning and backup.pruned, with no request
// from anyone; the catalog shows the removed points pruned and the kept
// one completed.
func TestForgetScheduled(t *testing.T) {
	t.Parallel()
	h := startHarness(t, nil)
	var jobs []string
	for range 3 {
		jobs = append(jobs, h.completed(h.request("pgtest1", schemas.TypeAuto, "")).JobID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sched := bus.Schedule{Name: "prune-pgtest1", Cron: "@every 1s",
		Forget: &schemas.ForgetRequest{VM: "pgtest1", Policy: schemas.Retention{Last: 1}}}
	if _, err := bus.AddSchedule(ctx, h.sys.JS, sched, bus.AddOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, id := range jobs[:2] { // oldest first
		h.next(60*time.Second, func(ev schemas.Event) bool {
			p, ok := ev.(*schemas.Pruned)
			return ok && p.JobID == id
		})
	}
	if err := bus.RemoveSchedule(ctx, h.sys.JS, "prune-pgtest1"); err != nil {
		t.Fatal(err)
	}
	for _, id := range jobs[:2] {
		h.waitCatalog(id, func(j backup.Job) bool { return j.Status == backup.StatusPruned })
	}
	h.waitCatalog(jobs[2], func(j backup.Job) bool { return j.Status == backup.StatusCompleted })
	// The hub logs the request done once Forget returned, which may be
	// after the catalog shows the points pruned.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		logs := h.logs.String()
		if strings.Contains(logs, `"requested_by":"schedule:prune-pgtest1"`) && strings.Contains(logs, "forget request done") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the hub did not log the scheduled forget")
		}
	}
}
