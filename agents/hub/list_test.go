package hub_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

// catalogJobs serves a real bbolt catalog as the API's Jobs.
type catalogJobs struct{ cat *store.Catalog }

func (c catalogJobs) Job(_ context.Context, id string) (backup.Job, error) { return c.cat.Job(id) }
func (c catalogJobs) Jobs(_ context.Context, f backup.JobFilter) ([]backup.Job, error) {
	return c.cat.Jobs(f)
}

// TestAPIListBackups: GET /api/v1/backups lists the catalog's jobs newest
// first, filtered by vm and status like `sendense jobs`, in pages with
// next_offset while there are more; bad parameters are a 400 naming them.
func TestAPIListBackups(t *testing.T) {
	cat, err := store.Open(filepath.Join(t.TempDir(), "catalog.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cat.Close() })
	var evs []schemas.Event
	for i, id := range []string{"job-1", "job-2", "job-3"} {
		j := catalogtest.Job{ID: id, VM: catalogtest.VM(1), At: catalogtest.T0.Add(time.Duration(i) * time.Minute)}
		evs = append(evs, j.Run()...)
	}
	evs = append(evs, catalogtest.Job{ID: "job-4", VM: catalogtest.VM(2), At: catalogtest.T0.Add(time.Hour)}.FailedRun(false)...)
	if _, err := cat.Apply(catalogtest.FromAgent(evs...)...); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer((&hub.API{Jobs: catalogJobs{cat}, Log: zerolog.Nop()}).Handler())
	t.Cleanup(srv.Close)

	type page struct {
		Backups    []backup.Job `json:"backups"`
		Offset     int          `json:"offset"`
		Limit      int          `json:"limit"`
		NextOffset int          `json:"next_offset"`
	}
	get := func(query string) (int, page, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/api/v1/backups" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var raw json.RawMessage
		if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
			t.Fatalf("GET %s: %v", query, err)
		}
		var p page
		_ = json.Unmarshal(raw, &p)
		return resp.StatusCode, p, string(raw)
	}
	ids := func(p page) string {
		var out []string
		for _, j := range p.Backups {
			out = append(out, j.ID)
		}
		return strings.Join(out, ",")
	}
	for _, tt := range []struct {
		query, want string
		next        int
	}{
		{"", "job-4,job-3,job-2,job-1", 0},
		{"?limit=2", "job-4,job-3", 2},
		{"?limit=2&offset=2", "job-2,job-1", 0},
		{"?status=completed&limit=1&offset=1", "job-2", 2},
		{"?vm=" + catalogtest.VM(2).Name, "job-4", 0},
		{"?status=failed", "job-4", 0},
		{"?offset=9", "", 0},
	} {
		code, p, raw := get(tt.query)
		if code != http.StatusOK || ids(p) != tt.want || p.NextOffset != tt.next {
			t.Errorf("GET /api/v1/backups%s: %d %s, want %s next_offset %d", tt.query, code, raw, tt.want, tt.next)
		}
	}
	for _, q := range []string{"?status=bogus", "?limit=0", "?limit=x", "?offset=-1", "?limit=100000"} {
		if code, _, raw := get(q); code != http.StatusBadRequest || !strings.Contains(raw, strings.SplitN(q[1:], "=", 2)[0]) {
			t.Errorf("GET /api/v1/backups%s: %d %s, want 400 naming the parameter", q, code, raw)
		}
	}
}
