package catalog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

// MaxQueuedRead bounds how many waiting requests one answer reads from
// BACKUP_REQUESTS; a queue longer than that shows its oldest MaxQueuedRead.
const MaxQueuedRead = 1000

// queueReadTimeout bounds one read of the queue: the catalog's own answer
// must not wait on a slow JetStream.
const queueReadTimeout = 2 * time.Second

// queue reads the backup requests waiting in BACKUP_REQUESTS without
// consuming them: BACKUP_REQUESTS is a work queue whose only consumer on
// backup.requested is the agents', so the catalog reads it by stream
// sequence (STREAM.MSG.GET, next message on the subject), never with a
// consumer. A request whose job the catalog does not know yet is a queued
// job: no agent has started it (none runs, or its VM's lease is held).
type queue struct {
	js jetstream.JetStream
}

// queued returns the jobs of the requests waiting in the queue, oldest
// first, as store.Catalog.Jobs lists them, with status queued: id (the request's job_id, or
// the one derived from its stream sequence), VM (as the request named
// it), repository, requested type and by, request seq and created at (the
// request's stream time). A request that does not decode is left out (the
// agent taking it rejects it). No requests stream, or no right to read it,
// gives an error.
func (q *queue) queued(ctx context.Context) ([]backup.Job, error) {
	ctx, cancel := context.WithTimeout(ctx, queueReadTimeout)
	defer cancel()
	st, err := q.js.Stream(ctx, bus.StreamRequests)
	if err != nil {
		return nil, fmt.Errorf("read queued requests: stream %s: %w", bus.StreamRequests, err)
	}
	var jobs []backup.Job
	for seq := uint64(1); len(jobs) < MaxQueuedRead; {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(bus.SubjectRequested))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read queued requests: %s seq >= %d: %w", bus.StreamRequests, seq, err)
		}
		seq = m.Sequence + 1
		req, err := schemas.DecodeRequest(m.Data)
		if err != nil {
			continue
		}
		id := req.JobID
		if id == "" {
			id = bus.DeriveJobID(bus.StreamRequests, m.Sequence, m.Time)
		}
		jobs = append(jobs, backup.Job{
			ID:            id,
			Status:        backup.StatusQueued,
			VM:            schemas.VMRef{Name: req.VM},
			Repository:    cmp.Or(req.Repository, schemas.DefaultRepository),
			RequestedType: cmp.Or(req.BackupType, schemas.TypeAuto),
			RequestedBy:   req.RequestedBy,
			RequestSeq:    m.Sequence,
			CreatedAt:     m.Time.UTC(),
			Disks:         []backup.Disk{},
			EventIDs:      []string{},
		})
	}
	return jobs, nil
}

// unknown keeps the queued jobs the catalog has no record of: a request
// an agent started is the catalog's job (running, or failed and waiting
// for its retry).
func unknown(cat *store.Catalog, queued []backup.Job) []backup.Job {
	out := queued[:0]
	for _, j := range queued {
		if _, err := cat.Job(j.ID); errors.Is(err, backup.ErrNotFound) {
			out = append(out, j)
		}
	}
	return out
}

// queuedJob returns the queued job with this id, or an error wrapping
// backup.ErrNotFound.
func (s *service) queuedJob(id string) (backup.Job, error) {
	queued, err := s.q.queued(context.Background())
	if err != nil {
		s.log.Warn().Err(err).Msg("catalog service: queued jobs not shown")
		return backup.Job{}, fmt.Errorf("get job %s: %w", id, backup.ErrNotFound)
	}
	for _, j := range queued {
		if j.ID == id {
			return j, nil
		}
	}
	return backup.Job{}, fmt.Errorf("get job %s: %w", id, backup.ErrNotFound)
}

// matchQueued is backup.JobFilter's match for a queued job, whose VM is
// the request's words for it.
func matchQueued(f backup.JobFilter, j backup.Job) bool {
	if f.Status != "" && f.Status != backup.StatusQueued {
		return false
	}
	if f.VM != "" && !strings.EqualFold(j.VM.Name, f.VM) {
		return false
	}
	return strings.HasPrefix(j.ID, f.IDPrefix)
}

// jobsWithQueued answers a jobs list: the catalog's jobs matching f and
// the queued jobs matching it, newest first (created at, then id
// descending, as store.Catalog.Jobs), then f's offset and limit.
func (s *service) jobsWithQueued(f backup.JobFilter) ([]backup.Job, error) {
	inner := f
	inner.Offset = 0
	if f.Limit > 0 {
		inner.Limit = max(f.Offset, 0) + f.Limit
	}
	jobs, err := s.cat.Jobs(inner)
	if err != nil {
		return nil, err
	}
	if f.Status != "" && f.Status != backup.StatusQueued {
		return page(jobs, f), nil
	}
	queued, err := s.q.queued(context.Background())
	if err != nil {
		s.log.Warn().Err(err).Msg("catalog service: queued jobs not shown")
		return page(jobs, f), nil
	}
	for _, j := range unknown(s.cat, queued) {
		if matchQueued(f, j) {
			jobs = append(jobs, j)
		}
	}
	slices.SortStableFunc(jobs, func(a, b backup.Job) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return page(jobs, f), nil
}

func page(jobs []backup.Job, f backup.JobFilter) []backup.Job {
	if f.Offset > 0 {
		jobs = jobs[min(f.Offset, len(jobs)):]
	}
	if f.Limit > 0 && len(jobs) > f.Limit {
		jobs = jobs[:f.Limit]
	}
	return jobs
}
