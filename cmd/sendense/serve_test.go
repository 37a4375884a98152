package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// `sendense serve` with its embedded server is killed (SIGKILL: server and
// catalog die together) right after events were published and stored, and
// restarted on the same --data; more events follow. The catalog, asked
// through the CLI, then holds exactly every published event once: nothing
// the stream acknowledged is lost, nothing is applied twice. Then serve
// stops cleanly on SIGTERM.
func TestServeKillRestart(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	serve := []string{"serve", "--data", data, "--nats-listen", fmt.Sprintf("127.0.0.1:%d", port), "--api-listen", "none",
		"--log-format", "json", "--log-level", "debug", "--catalog-ack-wait", "2s"}

	p1 := startProc(t, serve...)
	nc := connectTest(t, url, data)
	waitCatalog(t, nc, p1)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	pub := catalogtest.Publisher(js, testLog(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Publish from 8 goroutines and kill serve when half the events were
	// acknowledged by the stream: the catalog is mid-stream, and the
	// publishes in flight fail over to the restarted server (the
	// Publisher retries with the same message id).
	before := catalogtest.Mixed("before", 80, 21)
	var acked atomic.Int64
	published := make(chan error, 1)
	go func() {
		var g errgroup.Group
		work := make(chan schemas.Event)
		for range 8 {
			g.Go(func() error {
				for ev := range work {
					if _, err := pub.PublishEvent(ctx, ev); err != nil {
						return err
					}
					acked.Add(1)
				}
				return nil
			})
		}
		for _, ev := range before {
			work <- ev
		}
		close(work)
		published <- g.Wait()
	}()
	for acked.Load() < int64(len(before)/2) {
		time.Sleep(time.Millisecond)
	}
	p1.kill()
	t.Logf("serve killed after %d of %d events were stored; it had committed %d batches",
		acked.Load(), len(before), strings.Count(p1.out.String(), "catalog batch committed"))

	p2 := startProc(t, serve...)
	if err := <-published; err != nil {
		t.Fatalf("publish across the restart: %v", err)
	}
	waitCatalog(t, nc, p2) // nc reconnected to the restarted server
	after := catalogtest.Mixed("after", 40, 22)
	if err := catalogtest.PublishParallel(ctx, pub, 8, after...); err != nil {
		t.Fatal(err)
	}

	all := slices.Concat(before, after)
	ref := referenceCatalog(t, all...)
	want, err := ref.Jobs(backup.JobFilter{})
	if err != nil {
		t.Fatal(err)
	}
	waitJobs(t, want, "--nats-url", url, "--data", data)

	// One job in full through `job ID --json`.
	var got backup.Job
	if err := json.Unmarshal([]byte(mustCLI(t, "job", "before-0003", "--json", "--nats-url", url, "--data", data)), &got); err != nil {
		t.Fatal(err)
	}
	wantJob, _ := ref.Job("before-0003")
	if jsonOf(t, got) != jsonOf(t, wantJob) {
		t.Errorf("job before-0003: %s", firstDiff(jsonOf(t, got), jsonOf(t, wantJob)))
	}
	// Every event id once, none more.
	var st backup.Stats
	if err := json.Unmarshal([]byte(mustCLI(t, "catalog", "stats", "--json", "--nats-url", url, "--data", data)), &st); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, ev := range all {
		ids[ev.EventHeader().ID] = true
	}
	if st.Applied != len(ids) || st.Poison != 0 {
		t.Errorf("catalog stats: %d applied, %d poison; want %d applied (each published event once), 0 poison", st.Applied, st.Poison, len(ids))
	}

	if code := p2.stop(t); code != 0 {
		t.Errorf("serve exited with %d after SIGTERM, want 0", code)
	}
	out := p2.out.String()
	for _, want := range []string{`"role":"catalog","time"`, `"message":"role stopped"`, `"message":"embedded nats server stopped"`} {
		if !strings.Contains(out, want) {
			t.Errorf("serve log lacks %s", want)
		}
	}
}

// TestServeStopsMidBackup: SIGTERM while a backup copies stops serve
// within 10 s, with exit code 0, leaving no qemu-nbd or nbdkit behind; the
// interrupted job is retryable (agent_shutdown), and the next serve on the
// same --data completes it.
func TestServeStopsMidBackup(t *testing.T) {
	t.Parallel()
	s := startServe(t, "sample")
	s.must(t, "backup", "--vm", "pgtest1", "--job-id", "long-1", "--type", "full")
	s.awaitJob(t, "long-1", time.Minute, func(j backup.Job) bool { return j.Status == backup.StatusRunning && len(j.Disks) > 0 })
	began := time.Now()
	code := s.p.stop(t)
	took := time.Since(began)
	t.Logf("serve stopped %v after SIGTERM, mid-copy", took.Round(time.Millisecond))
	if code != 0 || took > 10*time.Second {
		t.Errorf("serve exited with %d after %v, want 0 within 10s", code, took)
	}
	if out, _ := exec.Command("pgrep", "-f", s.data).Output(); len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("processes left on %s: %s", s.data, out)
	}

	s.start(t)
	if j := s.awaitJob(t, "long-1", 2*time.Minute, backup.Job.Ended); j.Status != backup.StatusCompleted {
		t.Fatalf("job long-1 after restart: %s %+v", j.Status, j.Failure)
	}
	if code := s.p.stop(t); code != 0 {
		t.Errorf("second serve exited with %d", code)
	}
}
