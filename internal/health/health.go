package health

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"
)

// CheckTimeout bounds one check of a /readyz request.
const CheckTimeout = 3 * time.Second

// Check returns nil when what it checks is ready, else why not.
type Check func(ctx context.Context) error

// Registry holds the readiness checks of one process. Safe for concurrent
// use; the zero value is not usable, use New.
type Registry struct {
	mu     sync.Mutex
	names  []string
	checks map[string]Check
}

// New returns an empty registry: ready until a check is added.
func New() *Registry { return &Registry{checks: map[string]Check{}} }

// Add registers a check under name, replacing one of the same name (so a
// role can turn "starting" into its real checks). Checks run in the order
// first added.
func (r *Registry) Add(name string, fn Check) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.checks[name]; !ok {
		r.names = append(r.names, name)
	}
	r.checks[name] = fn
}

// Remove drops the check name, if any.
func (r *Registry) Remove(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.checks[name]; !ok {
		return
	}
	delete(r.checks, name)
	for i, n := range r.names {
		if n == name {
			r.names = append(r.names[:i:i], r.names[i+1:]...)
			break
		}
	}
}

// Result is one check's outcome.
type Result struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// Report is the body of /readyz.
type Report struct {
	// Status is "ready" or "not ready".
	Status string   `json:"status"`
	Checks []Result `json:"checks"`
}

// Ready reports whether every check passed.
func (r Report) Ready() bool { return r.Status == "ready" }

// Run runs every check concurrently, each under CheckTimeout (and ctx).
func (r *Registry) Run(ctx context.Context) Report {
	r.mu.Lock()
	names := append([]string(nil), r.names...)
	checks := make([]Check, len(names))
	for i, n := range names {
		checks[i] = r.checks[n]
	}
	r.mu.Unlock()
	res := make([]Result, len(names))
	var wg sync.WaitGroup
	for i := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, CheckTimeout)
			defer cancel()
			err := checks[i](cctx)
			if err == nil && cctx.Err() != nil {
				err = cctx.Err()
			}
			res[i] = Result{Name: names[i], OK: err == nil}
			if err != nil {
				res[i].Error = err.Error()
			}
		}()
	}
	wg.Wait()
	rep := Report{Status: "ready", Checks: res}
	for _, c := range res {
		if !c.OK {
			rep.Status = "not ready"
		}
	}
	return rep
}

// Err runs the checks and returns nil when all pass, else an error
// joining each failure as "name: error".
func (r *Registry) Err(ctx context.Context) error {
	var errs []error
	for _, c := range r.Run(ctx).Checks {
		if !c.OK {
			errs = append(errs, errors.New(c.Name+": "+c.Error))
		}
	}
	return errors.Join(errs...)
}

// Register adds GET /healthz and GET /readyz to mux.
func (r *Registry) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, req *http.Request) {
		rep := r.Run(req.Context())
		code := http.StatusOK
		if !rep.Ready() {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, rep)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
