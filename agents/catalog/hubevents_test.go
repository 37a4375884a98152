package catalog

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

// TestHubEvents: the hub's backup.pruning and backup.pruned, published on
// backup.<type>.hub through the hub's publisher, reach the catalog as the
// hub's (store.HubAgent is bus.HubAgent): the job is pruned and out of its
// chain, the next link backs onto nothing, and a replay of the stream
// gives the same catalog.
func TestHubEvents(t *testing.T) {
	if store.HubAgent != bus.HubAgent {
		t.Fatalf("store.HubAgent %q != bus.HubAgent %q", store.HubAgent, bus.HubAgent)
	}
	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
		e := newEnv(t, start)
		full := catalogtest.Job{ID: "job-full"}
		inc := catalogtest.Job{ID: "job-inc", At: catalogtest.T0.Add(3600e9), Incremental: true,
			Backing: full.ID, BaseChangeID: full.ChangeIDOf(catalogtest.Disk(0, 0))}
		e.publish(append(full.Run(), inc.Run()...)...)
		hub := bus.NewHubPublisher(e.js, e.log)
		for _, ev := range []schemas.Event{full.Pruning(schemas.PruneMerge, inc.ID, ""), full.Pruned(schemas.PruneMerge, inc.ID, "")} {
			if _, err := hub.PublishEvent(testCtx(t), ev); err != nil {
				t.Fatalf("hub publishes %s: %v", ev.EventHeader().ID, err)
			}
		}
		r := e.start(Options{})
		j := e.waitJob(full.ID, backup.StatusPruned)
		e.waitIdle()
		r.stop(t)
		if j.Prune == nil || j.Prune.State != backup.PruneDone || j.Prune.Disks[0].Child != inc.ID {
			t.Errorf("pruned job: %+v", j.Prune)
		}
		vm := catalogtest.VM(0).UUID
		links, err := e.cat.Chain(vm, catalogtest.Disk(0, 0).Key, schemas.DefaultRepository)
		if err != nil || len(links) != 1 || links[0].JobID != inc.ID || links[0].Backing != "" {
			t.Errorf("chain after the merge: %+v, %v; want %s alone, backed by nothing", links, err, inc.ID)
		}
		live := e.dump()
		if len(live.Poison) != 0 {
			t.Errorf("poison: %+v", live.Poison)
		}
		cat := openCatalog(t, filepath.Join(t.TempDir(), "replay.db"), e.log)
		if _, err := Replay(testCtx(t), e.js, cat, e.log); err != nil {
			t.Fatal(err)
		}
		got, err := cat.Dump()
		if err != nil {
			t.Fatal(err)
		}
		requireEqual(t, live, got)
	})
}

// TestVerifiedEvents: the hub's backup.verified events reach the catalog
// as the hub's; the job keeps the latest (failed here), its chain link
// shows it, and a replay of the stream gives the same catalog.
func TestVerifiedEvents(t *testing.T) {
	bustest.ForEach(t, func(t *testing.T, start bustest.StartFunc) {
		e := newEnv(t, start)
		full := catalogtest.Job{ID: "job-full"}
		e.publish(full.Run()...)
		hub := bus.NewHubPublisher(e.js, e.log)
		for _, ev := range []schemas.Event{full.Verified(time.Hour, schemas.VerifyOK), full.Verified(2*time.Hour, schemas.VerifyFailed)} {
			if _, err := hub.PublishEvent(testCtx(t), ev); err != nil {
				t.Fatalf("hub publishes %s: %v", ev.EventHeader().ID, err)
			}
		}
		// An agent cannot publish it.
		agent, err := bus.NewAgentPublisher(e.js, "node1", e.log)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := agent.PublishEvent(testCtx(t), full.Verified(3*time.Hour, schemas.VerifyOK)); !errors.Is(err, bus.ErrInvalidEvent) {
			t.Errorf("agent publisher sent backup.verified: %v", err)
		}
		r := e.start(Options{})
		j := e.waitJob(full.ID, backup.StatusCompleted)
		for j.Verification == nil || j.Verification.Status != schemas.VerifyFailed {
			time.Sleep(20 * time.Millisecond)
			if j, err = e.cat.Job(full.ID); err != nil {
				t.Fatal(err)
			}
		}
		e.waitIdle()
		r.stop(t)
		head, err := e.cat.ChainHead(catalogtest.VM(0).UUID, catalogtest.Disk(0, 0).Key, schemas.DefaultRepository)
		if err != nil || head.Verified != schemas.VerifyFailed {
			t.Errorf("chain head %+v, %v: want verified failed", head, err)
		}
		live := e.dump()
		if len(live.Poison) != 0 {
			t.Errorf("poison: %+v", live.Poison)
		}
		cat := openCatalog(t, filepath.Join(t.TempDir(), "replay.db"), e.log)
		if _, err := Replay(testCtx(t), e.js, cat, e.log); err != nil {
			t.Fatal(err)
		}
		got, err := cat.Dump()
		if err != nil {
			t.Fatal(err)
		}
		requireEqual(t, live, got)
	})
}
