package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/catalog"
	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/agents/simctl"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

// Scale benchmarks (make bench-scale). They print tables to stdout; they
// time nothing a test asserts.

// BenchmarkScale runs the deployment as separate processes of the built
// binary, as TestVCenterSimRemoteAgent does: `serve` (embedded NATS, hub,
// catalog; no agent), `vcenter-sim` with a scale inventory (default 100
// VMs × 2 disks of 256 MiB holding 16 MiB each:
// SENDENSE_BENCH_SCALE_INVENTORY), and two `agent` processes reading the
// disks over https (/folder through nbdkit curl) with --max-jobs
// SENDENSE_BENCH_MAX_JOBS (default 2). It requests a backup of every VM
// at once and prints, once the catalog shows them all completed:
//
//   - the wall time (first request to last completion, from the catalog's
//     records) against the ideal: the sum of the jobs' copy times divided
//     by the parallelism, agents × --max-jobs. A job's copy time is the
//     wall time of its copy phase (its disks in parallel, from opening the
//     sources to the last change id), from the agent's "backup completed"
//     log line (copy_ms). Goal ≤ 1.3× ideal;
//   - p50/p99 of request→started and started→completed (catalog records);
//   - the agent's own time per job: job_ms (request fetched to the catalog
//     showing the job completed) minus vcenter_ms (the SDK calls) minus
//     copy_ms, from the same log line, with each part. Goal ≤ 100 ms;
//   - each agent process's peak RSS (VmHWM; its nbdkit children not
//     included), and the other processes' for reference.
//
// SENDENSE_BENCH_DUMP=DIR writes the processes' logs there.
func BenchmarkScale(b *testing.B) {
	for _, tool := range []string{"qemu-img", "qemu-nbd", "nbdkit"} {
		testutil.RequireTool(b, tool)
	}
	inventory := envString("SENDENSE_BENCH_SCALE_INVENTORY", "scale:vms=100,disks=2,size=256MiB,fill=16MiB")
	maxJobs := testutil.EnvInt("SENDENSE_BENCH_MAX_JOBS", 2)
	agents := []string{"scale1", "scale2"}
	for range b.N {
		benchScale(b, inventory, agents, maxJobs)
	}
}

func benchScale(b *testing.B, inventory string, agentNames []string, maxJobs int) {
	out := os.Stdout
	fmt.Fprintf(out, "\n== scale: %s, %d agents × --max-jobs %d, https transport; load average %s\n",
		inventory, len(agentNames), maxJobs, testutil.LoadAverage())
	data := b.TempDir()
	mustCLI(b, append([]string{"creds", "init", "--data", data}, agentSeedFlags(agentNames)...)...)
	port := freePort(b)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	serve := startProc(b, "serve", "--data", data, "--nats-listen", fmt.Sprintf("127.0.0.1:%d", port), "--api-listen", "none", "--log-format", "json")
	nc := connectTest(b, url, data)
	waitCatalog(b, nc, serve)

	simData := copySeed(b, data, bus.Identity{Role: bus.RoleTestbed})
	made := time.Now()
	sim := startProc(b, "vcenter-sim", "--data", simData, "--nats-url", url, "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(b)),
		"--inventory", inventory, "--log-format", "json")
	ready := simReadyWithin(b, sim, 10*time.Minute)
	fmt.Fprintf(out, "simulated vCenter ready in %s\n", time.Since(made).Round(time.Millisecond))

	var agents []*proc
	for _, name := range agentNames {
		p := startProc(b, "agent", "--data", copySeed(b, data, bus.AgentIdentity(name)), "--nats-url", url, "--agent-id", name,
			"--log-format", "json", "--max-jobs", strconv.Itoa(maxJobs),
			"--vcenter-url", ready["sdk_url"], "--vcenter-user", ready["user"], "--vcenter-password-file", ready["password_file"],
			"--vcenter-ca", ready["ca_file"], "--transport", "https")
		agents = append(agents, p)
	}
	for _, p := range agents {
		waitOutput(b, p, "agent taking requests")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	vms, err := simctl.NewClient(nc).VMs(ctx)
	if err != nil {
		b.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	pub := bus.NewPublisher(js, "bench-scale", zerolog.Nop())
	// Every request at once: one goroutine each.
	var wg sync.WaitGroup
	errs := make(chan error, len(vms))
	for _, vm := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := pub.PublishRequest(ctx, schemas.Request{VM: vm.Name, JobID: "bench-" + vm.Name, RequestedBy: "bench-scale"}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}

	// Status-filtered lists read only the catalog's records (no queue).
	cl := catalog.NewClient(nc)
	var done []backup.Job
	for {
		done = done[:0]
		for _, st := range []string{backup.StatusCompleted, backup.StatusFailed, backup.StatusRejected} {
			jobs, err := cl.Jobs(ctx, backup.JobFilter{Status: st, IDPrefix: "bench-"})
			if err != nil {
				b.Fatal(err)
			}
			done = append(done, jobs...)
		}
		if len(done) == len(vms) {
			break
		}
		if ctx.Err() != nil {
			b.Fatalf("%d of %d jobs ended before the timeout", len(done), len(vms))
		}
		for _, p := range append([]*proc{serve, sim}, agents...) {
			if p.exited() {
				b.Fatalf("sendense %s exited: %v\n%s", p.name, p.state, p.out.String())
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	rss := map[string]int64{}
	for _, p := range append([]*proc{serve, sim}, agents...) {
		rss[p.name+" "+procLabel(p)] = testutil.PeakRSS(b, p.cmd.Process.Pid)
	}

	first, last := done[0].CreatedAt, done[0].FinishedAt
	var queued, running []time.Duration
	failed := 0
	for _, j := range done {
		if j.Status != backup.StatusCompleted {
			failed++
			fmt.Fprintf(out, "job %s %s: %+v\n", j.ID, j.Status, j.Failure)
			continue
		}
		if j.CreatedAt.Before(first) {
			first = j.CreatedAt
		}
		if j.FinishedAt.After(last) {
			last = j.FinishedAt
		}
		queued = append(queued, j.StartedAt.Sub(j.CreatedAt))
		running = append(running, j.FinishedAt.Sub(j.StartedAt))
	}
	timings := map[string]jobTiming{}
	for _, p := range agents {
		for id, t := range completedTimings(b, p.out.String()) {
			timings[id] = t
		}
	}
	var copySum, copierSum time.Duration
	var own, vc, cp, cr, hb, ct, cw, rest, whole []time.Duration
	for _, t := range timings {
		copySum += t.copy
		copierSum += t.copier
		cr = append(cr, t.copier)
		own = append(own, t.job-t.vcenter-t.copy)
		rest = append(rest, t.job-t.vcenter-t.copy-t.hub-t.catalog-t.catalogWait)
		vc, cp, cw, whole = append(vc, t.vcenter), append(cp, t.copy), append(cw, t.catalogWait), append(whole, t.job)
		hb, ct = append(hb, t.hub), append(ct, t.catalog)
	}
	wall := last.Sub(first)
	par := len(agentNames) * maxJobs
	ideal := copySum / time.Duration(par)

	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(out, "%d jobs requested at once: %d completed, %d not; %d with timings in the agents' logs\n", len(vms), len(done)-failed, failed, len(timings))
	fmt.Fprintf(tw, "wall\tideal\tratio\tgoal\t\n")
	fmt.Fprintf(tw, "%s\t%s\t%.2fx ideal\t≤ 1.30x: %s\t\n", wall.Round(time.Millisecond), ideal.Round(time.Millisecond),
		wall.Seconds()/ideal.Seconds(), verdict(wall.Seconds() <= 1.3*ideal.Seconds()))
	tw.Flush()
	fmt.Fprintf(out, "ideal = sum of the jobs' copy times (%s) / parallelism %d (%d agents × --max-jobs %d); a job's copy\n",
		copySum.Round(time.Millisecond), par, len(agentNames), maxJobs)
	fmt.Fprintf(out, "time is its copy phase: its disks at once, from opening their sources (nbdkit curl) to the last change id.\n")
	copierIdeal := copierSum / time.Duration(par)
	fmt.Fprintf(out, "with the copier's own time instead (longest disk's copier.Copy per job, %s): ideal %s, %.2fx ideal\n",
		copierSum.Round(time.Millisecond), copierIdeal.Round(time.Millisecond), wall.Seconds()/copierIdeal.Seconds())
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "per job\tp50\tp99\tmax\t\n")
	row := func(name string, ds []time.Duration) {
		p := quantiles(ds)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", name, p.p50, p.p99, p.max)
	}
	row("request → started", queued)
	row("started → completed", running)
	row("agent: fetched → catalog shows it (job_ms)", whole)
	row("  vCenter SDK calls (vcenter_ms)", vc)
	row("  copy phase (copy_ms)", cp)
	row("    of it: the copier, longest disk (copier_ms)", cr)
	row("  agent's own: job − vcenter − copy", own)
	row("    of it: hub calls, targets (hub_ms)", hb)
	row("    of it: catalog lookups (catalog_ms)", ct)
	row("    of it: waiting for the catalog to show it (catalog_wait_ms)", cw)
	row("    of it: the rest (events, lease, fetch, ack)", rest)
	tw.Flush()
	p := quantiles(own)
	fmt.Fprintf(out, "agent's own time per job: p50 %s, p99 %s (goal ≤ 100 ms: %s)\n", p.p50, p.p99, verdict(p.p99 <= 100*time.Millisecond))
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "process\tpeak RSS (VmHWM)\t\n")
	names := make([]string, 0, len(rss))
	for n := range rss {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(tw, "%s\t%.1f MiB\t\n", n, float64(rss[n])/(1<<20))
	}
	tw.Flush()
	fmt.Fprintf(out, "load average at end: %s\n", testutil.LoadAverage())
	b.ReportMetric(wall.Seconds()/ideal.Seconds(), "x-ideal")
	b.ReportMetric(float64(p.p99)/float64(time.Millisecond), "agent-own-p99-ms")

	dumpLogs(b, append([]*proc{serve, sim}, agents...)...)
	for _, p := range append(agents, sim, serve) {
		if code := p.stop(b); code != 0 {
			b.Errorf("sendense %s exited with %d after SIGTERM", p.name, code)
		}
	}
}

// dumpLogs writes the processes' output into SENDENSE_BENCH_DUMP, if set.
func dumpLogs(tb testing.TB, procs ...*proc) {
	dir := os.Getenv("SENDENSE_BENCH_DUMP")
	if dir == "" {
		return
	}
	for _, p := range procs {
		name := strings.ReplaceAll(strings.TrimSpace(p.name+" "+procLabel(p)), " ", "-")
		if err := os.WriteFile(filepath.Join(dir, name+".log"), []byte(p.out.String()), 0o644); err != nil {
			tb.Error(err)
		}
	}
}

func agentSeedFlags(names []string) []string {
	var out []string
	for _, n := range names {
		out = append(out, "--agent", n)
	}
	return out
}

// procLabel names an agent process by its --agent-id, others by nothing.
func procLabel(p *proc) string {
	if i := slices.Index(p.cmd.Args, "--agent-id"); i > 0 && i+1 < len(p.cmd.Args) {
		return p.cmd.Args[i+1]
	}
	return ""
}

// jobTiming is what an agent's "backup completed" line says of a job.
type jobTiming struct {
	job, vcenter, copy, hub, catalog, catalogWait time.Duration
	copier                                        time.Duration // the longest of its disks' copier.Copy
}

// completedTimings reads the "backup completed" lines of an agent's JSON
// log, by job id, with the longest copier_ms of the job's "change id
// stored" lines (its disks are copied at once).
func completedTimings(tb testing.TB, log string) map[string]jobTiming {
	tb.Helper()
	out := map[string]jobTiming{}
	copier := map[string]time.Duration{}
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if bytes.Contains(line, []byte(`"change id stored"`)) {
			var l struct {
				JobID  string  `json:"job_id"`
				Copier float64 `json:"copier_ms"`
			}
			if json.Unmarshal(line, &l) == nil {
				copier[l.JobID] = max(copier[l.JobID], msDur(l.Copier))
			}
			continue
		}
		if !bytes.Contains(line, []byte(`"backup completed"`)) {
			continue
		}
		var l struct {
			Message     string  `json:"message"`
			JobID       string  `json:"job_id"`
			Job         float64 `json:"job_ms"`
			VCenter     float64 `json:"vcenter_ms"`
			Copy        float64 `json:"copy_ms"`
			Hub         float64 `json:"hub_ms"`
			Catalog     float64 `json:"catalog_ms"`
			CatalogWait float64 `json:"catalog_wait_ms"`
		}
		if err := json.Unmarshal(line, &l); err != nil || l.Message != "backup completed" {
			continue
		}
		out[l.JobID] = jobTiming{copier: copier[l.JobID], job: msDur(l.Job), vcenter: msDur(l.VCenter), copy: msDur(l.Copy), hub: msDur(l.Hub), catalog: msDur(l.Catalog), catalogWait: msDur(l.CatalogWait)}
	}
	return out
}

func msDur(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }

// BenchmarkScaleCatalog fills a catalog with SENDENSE_BENCH_CATALOG_JOBS
// (default 100,000) completed jobs of two disks on 1,000 VMs (chains of a
// full and incrementals), written through store.Apply in batches as the
// catalog consumer files them, then starts `serve` on it (embedded NATS,
// hub with its HTTP API, catalog) and prints: `jobs` (the CLI, first
// page; the catalog service and GET /api/v1/backups, first and a deep
// page), `job ID` (CLI and service), the chain-head lookup an agent makes
// for the base of an incremental (service), the bbolt file's size, and
// `catalog rebuild` of SENDENSE_BENCH_REBUILD_EVENTS (default 100,000)
// events published to BACKUP_EVENTS (other jobs, the same shape).
func BenchmarkScaleCatalog(b *testing.B) {
	jobs := testutil.EnvInt("SENDENSE_BENCH_CATALOG_JOBS", 100000)
	rebuildEvents := testutil.EnvInt("SENDENSE_BENCH_REBUILD_EVENTS", 100000)
	for range b.N {
		benchScaleCatalog(b, jobs, rebuildEvents)
	}
}

const benchVMs = 1000

// benchJobEvents returns the events of n completed jobs of two disks,
// ids "<prefix>-<i>", round robin over benchVMs VMs starting at VM
// firstVM, each VM's jobs a chain: a full, then incrementals.
func benchJobEvents(prefix string, n, firstVM int) ([]schemas.Event, []string) {
	evs := make([]schemas.Event, 0, 4*n)
	ids := make([]string, 0, n)
	for _, j := range catalogtest.Chains(prefix, n, benchVMs, firstVM) {
		evs = append(evs, j.Run()...)
		ids = append(ids, j.ID)
	}
	return evs, ids
}

func benchScaleCatalog(b *testing.B, nJobs, rebuildEvents int) {
	out := os.Stdout
	fmt.Fprintf(out, "\n== catalog: %d completed jobs of 2 disks on %d VMs; load average %s\n", nJobs, benchVMs, testutil.LoadAverage())
	data := b.TempDir()
	mustCLI(b, "creds", "init", "--data", data)
	// An external nats-server that does not sync every write, so that the
	// events for the rebuild are stored in seconds; the hub and the
	// catalog run in `serve --nats-url`.
	url := bustest.ExternalWithConfigNoSync(b, mustCLI(b, "creds", "server-config", "--data", data))
	nc := connectTest(b, url, data)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}

	evs, ids := benchJobEvents("cat", nJobs, 0)
	cat, err := store.Open(catalogPath(data), nil)
	if err != nil {
		b.Fatal(err)
	}
	began := time.Now()
	const batch = 1024
	for i := 0; i < len(evs); i += batch {
		chunk := evs[i:min(i+batch, len(evs))]
		src := make([]schemas.Event, len(chunk))
		for k, ev := range chunk {
			payload, err := schemas.Marshal(ev)
			if err != nil {
				b.Fatal(err)
			}
			src[k] = store.WithSource(ev, store.Source{Payload: payload, Agent: catalogtest.Agent, Seq: uint64(i + k + 1)})
		}
		errs, err := cat.Apply(src...)
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range errs {
			if e != nil {
				b.Fatal(e)
			}
		}
	}
	filled := time.Since(began)
	if err := cat.Close(); err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(catalogPath(data))
	if err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(out, "filled through store.Apply (batches of %d, as the consumer files them): %d events in %s (%.0f events/s)\n",
		batch, len(evs), filled.Round(time.Millisecond), float64(len(evs))/filled.Seconds())

	apiPort := freePort(b)
	began = time.Now()
	serve := startProc(b, "serve", "--data", data, "--nats-url", url, "--api-listen", fmt.Sprintf("127.0.0.1:%d", apiPort), "--log-format", "json")
	cl := catalog.NewClient(connectAs(b, url, data, bus.Identity{Role: bus.RoleRequester}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	// Ready when it answers a job lookup (waitCatalog asks for the
	// stats, which read every job).
	for {
		tctx, tcancel := context.WithTimeout(ctx, time.Second)
		_, err := cl.Job(tctx, ids[0])
		tcancel()
		if err == nil {
			break
		}
		if serve.exited() || ctx.Err() != nil {
			b.Fatalf("catalog service of serve not answering: %v (serve exited: %v)", err, serve.exited())
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintf(out, "serve started on it: its catalog service answered %s after the start\n", time.Since(began).Round(time.Millisecond))
	defer dumpLogs(b, serve)
	clientFlags := []string{"--nats-url", url, "--data", data}
	rng := rand.New(rand.NewPCG(1, 2))

	type result struct {
		name string
		q    durations
		note string
	}
	var results []result
	measure := func(name string, n int, note string, f func() error) {
		var ds []time.Duration
		for range n {
			t := time.Now()
			if err := f(); err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			ds = append(ds, time.Since(t))
		}
		results = append(results, result{name, quantiles(ds), note})
	}
	deep := nJobs - 100
	measure("jobs (CLI, first page of 100)", 5, "process start and connect included", func() error {
		_, err := cli(b, append([]string{"jobs"}, clientFlags...)...)
		return err
	})
	measure("jobs (service, first page of 100)", 20, "", func() error {
		js, err := cl.Jobs(ctx, backup.JobFilter{Limit: 100})
		if err == nil && len(js) != 100 {
			err = fmt.Errorf("%d jobs", len(js))
		}
		return err
	})
	measure(fmt.Sprintf("jobs (service, offset %d, 100)", deep), 5, "", func() error {
		js, err := cl.Jobs(ctx, backup.JobFilter{Offset: deep, Limit: 100})
		if err == nil && len(js) != 100 {
			err = fmt.Errorf("%d jobs", len(js))
		}
		return err
	})
	api := fmt.Sprintf("http://127.0.0.1:%d/api/v1/backups", apiPort)
	measure("GET /api/v1/backups (first page of 100)", 10, "", func() error { return httpGet(api + "?limit=100") })
	measure(fmt.Sprintf("GET /api/v1/backups?offset=%d (100)", deep), 5, "", func() error {
		return httpGet(fmt.Sprintf("%s?offset=%d&limit=100", api, deep))
	})
	measure("job ID (CLI)", 5, "process start and connect included", func() error {
		_, err := cli(b, append([]string{"job", ids[rng.IntN(len(ids))]}, clientFlags...)...)
		return err
	})
	measure("job ID (service)", 200, "", func() error {
		_, err := cl.Job(ctx, ids[rng.IntN(len(ids))])
		return err
	})
	measure("catalog stats (service; reads every job)", 3, "", func() error {
		_, err := cl.Stats(ctx)
		return err
	})
	measure("chain head (service, as the agent asks)", 500, "", func() error {
		v, d := rng.IntN(benchVMs), rng.IntN(2)
		_, err := cl.ChainHead(ctx, catalogtest.VM(v).UUID, catalogtest.Disk(v, d).Key, schemas.DefaultRepository)
		return err
	})
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "query (%d jobs)\tn\tp50\tp99\tmax\t\n", nJobs)
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t  %s\n", r.name, r.q.n, r.q.p50, r.q.p99, r.q.max, r.note)
	}
	tw.Flush()
	fmt.Fprintf(out, "bbolt file: %.1f MiB (%d bytes, %.0f bytes per job)\n", float64(fi.Size())/(1<<20), fi.Size(), float64(fi.Size())/float64(nJobs))

	// catalog rebuild: events of other jobs (VMs after the catalog's) in
	// BACKUP_EVENTS, replayed into a fresh catalog in a data dir of its
	// own while serve runs (its catalog applies them live meanwhile).
	rbEvs, _ := benchJobEvents("rb", (rebuildEvents+3)/4, benchVMs)
	rbEvs = rbEvs[:rebuildEvents]
	began = time.Now()
	if err := publishJobs(ctx, catalogtest.Publisher(js, zerolog.Nop()), 32, rbEvs); err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(out, "published %d events to %s in %s\n", len(rbEvs), bus.StreamEvents, time.Since(began).Round(time.Millisecond))
	rbData := copySeed(b, data, bus.Identity{Role: bus.RoleCatalog})
	o, err := cli(b, "catalog", "rebuild", "--json", "--nats-url", url, "--data", rbData)
	if err != nil {
		b.Fatal(err)
	}
	var st catalog.RebuildStats
	if err := json.Unmarshal([]byte(o), &st); err != nil {
		b.Fatalf("catalog rebuild --json: %v\n%s", err, o)
	}
	if st.Messages != len(rbEvs) || st.Poison != 0 {
		b.Fatalf("rebuild: %+v, want %d messages and no poison", st, len(rbEvs))
	}
	fmt.Fprintf(out, "catalog rebuild: %d events (%d jobs) in %s: %s per 100k events (%.0f events/s)\n", st.Messages, st.Jobs,
		st.Took.Round(time.Millisecond), (st.Took * 100000 / time.Duration(st.Messages)).Round(time.Millisecond), float64(st.Messages)/st.Took.Seconds())
	fmt.Fprintf(out, "load average at end: %s\n", testutil.LoadAverage())
	b.ReportMetric(float64(fi.Size())/(1<<20), "catalog-MiB")
	b.ReportMetric(st.Took.Seconds()*100000/float64(st.Messages), "rebuild-s/100k-events")
	if code := serve.stop(b); code != 0 {
		b.Errorf("serve exited with %d after SIGTERM", code)
	}
}

// publishJobs publishes evs (whole jobs, four events each) from workers
// goroutines, each job's events in order by one of them, so the stream
// holds every job's history in order.
func publishJobs(ctx context.Context, p *bus.Publisher, workers int, evs []schemas.Event) error {
	jobs := make(chan []schemas.Event)
	errs := make(chan error, workers)
	for range workers {
		go func() {
			var first error
			for j := range jobs {
				if first == nil {
					first = catalogtest.Publish(ctx, p, j...)
				}
			}
			errs <- first
		}()
	}
	for i := 0; i < len(evs); i += 4 {
		jobs <- evs[i:min(i+4, len(evs))]
	}
	close(jobs)
	var err error
	for range workers {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	return err
}

func httpGet(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// durations are quantiles of a sample, rounded for printing.
type durations struct {
	n             int
	p50, p99, max time.Duration
}

func quantiles(ds []time.Duration) durations {
	if len(ds) == 0 {
		return durations{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	r := func(d time.Duration) time.Duration {
		if d < 10*time.Millisecond {
			return d.Round(10 * time.Microsecond)
		}
		return d.Round(time.Millisecond)
	}
	return durations{n: len(s), p50: r(q(0.5)), p99: r(q(0.99)), max: r(s[len(s)-1])}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "missed"
}

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
