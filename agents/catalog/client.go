package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
)

// DefaultTimeout bounds each Client request, under the caller's context
// (bus.Request): a reply lost with a NATS server costs a caller that polls
// 5 s, never its whole deadline. The catalog answers in milliseconds.
const DefaultTimeout = 5 * time.Second

// Client asks the catalog service over NATS request/reply. It is safe for
// concurrent use. Errors: a *bus.ServiceError for an error answer (matching
// backup.ErrNotFound for 404 and ErrBadRequest for 400), ErrUnavailable
// when no catalog service is connected, or the connection's error
// (timeout, closed).
type Client struct {
	nc *nats.Conn
}

// NewClient returns a Client using nc.
func NewClient(nc *nats.Conn) *Client { return &Client{nc: nc} }

// Job returns one job. A job the catalog does not know gives an error
// matching backup.ErrNotFound.
func (c *Client) Job(ctx context.Context, id string) (backup.Job, error) {
	var j backup.Job
	if err := c.call(ctx, SubjectJobGet, JobRequest{ID: id}, &j); err != nil {
		return backup.Job{}, fmt.Errorf("get job %s: %w", id, err)
	}
	return j, nil
}

// Jobs returns the jobs matching f, newest first. An unknown status gives
// an error matching ErrBadRequest.
func (c *Client) Jobs(ctx context.Context, f backup.JobFilter) ([]backup.Job, error) {
	var jobs []backup.Job
	req := JobsRequest{VM: f.VM, Status: f.Status, IDPrefix: f.IDPrefix, Offset: f.Offset, Limit: f.Limit}
	if err := c.call(ctx, SubjectJobsList, req, &jobs); err != nil {
		return nil, fmt.Errorf("list jobs (vm %q, status %q): %w", f.VM, f.Status, err)
	}
	if jobs == nil {
		jobs = []backup.Job{}
	}
	return jobs, nil
}

// MinShortID is the shortest job id prefix ResolveJob accepts, as git
// and restic ask for.
const MinShortID = 4

// ResolveJob returns the job whose id is idOrPrefix, else the one job
// whose id starts with it (a short id of at least MinShortID characters).
// None gives an error matching backup.ErrNotFound; several give an
// *AmbiguousError (matching ErrAmbiguous) naming them.
func (c *Client) ResolveJob(ctx context.Context, idOrPrefix string) (backup.Job, error) {
	j, err := c.Job(ctx, idOrPrefix)
	if err == nil || !errors.Is(err, backup.ErrNotFound) {
		return j, err
	}
	if len(idOrPrefix) < MinShortID {
		return backup.Job{}, fmt.Errorf("job %s: %w (a short id needs at least %d characters)", idOrPrefix, backup.ErrNotFound, MinShortID)
	}
	jobs, err := c.Jobs(ctx, backup.JobFilter{IDPrefix: idOrPrefix, Limit: maxCandidates + 1})
	if err != nil {
		return backup.Job{}, fmt.Errorf("resolve job id %s: %w", idOrPrefix, err)
	}
	switch len(jobs) {
	case 0:
		return backup.Job{}, fmt.Errorf("job %s: %w", idOrPrefix, backup.ErrNotFound)
	case 1:
		return jobs[0], nil
	}
	return backup.Job{}, &AmbiguousError{Prefix: idOrPrefix, Candidates: jobs[:min(len(jobs), maxCandidates)], More: len(jobs) > maxCandidates}
}

// maxCandidates bounds the jobs an AmbiguousError lists.
const maxCandidates = 10

// VMs returns every VM the catalog has a job of, by name.
func (c *Client) VMs(ctx context.Context) ([]backup.VM, error) {
	var vms []backup.VM
	if err := c.call(ctx, SubjectVMsList, struct{}{}, &vms); err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	if vms == nil {
		vms = []backup.VM{}
	}
	return vms, nil
}

// Chain returns the completed backups of (vmUUID, diskKey, repo), oldest
// first; none gives an empty slice. repo "" means the default repository.
func (c *Client) Chain(ctx context.Context, vmUUID string, diskKey int32, repo string) ([]backup.Link, error) {
	var links []backup.Link
	if err := c.call(ctx, SubjectChainGet, ChainRequest{VMUUID: vmUUID, DiskKey: diskKey, Repository: repo}, &links); err != nil {
		return nil, fmt.Errorf("get chain of disk %d of vm %s in repository %q: %w", diskKey, vmUUID, repo, err)
	}
	if links == nil {
		links = []backup.Link{}
	}
	return links, nil
}

// ChainHead returns the newest completed backup of (vmUUID, diskKey,
// repo): the base of the next incremental. None gives an error matching
// backup.ErrNotFound. repo "" means the default repository.
func (c *Client) ChainHead(ctx context.Context, vmUUID string, diskKey int32, repo string) (backup.Link, error) {
	var l backup.Link
	if err := c.call(ctx, SubjectChainHead, ChainRequest{VMUUID: vmUUID, DiskKey: diskKey, Repository: repo}, &l); err != nil {
		return backup.Link{}, fmt.Errorf("get chain head of disk %d of vm %s in repository %q: %w", diskKey, vmUUID, repo, err)
	}
	return l, nil
}

// Chains returns every disk's chain of a VM in repo, or in every
// repository when repo is empty.
func (c *Client) Chains(ctx context.Context, vmUUID, repo string) ([]backup.Chain, error) {
	var chains []backup.Chain
	if err := c.call(ctx, SubjectChainsList, ChainsRequest{VMUUID: vmUUID, Repository: repo}, &chains); err != nil {
		return nil, fmt.Errorf("get chains of vm %s in repository %q: %w", vmUUID, repo, err)
	}
	if chains == nil {
		chains = []backup.Chain{}
	}
	return chains, nil
}

// Poison returns the newest limit poison records (DefaultPoisonLimit when
// limit <= 0), oldest first, each payload cut to MaxPoisonRawReply bytes.
func (c *Client) Poison(ctx context.Context, limit int) ([]backup.PoisonRecord, error) {
	var recs []backup.PoisonRecord
	if err := c.call(ctx, SubjectPoisonList, PoisonRequest{Limit: limit}, &recs); err != nil {
		return nil, fmt.Errorf("list poison records: %w", err)
	}
	if recs == nil {
		recs = []backup.PoisonRecord{}
	}
	return recs, nil
}

// Stats returns the catalog's counts.
func (c *Client) Stats(ctx context.Context) (backup.Stats, error) {
	var st backup.Stats
	if err := c.call(ctx, SubjectStats, struct{}{}, &st); err != nil {
		return backup.Stats{}, fmt.Errorf("catalog stats: %w", err)
	}
	return st, nil
}

func (c *Client) call(ctx context.Context, subject string, req, reply any) error {
	err := bus.Request(ctx, c.nc, subject, req, reply, DefaultTimeout, sentinels)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// AwaitInterval is how often Await asks the catalog.
const AwaitInterval = 100 * time.Millisecond

// Await asks for job id every AwaitInterval until done says its record is
// the one the caller waits for (for example: status completed), and
// returns that record. A job the catalog does not know yet, or a catalog
// that does not answer for a moment, is waited for; ctx bounds the wait.
// What the catalog shows is durable: it applied the events from the
// stream, so an outcome Await returns was stored, never just seen on the
// wire.
func (c *Client) Await(ctx context.Context, id string, done func(backup.Job) bool) (backup.Job, error) {
	var last error
	for {
		j, err := c.Job(ctx, id)
		if err == nil && done(j) {
			return j, nil
		}
		last = err
		select {
		case <-ctx.Done():
			if last != nil {
				return backup.Job{}, fmt.Errorf("await job %s: %w (last answer: %w)", id, context.Cause(ctx), last)
			}
			return j, fmt.Errorf("await job %s (status %s): %w", id, j.Status, context.Cause(ctx))
		case <-time.After(AwaitInterval):
		}
	}
}
