package health_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/sendense/sendense/internal/health"
)

func get(t *testing.T, url string) (int, health.Report) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rep health.Report
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		t.Fatalf("decode %s: %v", url, err)
	}
	return resp.StatusCode, rep
}

// /healthz answers 200 whatever the checks say; /readyz 200 only when
// every check passes, else 503 with each check and its error.
func TestEndpoints(t *testing.T) {
	reg := health.New()
	mux := http.NewServeMux()
	reg.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	if code, rep := get(t, srv.URL+"/readyz"); code != http.StatusOK || !rep.Ready() {
		t.Errorf("no checks: %d %+v, want 200 ready", code, rep)
	}
	var natsErr error = errors.New("not connected to nats (RECONNECTING)")
	reg.Add("nats/hub", func(context.Context) error { return natsErr })
	reg.Add("hub/streams", func(context.Context) error { return nil })
	reg.Add("agent/vcenter", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }) // hangs: cut at CheckTimeout

	code, rep := get(t, srv.URL+"/readyz")
	if code != http.StatusServiceUnavailable || rep.Status != "not ready" {
		t.Fatalf("/readyz = %d %+v, want 503 not ready", code, rep)
	}
	want := []health.Result{
		{Name: "nats/hub", Error: natsErr.Error()},
		{Name: "hub/streams", OK: true},
		{Name: "agent/vcenter", Error: context.DeadlineExceeded.Error()},
	}
	if len(rep.Checks) != len(want) {
		t.Fatalf("checks %+v, want %+v", rep.Checks, want)
	}
	for i := range want {
		if rep.Checks[i] != want[i] {
			t.Errorf("check %d = %+v, want %+v", i, rep.Checks[i], want[i])
		}
	}
	if code, rep := get(t, srv.URL+"/healthz"); code != http.StatusOK || rep.Status != "alive" {
		t.Errorf("/healthz = %d %+v, want 200 alive", code, rep)
	}

	natsErr = nil
	reg.Remove("agent/vcenter")
	if code, rep := get(t, srv.URL+"/readyz"); code != http.StatusOK || len(rep.Checks) != 2 {
		t.Errorf("after recovery: %d %+v, want 200 with 2 checks", code, rep)
	}
	resp, err := http.Post(srv.URL+"/readyz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /readyz = %d, want 405", resp.StatusCode)
	}
}
