package system

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/schemas"
)

// hexKey matches a TLS pre-shared key as the hub makes them (256 bits in
// hex); nothing else the pipeline logs or publishes looks like one.
var hexKey = regexp.MustCompile(`[0-9a-f]{64}`)

// manifestDigest is a manifest's SHA-256 where events and logs carry one:
// 64 hex digits too, but public (backup.completed), so the key search
// leaves it out.
var manifestDigest = regexp.MustCompile(`"manifest_sha256":"[0-9a-f]{64}"`)

// keyIn returns a 64-hex-digit string in s other than a manifest digest.
func keyIn(s []byte) string {
	return string(hexKey.Find(manifestDigest.ReplaceAll(s, nil)))
}

// TestRepoOverTLS is the data path across hosts in one process: with
// RepoListen the hub exports every target and restore over TCP with
// TLS-PSK only. The demo's full, incremental and restores of both points
// are identical to what the snapshots froze, the agent wrote over nbds://
// (never a unix socket), and no key shows up in any event on backup.> or
// in any log line.
func TestRepoOverTLS(t *testing.T) {
	t.Parallel()
	h := startHarness(t, func(c *Config) {
		c.RepoListen = "127.0.0.1"
		c.RepoPorts = hub.PortRange{Lo: 20809, Hi: 20909}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	rep, err := RunDemo(ctx, h.sys.NC, DemoOptions{VM: "pgtest1", Dir: t.TempDir()}, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || len(rep.Disks) != 2 {
		t.Errorf("demo over tls failed: %+v", rep)
	}

	// A restore export of our own: its key must not leak either.
	repo := repoapi.NewClient(h.sys.NC)
	last := h.completedEvents()
	if len(last) == 0 {
		t.Fatal("no backup.completed seen")
	}
	c := last[len(last)-1]
	exp, err := repo.OpenRestore(ctx, repoapi.TargetRef{Repository: c.Repository, JobID: c.JobID, VMUUID: c.VM.UUID, DiskKey: c.Disks[0].Disk.Key})
	if err != nil {
		t.Fatal(err)
	}
	if exp.TLS == nil || !strings.HasPrefix(exp.URI, "nbds://127.0.0.1:") {
		t.Errorf("restore export %q key %v, want nbds:// with a key", exp.URI, exp.TLS)
	}
	if err := repo.CloseRestore(ctx, exp.ExportID); err != nil {
		t.Fatal(err)
	}

	logs := h.logs.String()
	opened, overTLS := 0, 0
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `"message":"target opened"`) {
			opened++
			if strings.Contains(l, `"uri":"nbds://127.0.0.1:`) {
				overTLS++
			}
		}
	}
	if opened != 4 || overTLS != opened {
		t.Errorf("%d targets opened, %d of them on nbds://127.0.0.1; want 4, all", opened, overTLS)
	}
	if k := keyIn([]byte(logs)); strings.Contains(logs, exp.TLS.Key) || k != "" {
		t.Errorf("a key is in the logs: %q", k)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range h.all {
		if keyIn(m.Data) != "" || bytes.Contains(m.Data, []byte(exp.TLS.Key)) {
			t.Errorf("a key is in an event on %s: %s", m.Subject, m.Data)
		}
	}
}

// completedEvents returns the backup.completed events seen so far.
func (h *harness) completedEvents() []*schemas.Completed {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*schemas.Completed
	for _, m := range h.all {
		if ev, err := schemas.Decode(m.Subject, m.Data); err == nil {
			if c, ok := ev.(*schemas.Completed); ok {
				out = append(out, c)
			}
		}
	}
	return out
}
