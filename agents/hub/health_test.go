package hub_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"testing"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/internal/health"
)

// The request API's listener answers /healthz and /readyz from the
// process's readiness registry, over real HTTP through ServeListener.
func TestAPIHealth(t *testing.T) {
	reg := health.New()
	var streamsErr = errors.New("stream BACKUP_REQUESTS has no leader")
	reg.Add("hub/streams", func(context.Context) error { return streamsErr })
	api := &hub.API{Jobs: &fakeJobs{}, Log: bustest.Logger(t), Health: reg}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- api.ServeListener(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeListener: %v", err)
		}
	})
	base := "http://" + ln.Addr().String()
	get := func(path string) (int, health.Report) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var rep health.Report
		if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
			t.Fatalf("decode %s: %v", path, err)
		}
		return resp.StatusCode, rep
	}
	if code, rep := get("/healthz"); code != http.StatusOK || rep.Status != "alive" {
		t.Errorf("/healthz = %d %+v, want 200 alive", code, rep)
	}
	code, rep := get("/readyz")
	if code != http.StatusServiceUnavailable || len(rep.Checks) != 1 || rep.Checks[0].Error != streamsErr.Error() {
		t.Errorf("/readyz = %d %+v, want 503 naming the streams' error", code, rep)
	}
	streamsErr = nil
	if code, rep := get("/readyz"); code != http.StatusOK || !rep.Ready() {
		t.Errorf("/readyz after recovery = %d %+v, want 200 ready", code, rep)
	}
}
