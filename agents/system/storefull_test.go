package system

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/schemas"
)

// TestStoreFull is attack 4: the disk under the NATS store fills up while
// a backup copies. Before, `backup --wait` printed completed for an event
// the stream never stored, the agent cycled through 39 attempts (snapshot,
// remove, repeat) and only a restart recovered. Now the agent stops taking
// requests and reports not ready; no outcome is recorded that the stream
// did not store; once space is back the server restarts JetStream by
// itself, the agent resumes, and the job completes and restores identical.
func TestStoreFull(t *testing.T) {
	t.Parallel()
	h, natsDir, id, st, filler := fillDuringBackup(t)
	_ = natsDir
	time.Sleep(5 * time.Second) // what a spinning agent would use to cycle
	snaps := countLines(h.logs.String(), "snapshot created", id)
	if j, err := h.cat.Job(context.Background(), id); err == nil && j.Status == backup.StatusCompleted {
		t.Fatalf("job %s completed while the stream could not store", id)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	c := h.completed(id)
	t.Logf("job completed %v after the space came back, at attempt %d (started at %d); %d snapshots while full",
		time.Since(freed).Round(time.Millisecond), c.Attempt, st.Attempt, snaps)
	if snaps > 2 {
		t.Errorf("%d snapshots of job %s while the store was full: the agent kept taking the request", snaps, id)
	}
	if h.sys.agent.Ready() != nil {
		t.Errorf("agent still not ready after completing: %v", h.sys.agent.Ready())
	}
	h.waitMetric("sendense_agent_ready", "", 1)
	h.job(id, backup.StatusCompleted)
	h.sameData(h.frozen("bigvm", id, 2000), h.targetPath(c.Disks[0]))
}

// TestStoreFullStop: stopping the system while the NATS store is full
// (the agent cannot publish its failure, leases cannot be written) takes
// less than 10 s; before, SIGTERM took 30 s.
func TestStoreFullStop(t *testing.T) {
	t.Parallel()
	h, _, _, _, _ := fillDuringBackup(t)
	began := time.Now()
	h.sys.Stop()
	took := time.Since(began)
	t.Logf("stopped in %v with the NATS store full", took.Round(time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("stop took %v with the NATS store full, want under 10s", took)
	}
}

// fillDuringBackup starts the pipeline with its NATS store on a small
// tmpfs, completes a first backup, fills the file system while bigvm's
// full backup copies, and waits until the agent says JetStream cannot
// store. It returns the job, its started event and the filler file.
func fillDuringBackup(t *testing.T) (h *harness, natsDir, id string, st *schemas.Started, filler string) {
	t.Helper()
	natsDir = testutil.Tmpfs(t, 96<<20)
	h = startHarness(t, func(c *Config) {
		c.LeaseTTL = 3 * time.Second
		c.NATSStoreDir = natsDir
		c.NATSStoreCheckInterval = 200 * time.Millisecond
		c.NATSStoreMinFree = 8 << 20
		c.AgentConfig.StoreProbeInterval = 300 * time.Millisecond
	})
	h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	if _, err := h.sys.Testbed.WriteRandom("bigvm", 2000, 0.6, 61); err != nil {
		t.Fatal(err)
	}
	id = h.request("bigvm", schemas.TypeFull, "")
	st = h.waitStarted(id)
	filler = testutil.FillFS(t, natsDir, 0)
	full := time.Now()
	// A file system that is full to the byte still takes small appends
	// into the last page of each stream's block: write keys to the lease
	// bucket until that runs out too, as the agent's own renewals would.
	kv, err := h.sys.JS.KeyValue(context.Background(), bus.LeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := kv.Put(ctx, fmt.Sprintf("filler.%d", i), make([]byte, 512))
		cancel()
		if err != nil {
			t.Logf("lease bucket full after %d more keys: %v", i, err)
			break
		}
	}

	// The job cannot record its outcome; the agent stops taking work.
	deadline := time.Now().Add(time.Minute)
	for h.sys.agent.Ready() == nil {
		if time.Now().After(deadline) {
			t.Fatal("agent still ready a minute after the NATS store filled up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("agent not ready %v after the disk filled: %v", time.Since(full).Round(time.Millisecond), h.sys.agent.Ready())
	h.waitMetric("sendense_agent_ready", "", 0)
	return h, natsDir, id, st, filler
}
