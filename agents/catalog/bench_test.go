package catalog

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

// BenchmarkCatalog measures the catalog consumer against a raw JetStream
// consume-and-ack loop (no decoding, no store) in the same run, on
// embedded servers that sync every write (SyncAlways), with the catalog's
// bbolt syncing every commit:
//
//   - throughput: SENDENSE_BENCH_EVENTS (default 20000) events already in
//     the stream (jobs of two disks: started, two changeids, completed),
//     time until every one is committed and acked. Raw loop and catalog
//     read the same stream with their own durable consumers, in alternating
//     order, SENDENSE_BENCH_ROUNDS times (default 5); the median round is
//     reported, with the process's CPU time per event in each mode (user +
//     system, getrusage): on this 2-core machine every mode is CPU-bound,
//     and CPU per event varies less between runs than events/s. A third loop that only decodes (schemas.Decode) and acks
//     shows what validation alone costs.
//   - latency: events published at a paced 1,000/s for
//     SENDENSE_BENCH_SECONDS (default 5) per round, from the publish call
//     to the commit of the batch holding the event (raw loop: to its ack),
//     each round on fresh servers; percentiles over all rounds' events.
//
// Goals (issue 13 item 12), each printed with MET or MISSED: catalog >=
// 40 % of the raw loop's rate (median rounds), and the catalog's p99 at
// 1,000/s <= the raw loop's p99 + 5 ms (same rounds, same machine).
// The machine's load average and the share of CPU time the hypervisor
// gave to other guests (steal, /proc/stat) are printed: the figures mean
// little on a machine busy with other work. Run it with `make bench-catalog`;
// SENDENSE_BENCH_DEBUG=1 logs every catalog batch to stderr.
func BenchmarkCatalog(b *testing.B) {
	n := testutil.EnvInt("SENDENSE_BENCH_EVENTS", 20000)
	secs := testutil.EnvInt("SENDENSE_BENCH_SECONDS", 5)
	rounds := testutil.EnvInt("SENDENSE_BENCH_ROUNDS", 5)
	b.Logf("load average at start: %s", testutil.LoadAverage())
	steal0 := readCPUStat()
	defer func() {
		b.Logf("load average at end: %s; CPU time stolen by the hypervisor during the run: %s", testutil.LoadAverage(), steal0.stealSince())
	}()
	for range b.N {
		// Latency first, each phase on fresh servers with the disk quiet
		// before it: the dirty pages of a throughput phase would show up as
		// fsync latency in the next one.
		var rawLat, catLat []time.Duration
		for r := range rounds {
			rawLat = append(rawLat, benchLatency(b, secs, modeRaw, r)...)
			catLat = append(catLat, benchLatency(b, secs, modeCatalog, r)...)
		}
		tp, cpu := benchThroughput(b, n, rounds)
		rawRates, catRates, decRates := tp[modeRaw], tp[modeCatalog], tp[modeDecode]

		raw, cat, dec := median(rawRates), median(catRates), median(decRates)
		ratio := 100 * cat / raw
		rl, cl := percentiles(rawLat), percentiles(catLat)
		b.Logf("throughput, %d events in the stream, committed durably (bbolt sync on, server SyncAlways), median of %d rounds:", n, rounds)
		b.Logf("  catalog %8.0f events/s   raw consume+ack %8.0f events/s   ratio %5.1f %%", cat, raw, ratio)
		b.Logf("  rounds: catalog %s   raw %s", rates(catRates), rates(rawRates))
		b.Logf("  for reference, consume + schemas.Decode + ack, no store, one goroutine: %.0f events/s (rounds %s)", dec, rates(decRates))
		rawCPU, catCPU, decCPU := median(cpu[modeRaw]), median(cpu[modeCatalog]), median(cpu[modeDecode])
		b.Logf("  process CPU per event (median): catalog %.1f us, raw %.1f us, decode-only %.1f us; raw/catalog %.1f %%",
			catCPU, rawCPU, decCPU, 100*rawCPU/catCPU)
		b.Logf("publish-to-committed latency at 1000 events/s, %d rounds of %d s (%d events):", rounds, secs, len(catLat))
		b.Logf("  catalog p50 %6.2f ms  p99 %6.2f ms  max %6.2f ms", ms(cl.p50), ms(cl.p99), ms(cl.max))
		b.Logf("  raw     p50 %6.2f ms  p99 %6.2f ms  max %6.2f ms   ratio p50 %.2f, p99 %.2f", ms(rl.p50), ms(rl.p99), ms(rl.max),
			float64(cl.p50)/float64(rl.p50), float64(cl.p99)/float64(rl.p99))
		p99diff := ms(cl.p99) - ms(rl.p99)
		b.Logf("goals:")
		b.Logf("  throughput catalog/raw %5.1f %% (goal >= %.0f %%): %s", ratio, goalRatio, verdict(ratio >= goalRatio))
		b.Logf("  p99 catalog - raw %+6.2f ms (goal <= +%.0f ms): %s", p99diff, goalP99Extra, verdict(p99diff <= goalP99Extra))
		b.ReportMetric(cat, "catalog-events/s")
		b.ReportMetric(raw, "raw-events/s")
		b.ReportMetric(dec, "decode-only-events/s")
		b.ReportMetric(ratio, "ratio-%")
		b.ReportMetric(catCPU, "catalog-cpu-us/event")
		b.ReportMetric(rawCPU, "raw-cpu-us/event")
		b.ReportMetric(ms(cl.p50), "catalog-p50-ms")
		b.ReportMetric(ms(cl.p99), "catalog-p99-ms")
		b.ReportMetric(ms(rl.p50), "raw-p50-ms")
		b.ReportMetric(ms(rl.p99), "raw-p99-ms")
		b.ReportMetric(p99diff, "p99-diff-ms")
	}
}

// The catalog's goals against the raw loop (see BenchmarkCatalog).
const (
	goalRatio    = 40.0 // catalog events/s, % of the raw loop's
	goalP99Extra = 5.0  // ms the catalog's p99 may exceed the raw loop's
)

func verdict(met bool) string {
	if met {
		return "MET"
	}
	return "MISSED"
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func rates(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprintf("%.0f", x))
	}
	return strings.Join(parts, " ")
}

type latencies struct{ p50, p99, max time.Duration }

func percentiles(ds []time.Duration) latencies {
	if len(ds) == 0 {
		return latencies{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	return latencies{p50: q(0.50), p99: q(0.99), max: s[len(s)-1]}
}

func benchLog() zerolog.Logger {
	if os.Getenv("SENDENSE_BENCH_DEBUG") != "" {
		return zerolog.New(os.Stderr).Level(zerolog.DebugLevel)
	}
	return zerolog.Nop()
}

// benchEvents returns n events: jobs of two disks on 50 VMs, each VM a
// chain of a full and incrementals. Job ids start with prefix.
func benchEvents(prefix string, n int) []schemas.Event {
	var evs []schemas.Event
	for _, j := range catalogtest.Chains(prefix, n, 50, 0) { // n jobs are more than n events
		if len(evs) >= n {
			break
		}
		evs = append(evs, j.Run()...)
	}
	return evs[:n]
}

// consumer kinds compared by the benchmark.
type benchMode int

const (
	modeRaw     benchMode = iota // consume and ack, nothing else
	modeDecode                   // consume, schemas.Decode, ack: no store
	modeCatalog                  // Run: decode, store.Apply, ack
)

type benchServer struct {
	srv *bustest.Server
	js  jetstream.JetStream
	pjs jetstream.JetStream // for async publishing
	dir string
}

// newBenchServer starts an embedded server (SyncAlways) with the streams,
// after letting the disk settle.
func newBenchServer(b *testing.B) *benchServer {
	b.Helper()
	syscall.Sync()
	time.Sleep(500 * time.Millisecond)
	s := bustest.Embedded(b)
	if err := bus.EnsureStreams(context.Background(), s.JS, bus.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	pjs, err := jetstream.New(s.Conn, jetstream.WithPublishAsyncMaxPending(512))
	if err != nil {
		b.Fatal(err)
	}
	return &benchServer{srv: s, js: s.JS, pjs: pjs, dir: b.TempDir()}
}

// close shuts the server down now (cleanup would only at the end).
func (s *benchServer) close() { s.srv.Embedded.Shutdown() }

// publishAsync stores evs with their ids as message ids without waiting
// for each ack; before, if not nil, is called just before each publish.
func (s *benchServer) publishAsync(b *testing.B, evs []schemas.Event, before func(i int)) {
	b.Helper()
	for i, ev := range evs {
		data, err := schemas.Marshal(ev)
		if err != nil {
			b.Fatal(err)
		}
		if before != nil {
			before(i)
		}
		// As an agent publishes: on backup.<type>.<agent>, the subjects
		// BACKUP_EVENTS stores (a bare backup.<type> is stored nowhere).
		if _, err := s.pjs.PublishMsgAsync(&nats.Msg{Subject: bus.AgentSubject(schemas.NameOf(ev), "bench"), Data: data},
			jetstream.WithMsgID(ev.EventHeader().ID), jetstream.WithStallWait(time.Minute)); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-s.pjs.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		b.Fatal("async publishes not acknowledged in 5 min")
	}
}

// consume starts the catalog (Run with durable name durable on a fresh
// catalog file) or the raw loop (its own durable of the same
// configuration, acking every message, after decoding it in modeDecode),
// reporting committed (raw: acked) event ids to onDone; stop ends it.
func (s *benchServer) consume(b *testing.B, mode benchMode, durable string, onDone func(ids []string)) (stop func()) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	if mode == modeCatalog {
		cat, err := store.Open(filepath.Join(s.dir, durable+".db"), nil)
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			errc <- Run(ctx, s.js, cat, Options{Durable: durable, OnCommit: onDone, Log: benchLog()})
			_ = cat.Close()
		}()
	} else {
		cons, err := s.js.CreateOrUpdateConsumer(ctx, bus.StreamEvents, bus.CatalogConsumerConfig(durable))
		if err != nil {
			b.Fatal(err)
		}
		cc, err := cons.Consume(func(m jetstream.Msg) {
			if mode == modeDecode {
				if _, err := schemas.Decode(m.Subject(), m.Data()); err != nil {
					b.Errorf("decode: %v", err)
				}
			}
			_ = m.Ack()
			onDone([]string{m.Headers().Get(nats.MsgIdHdr)})
		}, jetstream.PullMaxMessages(2*DefaultMaxBatch))
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			<-ctx.Done()
			cc.Stop()
			<-cc.Closed()
			errc <- nil
		}()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				b.Errorf("consumer: %v", err)
			}
		})
	}
}

// benchThroughput fills one stream with n events, then, rounds times,
// times how long the raw loop, the decode-only loop and the catalog (each
// with a new durable consumer, in rotating order) take to finish all of
// them. It returns events/s and process CPU microseconds per event, per
// mode and round.
func benchThroughput(b *testing.B, n, rounds int) (rates, cpu map[benchMode][]float64) {
	b.Helper()
	s := newBenchServer(b)
	defer s.close()
	s.publishAsync(b, benchEvents("tp", n), nil)
	one := func(mode benchMode, durable string) (rate, cpuPerEvent float64) {
		syscall.Sync()
		time.Sleep(500 * time.Millisecond)
		var done atomic.Int64
		finished := make(chan struct{})
		cpu0 := processCPU()
		start := time.Now()
		stop := s.consume(b, mode, durable, func(ids []string) {
			if done.Add(int64(len(ids))) == int64(n) {
				close(finished)
			}
		})
		defer func() {
			// Each round starts with the same server state: a durable
			// consumer left behind keeps its goroutines and files.
			stop()
			if err := s.js.DeleteConsumer(context.Background(), bus.StreamEvents, durable); err != nil {
				b.Errorf("delete consumer %s: %v", durable, err)
			}
		}()
		select {
		case <-finished:
		case <-time.After(10 * time.Minute):
			b.Fatalf("%s: only %d of %d events done in 10 min", durable, done.Load(), n)
		}
		el, used := time.Since(start), processCPU()-cpu0
		return float64(n) / el.Seconds(), float64(used.Microseconds()) / float64(n)
	}
	rates, cpu = map[benchMode][]float64{}, map[benchMode][]float64{}
	modes := []benchMode{modeRaw, modeCatalog, modeDecode}
	for r := range rounds {
		for k := range modes {
			m := modes[(k+r)%len(modes)]
			rate, c := one(m, fmt.Sprintf("bench-%d-%d", m, r))
			rates[m] = append(rates[m], rate)
			cpu[m] = append(cpu[m], c)
		}
	}
	return rates, cpu
}

// processCPU is the user and system CPU time this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuStat is the machine's CPU time in /proc/stat ticks: all of it, and
// the part stolen by the hypervisor for other guests.
type cpuStat struct{ total, steal uint64 }

func readCPUStat() cpuStat {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuStat{}
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var st cpuStat
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		if i < 8 {
			st.total += n
		}
		if i == 7 {
			st.steal = n
		}
	}
	return st
}

// stealSince is the stolen share of the machine's CPU time since s.
func (s cpuStat) stealSince() string {
	now := readCPUStat()
	if now.total <= s.total {
		return "unknown"
	}
	return fmt.Sprintf("%.1f %%", 100*float64(now.steal-s.steal)/float64(now.total-s.total))
}

// benchLatency publishes at a paced 1000 events/s for secs seconds to a
// fresh server and returns, per event, the time from the publish call to
// its commit (raw loop: its ack).
func benchLatency(b *testing.B, secs int, mode benchMode, round int) []time.Duration {
	b.Helper()
	s := newBenchServer(b)
	defer s.close()
	n := secs * 1000
	evs := benchEvents(fmt.Sprintf("lat%d", round), n)
	sent := make(map[string]time.Time, n)
	got := make(map[string]time.Duration, n)
	var mu sync.Mutex
	stop := s.consume(b, mode, "bench-latency", func(ids []string) {
		now := time.Now()
		mu.Lock()
		for _, id := range ids {
			if t, ok := sent[id]; ok {
				if _, dup := got[id]; !dup {
					got[id] = now.Sub(t)
				}
			}
		}
		mu.Unlock()
	})
	defer stop()
	time.Sleep(300 * time.Millisecond) // the consumer is up and waiting

	start := time.Now()
	s.publishAsync(b, evs, func(i int) {
		if d := time.Until(start.Add(time.Duration(i) * time.Millisecond)); d > 0 {
			time.Sleep(d)
		}
		mu.Lock()
		sent[evs[i].EventHeader().ID] = time.Now()
		mu.Unlock()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		k := len(got)
		mu.Unlock()
		if k == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	if len(got) < n {
		b.Errorf("latency round %d: %d of %d events committed", round, len(got), n)
	}
	ds := make([]time.Duration, 0, len(got))
	for _, d := range got {
		ds = append(ds, d)
	}
	return ds
}
