package node

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/sendense/sendense/copier"
	"github.com/sendense/sendense/internal/progress"
	"github.com/sendense/sendense/schemas"
)

// jobProgress publishes one job's backup.progress. It is the job's one
// progress sampler: each disk's copier only counts its bytes (a
// copier.Progress), and every ProgressInterval, and at once when a disk
// ends, jobProgress reads the counts, takes the rate from a
// progress.Sampler and publishes. Nothing else throttles or computes a
// rate on the agent's side.
type jobProgress struct {
	a *Agent
	r *request

	mu     sync.Mutex
	disks  []schemas.DiskProgress // the planned totals; done and ended disks' counts set on publish
	counts []*copier.Progress     // by disk, as disks
	index  map[int32]int
	last   []schemas.DiskProgress // as last published

	sampler *progress.Sampler
	seq     int64
	kick    chan struct{}
	done    chan struct{}
	once    sync.Once
}

func newJobProgress(a *Agent, r *request, runs []*diskRun) *jobProgress {
	p := &jobProgress{a: a, r: r, index: map[int32]int{}, kick: make(chan struct{}, 1), done: make(chan struct{}),
		sampler: progress.NewSampler(nil)}
	for i, d := range runs {
		var total int64
		for _, e := range d.plan.extents {
			total += e.Length
		}
		p.disks = append(p.disks, schemas.DiskProgress{Disk: d.plan.ref, BytesTotal: total})
		p.counts = append(p.counts, new(copier.Progress))
		p.index[d.plan.disk.Key] = i
	}
	return p
}

// counter is the counter the copy of disk key counts its bytes in.
func (p *jobProgress) counter(key int32) *copier.Progress { return p.counts[p.index[key]] }

// finished records that disk key is copied (bytes read) and publishes
// soon, without waiting for the next interval.
func (p *jobProgress) finished(key int32, bytes int64) {
	p.mu.Lock()
	i := p.index[key]
	p.disks[i].BytesDone, p.disks[i].BytesTotal, p.disks[i].Done = bytes, bytes, true
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *jobProgress) run(ctx context.Context) {
	t := time.NewTicker(p.a.cfg.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			p.publish(ctx)
			return
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.kick:
		}
		p.publish(ctx)
	}
}

func (p *jobProgress) stop() { p.once.Do(func() { close(p.done) }) }

// sample reads every disk's count into a progress event; changed is false
// when nothing moved since the last event and no disk is being copied.
func (p *jobProgress) sample() (ev *schemas.Progress, changed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	copying := false
	for i := range p.disks {
		c := p.counts[i]
		if p.disks[i].Done || c.BytesTotal() == 0 {
			continue // ended (counts set by finished) or not started
		}
		p.disks[i].BytesDone, p.disks[i].BytesTotal = c.BytesDone(), c.BytesTotal()
		copying = true
	}
	changed = copying || len(p.last) == 0 || !slices.Equal(p.disks, p.last)
	if !changed {
		return nil, false
	}
	p.last = append(p.last[:0], p.disks...)
	p.seq++
	ev = &schemas.Progress{Header: p.a.header(p.r, schemas.NameProgress, 0, p.seq), Seq: p.seq}
	ev.Disks = append(ev.Disks, p.disks...)
	for _, d := range p.disks {
		ev.BytesDone += d.BytesDone
		ev.BytesTotal += d.BytesTotal
	}
	ev.RateBytesPerSec = p.sampler.Sample(ev.BytesDone)
	return ev, true
}

func (p *jobProgress) publish(ctx context.Context) {
	ev, changed := p.sample()
	if !changed {
		return
	}
	if err := p.a.publish(ctx, ev); err != nil {
		p.r.log.Debug().Err(err).Msg("publish progress")
	}
}
