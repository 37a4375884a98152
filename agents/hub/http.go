package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/internal/health"
	"github.com/sendense/sendense/schemas"
)

// Jobs reads jobs from the catalog; the catalog service client implements it.
type Jobs interface {
	Job(ctx context.Context, id string) (backup.Job, error)
	Jobs(ctx context.Context, f backup.JobFilter) ([]backup.Job, error)
}

// RequestPublisher publishes backup requests; *bus.Publisher implements it.
type RequestPublisher interface {
	PublishRequest(ctx context.Context, req schemas.Request) (*jetstream.PubAck, error)
}

// API is the hub's HTTP request API:
//
//	POST /api/v1/backups            {"vm":"pgtest1","backup_type":"incremental"} → 202 {"job_id":…}
//	                                or the replaced system's {"vm_name":…,"repository_id":"1",…} (legacy.go)
//	                                a job_id already used → 409 {"error":…,"job_id":…,"job":<the job>}
//	GET  /api/v1/backups            ?vm=&status=&limit=&offset= → 200 {"backups":[jobs, newest first],
//	                                "offset":…,"limit":…,"next_offset":… (only when there are more)}
//	GET  /api/v1/backups/{job_id}   → 200 the catalog's job, 404 when unknown
//	GET  /healthz                   → 200 while the process runs (with Health)
//	GET  /readyz                    → 200 when every check of Health passes, else 503 listing them
type API struct {
	Publisher RequestPublisher
	Jobs      Jobs
	Log       zerolog.Logger
	// Health, if not nil, serves /healthz and /readyz next to the API.
	Health *health.Registry
	// RepositoryIDs maps the replaced system's repository_id to a
	// repository name, for its body (see legacy.go); nil means
	// DefaultRepositoryIDs ("1" is the default repository).
	RepositoryIDs map[string]string
}

// Handler returns the HTTP handler.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/backups", a.postBackup)
	mux.HandleFunc("GET /api/v1/backups", a.listBackups)
	mux.HandleFunc("GET /api/v1/backups/{job_id}", a.getBackup)
	if a.Health != nil {
		a.Health.Register(mux)
	}
	return mux
}

type apiError struct {
	Error    string            `json:"error"`
	Problems []schemas.Problem `json:"problems,omitempty"`
	// JobID and Job name the job that already holds a requested job id
	// (409); Job is absent while that job is only queued.
	JobID string      `json:"job_id,omitempty"`
	Job   *backup.Job `json:"job,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (a *API) postBackup(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, schemas.MaxMessageBytes+1))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: err.Error()})
		return
	}
	ids := a.RepositoryIDs
	if ids == nil {
		ids = DefaultRepositoryIDs
	}
	native, err := legacyRequest(body, ids)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: err.Error()})
		return
	}
	if native != nil {
		body = native
	}
	req, err := schemas.DecodeRequest(body)
	if err != nil {
		out := apiError{Error: err.Error()}
		var ve *schemas.ValidationError
		if errors.As(err, &ve) {
			out.Problems = ve.Problems
		}
		writeJSON(w, http.StatusBadRequest, out)
		return
	}
	if req.JobID == "" {
		req.JobID = bus.NewJobID()
	} else {
		// A job id names one job for good: a second request under the id
		// of a job the catalog knows is a conflict, never a silent drop.
		switch j, err := a.Jobs.Job(r.Context(), req.JobID); {
		case err == nil:
			writeJSON(w, http.StatusConflict, apiError{Error: fmt.Sprintf("job id %s is taken by a %s job", req.JobID, j.Status), JobID: req.JobID, Job: &j})
			return
		case !errors.Is(err, backup.ErrNotFound):
			writeJSON(w, http.StatusBadGateway, apiError{Error: fmt.Sprintf("check job id %s with the catalog: %v", req.JobID, err)})
			return
		}
	}
	if req.RequestedBy == "" {
		req.RequestedBy = "api"
	}
	if _, err := a.Publisher.PublishRequest(r.Context(), req); err != nil {
		if errors.Is(err, bus.ErrDuplicateMsgID) {
			writeJSON(w, http.StatusConflict, apiError{Error: fmt.Sprintf("job id %s is taken by another queued request", req.JobID), JobID: req.JobID})
			return
		}
		a.Log.Error().Err(err).Str("job_id", req.JobID).Msg("publish request")
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: err.Error()})
		return
	}
	a.Log.Info().Str("job_id", req.JobID).Str("vm", req.VM).Str("backup_type", req.BackupType).Msg("backup requested")
	writeJSON(w, http.StatusAccepted, map[string]string{"job_id": req.JobID})
}

// List paging: the default and the largest page.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// backupList is the body of GET /api/v1/backups.
type backupList struct {
	Backups    []backup.Job `json:"backups"`
	Offset     int          `json:"offset"`
	Limit      int          `json:"limit"`
	NextOffset int          `json:"next_offset,omitempty"`
}

func (a *API) listBackups(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := backup.JobFilter{VM: q.Get("vm"), Status: q.Get("status"), Limit: DefaultListLimit}
	if f.Status != "" && !slices.Contains(backup.Statuses, f.Status) {
		writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("status %q: want one of %s", f.Status, strings.Join(backup.Statuses, ", "))})
		return
	}
	for _, p := range []struct {
		name     string
		dst      *int
		min, max int
	}{{"limit", &f.Limit, 1, MaxListLimit}, {"offset", &f.Offset, 0, math.MaxInt32}} {
		v := q.Get(p.name)
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < p.min || n > p.max {
			writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("%s %q: want an integer from %d to %d", p.name, v, p.min, p.max)})
			return
		}
		*p.dst = n
	}
	limit := f.Limit
	f.Limit++ // one more says whether there is a next page
	jobs, err := a.Jobs.Jobs(r.Context(), f)
	if err != nil {
		writeJSON(w, http.StatusBadGateway, apiError{Error: err.Error()})
		return
	}
	out := backupList{Backups: jobs, Offset: f.Offset, Limit: limit}
	if len(jobs) > limit {
		out.Backups, out.NextOffset = jobs[:limit], f.Offset+limit
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) getBackup(w http.ResponseWriter, r *http.Request) {
	job, err := a.Jobs.Job(r.Context(), r.PathValue("job_id"))
	switch {
	case errors.Is(err, backup.ErrNotFound):
		writeJSON(w, http.StatusNotFound, apiError{Error: err.Error()})
	case err != nil:
		writeJSON(w, http.StatusBadGateway, apiError{Error: err.Error()})
	default:
		writeJSON(w, http.StatusOK, job)
	}
}

// ServeListener serves the API on ln (localhost by default in the CLI)
// until ctx ends.
func (a *API) ServeListener(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	a.Log.Info().Str("addr", ln.Addr().String()).Msg("request api listening")
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
