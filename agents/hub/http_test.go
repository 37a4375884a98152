package hub_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/agents/hub"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

// fakeJobs is the catalog as the API sees it.
type fakeJobs struct {
	mu   sync.Mutex
	jobs map[string]backup.Job
	err  error // returned for every lookup when set
}

func (f *fakeJobs) Job(_ context.Context, id string) (backup.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return backup.Job{}, f.err
	}
	j, ok := f.jobs[id]
	if !ok {
		return backup.Job{}, fmt.Errorf("job %s: %w", id, backup.ErrNotFound)
	}
	return j, nil
}

// Jobs lists the fake's jobs by id, newest (largest) first, paged by f.
func (f *fakeJobs) Jobs(_ context.Context, flt backup.JobFilter) ([]backup.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	jobs := []backup.Job{}
	for _, j := range f.jobs {
		jobs = append(jobs, j)
	}
	slices.SortFunc(jobs, func(a, b backup.Job) int { return strings.Compare(b.ID, a.ID) })
	jobs = jobs[min(flt.Offset, len(jobs)):]
	if flt.Limit > 0 {
		jobs = jobs[:min(flt.Limit, len(jobs))]
	}
	return jobs, nil
}

type apiEnv struct {
	nats *bustest.Server
	jobs *fakeJobs
	url  string
}

// newAPIEnv serves the API over HTTP with the real publisher on an
// embedded server whose streams exist.
func newAPIEnv(t *testing.T) *apiEnv {
	t.Helper()
	log := bustest.Logger(t)
	ns := bustest.Embedded(t)
	if err := bus.EnsureStreams(testCtx(t), ns.JS, bus.StreamOptions{}); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	jobs := &fakeJobs{jobs: map[string]backup.Job{}}
	api := &hub.API{Publisher: bus.NewPublisher(ns.JS, "sendense-hub-test", log), Jobs: jobs, Log: log}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	return &apiEnv{nats: ns, jobs: jobs, url: srv.URL}
}

type apiReply struct {
	status      int
	contentType string
	body        []byte
}

func (e *apiEnv) do(t *testing.T, method, path, body string) apiReply {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), method, e.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return apiReply{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), body: b}
}

// requests returns every message in BACKUP_REQUESTS.
func (e *apiEnv) requests(t *testing.T) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := testCtx(t)
	st, err := e.nats.JS.Stream(ctx, bus.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	return msgs
}

func TestAPIPostBackup(t *testing.T) {
	e := newAPIEnv(t)
	rep := e.do(t, http.MethodPost, "/api/v1/backups", `{"vm":"pgtest1","backup_type":"incremental"}`)
	if rep.status != http.StatusAccepted {
		t.Fatalf("status %d (%s), want 202", rep.status, rep.body)
	}
	if !strings.HasPrefix(rep.contentType, "application/json") {
		t.Errorf("content type %q", rep.contentType)
	}
	var out struct {
		JobID string `json:"job_id"`
	}
	if err := json.Unmarshal(rep.body, &out); err != nil {
		t.Fatalf("decode %s: %v", rep.body, err)
	}
	if err := bus.ValidJobID(out.JobID); err != nil {
		t.Fatalf("job id %q: %v", out.JobID, err)
	}

	msgs := e.requests(t)
	if len(msgs) != 1 {
		t.Fatalf("%d messages in %s, want 1", len(msgs), bus.StreamRequests)
	}
	m := msgs[0]
	if m.Subject != bus.SubjectRequested {
		t.Errorf("subject %q, want %s", m.Subject, bus.SubjectRequested)
	}
	if got := m.Header.Get(bus.HeaderMsgID); got != out.JobID {
		t.Errorf("Nats-Msg-Id %q, want the job id %q", got, out.JobID)
	}
	if got := m.Header.Get(bus.HeaderType); got != "io.sendense.backup.requested" {
		t.Errorf("ce-type %q, want io.sendense.backup.requested", got)
	}
	if got := m.Header.Get(bus.HeaderDataSchema); got != "https://sendense.dev/schemas/backup.requested/v1.json" {
		t.Errorf("ce-dataschema %q, want the schema's $id", got)
	}
	// What an agent decodes: it validates against the schema.
	req, err := schemas.DecodeRequest(m.Data)
	if err != nil {
		t.Fatalf("published request does not validate: %v: %s", err, m.Data)
	}
	if req.JobID != out.JobID || req.VM != "pgtest1" || req.BackupType != "incremental" || req.RequestedBy != "api" {
		t.Errorf("published request %+v, want job %s, vm pgtest1, incremental, requested_by api", req, out.JobID)
	}

	// A second request gets another job id and another message.
	rep2 := e.do(t, http.MethodPost, "/api/v1/backups", `{"vm":"pgtest1"}`)
	if rep2.status != http.StatusAccepted {
		t.Fatalf("second post: status %d (%s)", rep2.status, rep2.body)
	}
	var out2 struct {
		JobID string `json:"job_id"`
	}
	_ = json.Unmarshal(rep2.body, &out2)
	if out2.JobID == "" || out2.JobID == out.JobID {
		t.Errorf("second job id %q, first %q: want a new one", out2.JobID, out.JobID)
	}
	if n := len(e.requests(t)); n != 2 {
		t.Errorf("%d messages after two posts, want 2", n)
	}
}

// TestAPIPostBackupKeepsCallerFields: a caller's job id and requested_by
// are kept, and re-posting the same job id queues it once (the job id is
// the Nats-Msg-Id).
func TestAPIPostBackupKeepsCallerFields(t *testing.T) {
	e := newAPIEnv(t)
	body := `{"vm":"pgtest1","job_id":"nightly-pgtest1-1","requested_by":"scheduler"}`
	for range 2 {
		rep := e.do(t, http.MethodPost, "/api/v1/backups", body)
		if rep.status != http.StatusAccepted || !strings.Contains(string(rep.body), `"nightly-pgtest1-1"`) {
			t.Fatalf("status %d body %s, want 202 with the caller's job id", rep.status, rep.body)
		}
	}
	msgs := e.requests(t)
	if len(msgs) != 1 {
		t.Fatalf("%d messages for one job id posted twice, want 1", len(msgs))
	}
	req, err := schemas.DecodeRequest(msgs[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if req.JobID != "nightly-pgtest1-1" || req.RequestedBy != "scheduler" || req.BackupType != "auto" {
		t.Errorf("published %+v, want the caller's job id and requested_by, backup_type auto", req)
	}
}

func TestAPIPostBackupBadInput(t *testing.T) {
	e := newAPIEnv(t)
	tests := []struct {
		name string
		body string
		// field is the JSON pointer a problem must name, or "" with
		// mention, a word the problem's message must hold; neither for
		// invalid JSON, which has no problems.
		field   string
		mention string
	}{
		{name: "unknown field", body: `{"vm":"pgtest1","colour":"red"}`, mention: "'colour'"},
		{name: "bad backup_type", body: `{"vm":"pgtest1","backup_type":"differential"}`, field: "/backup_type"},
		{name: "missing vm", body: `{"backup_type":"full"}`, mention: "'vm'"},
		{name: "vm with path", body: `{"vm":"../etc"}`, field: "/vm"},
		{name: "bad job id", body: `{"vm":"pgtest1","job_id":"a/b"}`, field: "/job_id"},
		{name: "vm not a string", body: `{"vm":42}`, field: "/vm"},
		{name: "invalid json", body: `{"vm":`},
		{name: "not an object", body: `["pgtest1"]`},
		{name: "empty body", body: ``},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep := e.do(t, http.MethodPost, "/api/v1/backups", tc.body)
			if rep.status != http.StatusBadRequest {
				t.Fatalf("status %d (%s), want 400", rep.status, rep.body)
			}
			var out struct {
				Error    string            `json:"error"`
				Problems []schemas.Problem `json:"problems"`
			}
			if err := json.Unmarshal(rep.body, &out); err != nil {
				t.Fatalf("decode %s: %v", rep.body, err)
			}
			if out.Error == "" {
				t.Errorf("no error message in %s", rep.body)
			}
			if tc.field == "" && tc.mention == "" {
				return
			}
			found := false
			for _, p := range out.Problems {
				if tc.field != "" && p.Field == tc.field {
					found = true
				}
				if tc.mention != "" && strings.Contains(p.Message, tc.mention) {
					found = true
				}
			}
			if !found {
				t.Errorf("problems %+v name neither field %q nor %q", out.Problems, tc.field, tc.mention)
			}
		})
	}
	if n := len(e.requests(t)); n != 0 {
		t.Errorf("%d requests published for bad input, want 0", n)
	}
}

func TestAPIGetBackup(t *testing.T) {
	e := newAPIEnv(t)
	created := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	e.jobs.jobs["job-1"] = backup.Job{
		ID: "job-1", Status: "completed", VM: schemas.VMRef{UUID: testVM, Name: "pgtest1"},
		Repository: "default", RequestedType: "full", Attempt: 1, CreatedAt: created,
	}

	rep := e.do(t, http.MethodGet, "/api/v1/backups/job-1", "")
	if rep.status != http.StatusOK {
		t.Fatalf("status %d (%s), want 200", rep.status, rep.body)
	}
	if !strings.HasPrefix(rep.contentType, "application/json") {
		t.Errorf("content type %q", rep.contentType)
	}
	var got backup.Job
	if err := json.Unmarshal(rep.body, &got); err != nil {
		t.Fatalf("decode %s: %v", rep.body, err)
	}
	if got.ID != "job-1" || got.Status != "completed" || got.VM.UUID != testVM || !got.CreatedAt.Equal(created) {
		t.Errorf("job %+v, want the catalog's job-1", got)
	}

	rep = e.do(t, http.MethodGet, "/api/v1/backups/job-unknown", "")
	if rep.status != http.StatusNotFound || !strings.Contains(string(rep.body), `"error"`) {
		t.Errorf("unknown job: status %d (%s), want 404 with an error", rep.status, rep.body)
	}

	// A catalog that cannot answer is not "not found".
	e.jobs.mu.Lock()
	e.jobs.err = errors.New("catalog unreachable")
	e.jobs.mu.Unlock()
	rep = e.do(t, http.MethodGet, "/api/v1/backups/job-1", "")
	if rep.status == http.StatusOK || rep.status == http.StatusNotFound || rep.status < 500 {
		t.Errorf("catalog down: status %d (%s), want a 5xx", rep.status, rep.body)
	}

	// Routes: no listing, no other methods.
	if rep := e.do(t, http.MethodDelete, "/api/v1/backups/job-1", ""); rep.status != http.StatusMethodNotAllowed {
		t.Errorf("DELETE: status %d, want 405", rep.status)
	}
	if rep := e.do(t, http.MethodGet, "/api/v1/nothing", ""); rep.status != http.StatusNotFound {
		t.Errorf("GET unknown path: status %d, want 404", rep.status)
	}
}

// TestAPIPublishFailure: when JetStream does not take the request (here
// the hub's connection is closed), the caller gets a 5xx, not a job id
// that will never run.
func TestAPIPublishFailure(t *testing.T) {
	log := bustest.Logger(t)
	ns := bustest.Embedded(t)
	if err := bus.EnsureStreams(testCtx(t), ns.JS, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	nc, err := ns.Embedded.Connect(log, bus.Options{})
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	api := &hub.API{Publisher: bus.NewPublisher(js, "sendense-hub-test", log), Jobs: &fakeJobs{}, Log: log}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	e := &apiEnv{nats: ns, url: srv.URL}
	rep := e.do(t, http.MethodPost, "/api/v1/backups", `{"vm":"pgtest1"}`)
	if rep.status < 500 || strings.Contains(string(rep.body), "job_id") {
		t.Errorf("publish on a closed connection: status %d (%s), want a 5xx without a job id", rep.status, rep.body)
	}
	if n := len(e.requests(t)); n != 0 {
		t.Errorf("%d requests stored, want 0", n)
	}
}

// TestAPIServeListener: the API serves on a listener and stops when its
// context ends.
func TestAPIServeListener(t *testing.T) {
	log := bustest.Logger(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	api := &hub.API{Jobs: &fakeJobs{jobs: map[string]backup.Job{"job-1": {ID: "job-1", Status: "running"}}}, Log: log}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- api.ServeListener(ctx, ln) }()
	e := &apiEnv{url: "http://" + ln.Addr().String()}
	if rep := e.do(t, http.MethodGet, "/api/v1/backups/job-1", ""); rep.status != http.StatusOK {
		t.Errorf("status %d (%s), want 200", rep.status, rep.body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeListener returned %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeListener did not return after cancel")
	}
	http.DefaultClient.CloseIdleConnections()
}

// TestAPIReusedJobID: a job id names one job for good. Asking again under
// the id of a job the catalog knows, or of a request still queued, answers
// 409 with the job that holds it; nothing is queued.
func TestAPIReusedJobID(t *testing.T) {
	e := newAPIEnv(t)
	done := backup.Job{ID: "nightly-1", Status: backup.StatusCompleted, VM: schemas.VMRef{Name: "pgtest1"}}
	e.jobs.mu.Lock()
	e.jobs.jobs[done.ID] = done
	e.jobs.mu.Unlock()

	rep := e.do(t, http.MethodPost, "/api/v1/backups", `{"vm":"pgtest1","job_id":"nightly-1"}`)
	var body struct {
		Error string      `json:"error"`
		JobID string      `json:"job_id"`
		Job   *backup.Job `json:"job"`
	}
	if err := json.Unmarshal(rep.body, &body); err != nil {
		t.Fatalf("409 body %s: %v", rep.body, err)
	}
	if rep.status != http.StatusConflict || body.JobID != "nightly-1" || body.Job == nil || body.Job.Status != backup.StatusCompleted {
		t.Errorf("job id of a completed job: %d %s, want 409 with the job", rep.status, rep.body)
	}

	// Queued, not yet in the catalog: the stream's dedup tells.
	if rep := e.do(t, http.MethodPost, "/api/v1/backups", `{"vm":"pgtest1","job_id":"queued-1"}`); rep.status != http.StatusAccepted {
		t.Fatalf("first request: %d %s", rep.status, rep.body)
	}
	rep = e.do(t, http.MethodPost, "/api/v1/backups", `{"vm":"othervm","job_id":"queued-1"}`)
	if rep.status != http.StatusConflict || !strings.Contains(string(rep.body), "queued-1") {
		t.Errorf("job id of a queued request: %d %s, want 409", rep.status, rep.body)
	}
	if n := len(e.requests(t)); n != 1 {
		t.Errorf("%d requests queued, want 1", n)
	}

	// The catalog cannot say: no request is queued blind.
	e.jobs.mu.Lock()
	e.jobs.err = errors.New("catalog down")
	e.jobs.mu.Unlock()
	if rep := e.do(t, http.MethodPost, "/api/v1/backups", `{"vm":"pgtest1","job_id":"new-2"}`); rep.status != http.StatusBadGateway {
		t.Errorf("catalog down: %d %s, want 502", rep.status, rep.body)
	}
}

// TestAPIPostLegacyBody: the replaced system's body is accepted as the
// native one (repository_id "1" is the default repository) and answered
// with the job id; mixing the forms, an unknown repository_id or a field
// of neither is a 400 that says which, and publishes nothing.
func TestAPIPostLegacyBody(t *testing.T) {
	e := newAPIEnv(t)
	for i, body := range []string{
		`{"vm_name":"pgtest1","repository_id":"1","backup_type":"full"}`,
		`{"vm_name":"pgtest1","repository_id":1,"backup_type":"full","job_id":"legacy-2"}`,
	} {
		rep := e.do(t, http.MethodPost, "/api/v1/backups", body)
		var out struct {
			JobID string `json:"job_id"`
		}
		if rep.status != http.StatusAccepted || json.Unmarshal(rep.body, &out) != nil || bus.ValidJobID(out.JobID) != nil {
			t.Fatalf("POST %s: %d %s, want 202 with a job id", body, rep.status, rep.body)
		}
		msgs := e.requests(t)
		if len(msgs) != i+1 {
			t.Fatalf("%d requests after %d posts", len(msgs), i+1)
		}
		req, err := schemas.DecodeRequest(msgs[i].Data)
		if err != nil || req.JobID != out.JobID || req.VM != "pgtest1" || req.Repository != schemas.DefaultRepository || req.BackupType != schemas.TypeFull {
			t.Errorf("published %+v (%v), want job %s of pgtest1, full, to the default repository", req, err, out.JobID)
		}
	}
	for _, tt := range []struct{ body, want string }{
		{`{"vm_name":"pgtest1","repository_id":"7","backup_type":"full"}`, `repository_id \"7\" names no repository (known: 1)`},
		{`{"vm_name":"pgtest1","vm":"pgtest1"}`, "mixes"},
		{`{"vm":"pgtest1","repository_id":"1"}`, "mixes"},
		{`{"vm_name":"pgtest1","repository":"default","repository_id":"1"}`, "mixes"},
		{`{"vm_name":"pgtest1","priority":3}`, "field priority not allowed"},
		{`{"vm_name":"","repository_id":"1"}`, "vm_name is required"},
		{`{"vm_name":"pgtest1","repository_id":"1","backup_type":"weekly"}`, "backup_type"},
		{`{"vm_name":"pgtest1","repository_id":[1]}`, "repository_id"},
	} {
		rep := e.do(t, http.MethodPost, "/api/v1/backups", tt.body)
		if rep.status != http.StatusBadRequest || !strings.Contains(string(rep.body), tt.want) {
			t.Errorf("POST %s: %d %s, want 400 saying %q", tt.body, rep.status, rep.body, tt.want)
		}
	}
	if n := len(e.requests(t)); n != 2 {
		t.Errorf("%d requests after the refused bodies, want still 2", n)
	}
}
