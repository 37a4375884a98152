package hub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

// recordingPublisher keeps what the API would publish (a unit fake: the
// real publisher is tested against a real server in http_test.go).
type recordingPublisher struct {
	mu   sync.Mutex
	reqs []schemas.Request
	ids  map[string]bool
}

func (p *recordingPublisher) PublishRequest(_ context.Context, req schemas.Request) (*jetstream.PubAck, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ids[req.JobID] {
		return nil, fmt.Errorf("job %s: %w", req.JobID, bus.ErrDuplicateMsgID)
	}
	p.ids[req.JobID] = true
	p.reqs = append(p.reqs, req)
	return &jetstream.PubAck{Stream: bus.StreamRequests, Sequence: uint64(len(p.reqs))}, nil
}

// FuzzAPI: whatever a client sends, the API answers JSON with a known
// status, queues only requests that pass the request schema, and never
// queues two requests under one job id nor one under a known job's id.
func FuzzAPI(f *testing.F) {
	for _, s := range []struct{ method, path, body string }{
		{"POST", "/api/v1/backups", `{"vm":"pgtest1"}`},
		{"POST", "/api/v1/backups", `{"vm":"pgtest1","job_id":"known-1"}`},
		{"POST", "/api/v1/backups", `{"vm":"pgtest1","job_id":"new-1","backup_type":"full"}`},
		{"POST", "/api/v1/backups", `{"vm":"../../etc","vm":"pgtest1"}`},
		{"POST", "/api/v1/backups", `{"vm":`},
		{"POST", "/api/v1/backups", `{"vm_name":"pgtest1","repository_id":"1","backup_type":"full"}`},
		{"GET", "/api/v1/backups/known-1", ``},
		{"GET", "/api/v1/backups/..%2f..%2fetc", ``},
		{"DELETE", "/api/v1/backups/known-1", ``},
	} {
		f.Add(s.method, s.path, s.body)
	}
	f.Fuzz(func(t *testing.T, method, path, body string) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t#?") || len(path) > 512 {
			t.Skip() // not an HTTP request line a client can send
		}
		if _, err := url.ParseRequestURI(path); err != nil {
			t.Skip()
		}
		switch method {
		case "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH":
		default:
			t.Skip()
		}
		pub := &recordingPublisher{ids: map[string]bool{}}
		jobs := &fakeJobs{jobs: map[string]backup.Job{"known-1": {ID: "known-1", Status: backup.StatusCompleted}}}
		api := &hub.API{Publisher: pub, Jobs: jobs, Log: zerolog.Nop()}
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(method, "http://hub"+path, strings.NewReader(body))
		api.Handler().ServeHTTP(rec, req)

		switch rec.Code {
		case http.StatusOK, http.StatusAccepted, http.StatusBadRequest, http.StatusNotFound, http.StatusConflict,
			http.StatusMethodNotAllowed, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusMovedPermanently,
			http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		default:
			t.Fatalf("%s %s %q: status %d", method, path, body, rec.Code)
		}
		if rec.Code == http.StatusOK || rec.Code == http.StatusAccepted || rec.Code == http.StatusBadRequest || rec.Code == http.StatusConflict {
			if !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s %s: status %d with a body that is not JSON: %q", method, path, rec.Code, rec.Body.String())
			}
		}
		for _, r := range pub.reqs {
			data, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			if err := schemas.Validate(schemas.NameRequested, data); err != nil {
				t.Fatalf("queued a request that fails its schema: %s: %v", data, err)
			}
			if r.JobID == "known-1" {
				t.Fatalf("queued a request under a known job's id: %s", data)
			}
		}
		if rec.Code == http.StatusAccepted && len(pub.reqs) != 1 {
			t.Fatalf("202 with %d requests queued", len(pub.reqs))
		}
		if rec.Code != http.StatusAccepted && len(pub.reqs) != 0 {
			t.Fatalf("status %d, yet %d requests queued", rec.Code, len(pub.reqs))
		}
	})
}
