package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// TestMetricsExposition: serve's /metrics (--metrics-listen) exports every
// labelled counter at 0 before its first increment, so rate() and alerts
// on failures work from the start, and passes the linter `promtool check
// metrics` runs.
func TestMetricsExposition(t *testing.T) {
	t.Parallel()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := startServe(t, "small", "--metrics-listen", addr)
	// Every role registers its collectors as it starts: wait until all
	// are ready (the agent last).
	for deadline := time.Now().Add(time.Minute); ; {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if s.p.exited() || time.Now().After(deadline) {
			t.Fatalf("serve not ready after a minute (exited %t): %v", s.p.exited(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	text := string(body)
	for _, series := range []string{
		`sendense_agent_jobs_total{outcome="completed"} 0`,
		`sendense_agent_jobs_total{outcome="failed"} 0`,
		`sendense_agent_jobs_total{outcome="rejected"} 0`,
		`sendense_catalog_events_poison_total{stage="schema"} 0`,
		`sendense_catalog_events_poison_total{stage="store"} 0`,
		`sendense_repo_reconciled_files_total{repository="default"} 0`,
		`sendense_repo_reconciled_bytes_total{repository="default"} 0`,
		`sendense_repo_reconcile_rounds_total{result="skipped"}`,
	} {
		if !strings.Contains(text, series+"\n") && !strings.Contains(text, series+" ") {
			t.Errorf("/metrics lacks %s", series)
		}
	}
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatalf("lint /metrics: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promtool check metrics: %s: %s", p.Metric, p.Text)
	}
}
