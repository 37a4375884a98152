package main

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

// `sendense catalog` against a separate nats-server process, with the
// client commands (jobs, job, chain, catalog poison/stats) and
// `catalog rebuild`: the rebuilt catalog answers exactly as the live one.
func TestCatalogExternalNATS(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	// What an operator of an external NATS does: make the credentials, and
	// configure the server with the block sendense prints.
	mustCLI(t, "creds", "init", "--data", data, "--agent", catalogtest.Agent)
	url := bustest.ExternalWithConfig(t, mustCLI(t, "creds", "server-config", "--data", data))
	admin := connectTest(t, url, data)
	adminJS, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(context.Background(), adminJS, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	run := []string{"catalog", "--nats-url", url, "--data", data, "--log-format", "json", "--catalog-ack-wait", "2s"}
	p := startProc(t, run...)
	waitCatalog(t, admin, p)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	agentJS, err := jetstream.New(connectAs(t, url, data, bus.AgentIdentity(catalogtest.Agent)))
	if err != nil {
		t.Fatal(err)
	}
	pub := catalogtest.Publisher(agentJS, testLog(t))
	evs := catalogtest.Mixed("ext", 40, 5)
	if err := catalogtest.PublishParallel(ctx, pub, 8, evs...); err != nil {
		t.Fatal(err)
	}
	poisonSubject := bus.AgentSubject(schemas.NameStarted, catalogtest.Agent)
	ack, err := agentJS.PublishMsg(ctx, &nats.Msg{Subject: poisonSubject, Data: []byte(`{"job_id":`)})
	if err != nil {
		t.Fatal(err)
	}
	srvConn := admin
	ref := referenceCatalog(t, evs...)
	want, _ := ref.Jobs(backup.JobFilter{})
	waitJobs(t, want, "--nats-url", url, "--data", data)

	t.Run("Jobs", func(t *testing.T) {
		out := mustCLI(t, "jobs", "--vm", "vm-01", "--status", "completed", "--nats-url", url, "--data", data)
		wantJobs, _ := ref.Jobs(backup.JobFilter{VM: "vm-01", Status: backup.StatusCompleted})
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(wantJobs) == 0 || len(lines) != len(wantJobs)+1 || !strings.HasPrefix(lines[0], "JOB ") {
			t.Fatalf("jobs table for %d jobs:\n%s", len(wantJobs), out)
		}
		for i, j := range wantJobs {
			if f := strings.Fields(lines[i+1]); f[0] != j.ID || f[1] != "vm-01" || f[2] != "completed" {
				t.Errorf("row %d = %q, want job %s of vm-01 completed", i+1, lines[i+1], j.ID)
			}
		}
		if _, err := cli(t, "jobs", "--status", "lost", "--nats-url", url, "--data", data); err == nil ||
			!strings.Contains(err.Error(), `--status "lost": want one of queued, running, completed, failed, rejected, pruned`) {
			t.Errorf("jobs --status lost: %v, want an error naming the statuses", err)
		}
	})
	t.Run("Job", func(t *testing.T) {
		wantJobs, _ := ref.Jobs(backup.JobFilter{Status: backup.StatusCompleted, Limit: 1})
		j := wantJobs[0]
		out := mustCLI(t, "job", j.ID, "--nats-url", url, "--data", data)
		for _, d := range j.Disks {
			if !strings.Contains(out, d.ChangeID) || !strings.Contains(out, d.Target) {
				t.Errorf("job %s output lacks disk %d's change id or target:\n%s", j.ID, d.Disk.Key, out)
			}
		}
		_, err := cli(t, "job", "no-such-job", "--nats-url", url, "--data", data)
		if exitCode(err) != 1 || !strings.Contains(err.Error(), "job no-such-job: not found") {
			t.Errorf("job no-such-job: %v, want exit 1 and 'not found'", err)
		}
	})
	t.Run("Chain", func(t *testing.T) {
		vm := catalogtest.VM(2) // three disks
		wantChains, _ := ref.Chains(vm.UUID, "")
		for _, arg := range []string{vm.Name, vm.UUID, vm.Moref} {
			var got []backup.Chain
			if err := json.Unmarshal([]byte(mustCLI(t, "chain", "--vm", arg, "--json", "--nats-url", url, "--data", data)), &got); err != nil {
				t.Fatal(err)
			}
			if len(wantChains) != 3 || jsonOf(t, got) != jsonOf(t, wantChains) {
				t.Errorf("chain --vm %s: %s", arg, firstDiff(jsonOf(t, got), jsonOf(t, wantChains)))
			}
		}
		if _, err := cli(t, "chain", "--vm", vm.Name, "--disk", "9999", "--nats-url", url, "--data", data); exitCode(err) != 1 ||
			!strings.Contains(err.Error(), "has no backup of disk 9999 (disks with backups: 2000, 2001, 2002)") {
			t.Errorf("chain --disk 9999: %v, want exit 1 naming the disks that have backups", err)
		}
		out := mustCLI(t, "chain", "--vm", vm.Name, "--disk", "2001", "--nats-url", url, "--data", data)
		disk := wantChains[1]
		if disk.DiskKey != 2001 || strings.Count(out, "\n") != len(disk.Links)+1 || !strings.Contains(out, disk.Links[len(disk.Links)-1].ChangeID) {
			t.Errorf("chain --disk 2001 (%d links):\n%s", len(disk.Links), out)
		}
		if _, err := cli(t, "chain", "--vm", "no-such-vm", "--nats-url", url, "--data", data); err == nil {
			t.Error("chain of an unknown vm succeeded")
		}
	})
	t.Run("PoisonAndStats", func(t *testing.T) {
		var recs []backup.PoisonRecord
		if err := json.Unmarshal([]byte(mustCLI(t, "catalog", "poison", "--json", "--nats-url", url, "--data", data)), &recs); err != nil {
			t.Fatal(err)
		}
		if len(recs) != 1 || recs[0].Seq != ack.Sequence || recs[0].Subject != poisonSubject || !strings.Contains(recs[0].Reason, "invalid json") {
			t.Errorf("poison records %+v, want the malformed message at seq %d", recs, ack.Sequence)
		}
		if out := mustCLI(t, "catalog", "poison", "--nats-url", url, "--data", data); !strings.Contains(out, "invalid json") {
			t.Errorf("catalog poison table:\n%s", out)
		}
		out := mustCLI(t, "catalog", "stats", "--nats-url", url, "--data", data)
		if !strings.Contains(out, "poison records  1") || !strings.Contains(out, "layout version  4") {
			t.Errorf("catalog stats:\n%s", out)
		}
	})

	t.Run("Rebuild", func(t *testing.T) {
		live := dumpVia(t, srvConn)
		if _, err := cli(t, "catalog", "rebuild", "--nats-url", url, "--data", data); err == nil || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("rebuild while the catalog runs: %v, want 'in use'", err)
		}
		if code := p.stop(t); code != 0 {
			t.Fatalf("catalog exited with %d after SIGTERM", code)
		}
		var st catalog.RebuildStats
		if err := json.Unmarshal([]byte(mustCLI(t, "catalog", "rebuild", "--nats-url", url, "--data", data, "--json")), &st); err != nil {
			t.Fatal(err)
		}
		if st.Messages != len(evs)+1 || st.Poison != 1 || st.Jobs != len(want) || st.Backup == "" {
			t.Errorf("rebuild: %+v; want %d messages, 1 poison, %d jobs, a backup", st, len(evs)+1, len(want))
		}
		p2 := startProc(t, run...)
		waitCatalog(t, srvConn, p2)
		waitJobs(t, want, "--nats-url", url, "--data", data)
		if got := dumpVia(t, srvConn); got != live {
			t.Errorf("after rebuild: %s", firstDiff(got, live))
		}
		if code := p2.stop(t); code != 0 {
			t.Errorf("catalog exited with %d after SIGTERM", code)
		}
	})
}

// dumpVia is what the service answers about everything: all jobs, every
// chain of their VMs, the poison records (times cleared) and the counts,
// as JSON.
func dumpVia(t *testing.T, nc *nats.Conn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := catalog.NewClient(nc)
	jobs, err := cl.Jobs(ctx, backup.JobFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var vms []string
	for _, j := range jobs {
		if j.VM.UUID != "" && !slices.Contains(vms, j.VM.UUID) {
			vms = append(vms, j.VM.UUID)
		}
	}
	slices.Sort(vms)
	var chains []backup.Chain
	for _, vm := range vms {
		c, err := cl.Chains(ctx, vm, "")
		if err != nil {
			t.Fatal(err)
		}
		chains = append(chains, c...)
	}
	poison, err := cl.Poison(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range poison {
		poison[i].Time = time.Time{}
	}
	st, err := cl.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.FileBytes = 0
	return jsonOf(t, map[string]any{"jobs": jobs, "chains": chains, "poison": poison, "stats": st})
}
