package system

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

// onCluster runs the harness's roles against a 3-node JetStream cluster of
// servers that enforce the roles, with every stream and the lease bucket
// replicated three times.
func onCluster(t *testing.T) (func(*Config), *bustest.ClusterServers) {
	t.Helper()
	creds := bus.Creds{Dir: filepath.Join(t.TempDir(), "creds")}
	ids := []bus.Identity{bus.AgentIdentity("test-agent")}
	for _, r := range bus.Roles() {
		ids = append(ids, bus.Identity{Role: r})
	}
	if err := creds.Ensure(ids...); err != nil {
		t.Fatal(err)
	}
	users, err := creds.Users()
	if err != nil {
		t.Fatal(err)
	}
	cl := bustest.SecureCluster(t, 3, users)
	return func(c *Config) {
		c.NATS.URLs, c.CredsDir, c.Replicas = cl.URLs, creds.Dir, 3
	}, cl
}

// TestQuorumLoss is attack 7: the cluster loses its quorum for 20 s while
// a backup copies. Before, the job was reported failed with reason
// agent_shutdown, and one event id went out twice with different bytes.
// Now the job ends completed (after a failed attempt, if any, with reason
// nats_unavailable), every event id stands for one payload, and the backup
// restores identical to its snapshot.
func TestQuorumLoss(t *testing.T) {
	t.Parallel()
	mod, cl := onCluster(t)
	h := startHarness(t, mod)
	h.completed(h.request("pgtest1", schemas.TypeAuto, ""))

	id := h.request("bigvm", schemas.TypeFull, "")
	h.waitStarted(id)
	cl.Stop(1)
	cl.Stop(2)
	lost := time.Now()
	time.Sleep(20 * time.Second)
	cl.Start(t, 1)
	cl.Start(t, 2)
	t.Logf("quorum back after %v", time.Since(lost).Round(time.Millisecond))

	c := h.completed(id)
	h.sameData(h.frozen("bigvm", id, 2000), h.targetPath(c.Disks[0]))
	j := h.job(id, backup.StatusCompleted)
	t.Logf("job %s completed at attempt %d after %d failed attempts", id, c.Attempt, j.FailedAttempts)

	h.mu.Lock()
	defer h.mu.Unlock()
	byID := map[string][]byte{}
	for _, m := range h.all {
		msgID := m.Header.Get(bus.HeaderMsgID)
		if msgID == "" {
			continue
		}
		if prev, ok := byID[msgID]; ok && !bytes.Equal(prev, m.Data) {
			t.Errorf("event id %s went out with two payloads:\n%s\n%s", msgID, prev, m.Data)
		}
		byID[msgID] = m.Data
		if ev, err := schemas.Decode(m.Subject, m.Data); err == nil {
			if f, ok := ev.(*schemas.Failed); ok && f.JobID == id && f.Reason != schemas.FailNATS {
				t.Errorf("attempt %d failed with %s (%s), want %s", f.Attempt, f.Reason, f.Message, schemas.FailNATS)
			}
		}
	}
}
