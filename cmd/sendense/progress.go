package main

import (
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/sendense/sendense/internal/progress"
)

// The CLI shows progress the way restic's ui/backup does: a
// progressCounter keeps the state (bytes per disk, the summary) and a
// printer (printer.go) only prints what it is given: live bars on a
// terminal, plain lines on a pipe, NDJSON with --json.
//
// The rate is never computed twice. A backup's comes from its agent, the
// one sampler of its bytes (backup.progress's rate_bytes_per_sec: see
// rated); a restore is counted here, so its rate comes from this
// counter's own internal/progress.Sampler (see sample). ETA is derived
// from that rate with progress.ETA.

// diskProgress is one disk's state as the CLI shows it.
type diskProgress struct {
	Key      int32
	Kind     string // full, incremental or restore
	Done     int64
	Total    int64
	Read     int64 // as the agent reported when the disk ended
	Written  int64
	Finished bool
	// Took is the time from the start to the disk's end (0 while it
	// runs): its mean throughput is Done/Took, a summary, not a rate.
	Took time.Duration
}

// mean is an ended disk's mean throughput in bytes per second (0 while it
// runs).
func (d diskProgress) mean() float64 {
	if !d.Finished || d.Took <= 0 {
		return 0
	}
	return float64(d.Done) / d.Took.Seconds()
}

// status is what a printer shows live: every disk, in key order, and the
// whole job's bytes, rate and time left.
type status struct {
	Disks       []diskProgress
	Done, Total int64
	Rate        float64       // bytes per second; 0 when unknown
	ETA         time.Duration // 0 when unknown or done
}

// progressCounter counts one job's (or one restore's) progress per disk.
type progressCounter struct {
	mu      sync.Mutex
	now     func() time.Time
	start   time.Time
	disks   map[int32]*diskProgress
	order   []int32
	rate    float64
	sampler *progress.Sampler
}

func newProgressCounter(now func() time.Time) *progressCounter {
	if now == nil {
		now = time.Now
	}
	return &progressCounter{now: now, start: now(), disks: map[int32]*diskProgress{}, sampler: progress.NewSampler(now)}
}

// disk returns disk key's state, adding it; call with c.mu held.
func (c *progressCounter) disk(key int32) *diskProgress {
	d, ok := c.disks[key]
	if !ok {
		d = &diskProgress{Key: key}
		c.disks[key] = d
		c.order = append(c.order, key)
		sort.Slice(c.order, func(i, j int) bool { return c.order[i] < c.order[j] })
	}
	return d
}

// setKind records how a disk is copied.
func (c *progressCounter) setKind(key int32, kind string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.disk(key).Kind = kind
}

// update records a disk's bytes done of total.
func (c *progressCounter) update(key int32, done, total int64, finished bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.disk(key)
	if d.Finished {
		return // ended: its later updates (if any) change nothing
	}
	d.Done, d.Total, d.Finished = done, total, finished
	if finished {
		d.Took = c.now().Sub(c.start)
	}
}

// ended records a disk's bytes read and written as reported at its end.
func (c *progressCounter) ended(key int32, read, written int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.disk(key)
	if !d.Finished {
		d.Took = c.now().Sub(c.start)
	}
	d.Read, d.Written, d.Finished = read, written, true
	if d.Total == 0 { // ended before any progress showed it
		d.Total = read
	}
	d.Done = d.Total
}

// rated sets the job's rate as its agent measured it (a backup.progress
// event's rate_bytes_per_sec).
func (c *progressCounter) rated(rate float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rate = rate
}

// sample measures the rate from the counts themselves, for a copy this
// process counts (a restore).
func (c *progressCounter) sample() {
	c.mu.Lock()
	defer c.mu.Unlock()
	done, _ := c.sums()
	c.rate = c.sampler.Sample(done)
}

// sums is the bytes done and to do of every disk; call with c.mu held.
func (c *progressCounter) sums() (done, total int64) {
	for _, d := range c.disks {
		done += d.Done
		total += d.Total
	}
	return done, total
}

// status returns the state to show.
func (c *progressCounter) status() status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := status{Rate: c.rate}
	for _, k := range c.order {
		s.Disks = append(s.Disks, *c.disks[k])
	}
	s.Done, s.Total = c.sums()
	s.ETA = progress.ETA(s.Done, s.Total, s.Rate)
	return s
}

// summary is what the end of a backup or restore prints.
type summary struct {
	What     string // "backup of vm pgtest1", "restore of job X"
	Outcome  string // completed, failed, ...
	Duration time.Duration
	Disks    []diskProgress
}

func (c *progressCounter) summary(what, outcome string) summary {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := summary{What: what, Outcome: outcome, Duration: c.now().Sub(c.start)}
	for _, k := range c.order {
		s.Disks = append(s.Disks, *c.disks[k])
	}
	return s
}

// lines renders the summary: one line for the whole, one per kind of disk.
func (s summary) lines() []string {
	var read, written, size int64
	type kind struct {
		n             int
		read, written int64
	}
	kinds := map[string]*kind{}
	var names []string
	for _, d := range s.Disks {
		read += d.Read
		written += d.Written
		size += d.Total
		k := d.Kind
		if k == "" {
			k = "unknown"
		}
		if kinds[k] == nil {
			kinds[k] = &kind{}
			names = append(names, k)
		}
		kinds[k].n++
		kinds[k].read += d.Read
		kinds[k].written += d.Written
	}
	sort.Strings(names)
	secs := s.Duration.Seconds()
	tput := 0.0
	if secs > 0 {
		tput = float64(read) / secs
	}
	out := []string{fmt.Sprintf("%s %s in %s: %d disk(s) of %s, %s read, %s written, %s",
		s.What, s.Outcome, s.Duration.Round(time.Millisecond), len(s.Disks), fmtBytes(size), fmtBytes(read), fmtBytes(written), fmtRate(tput))}
	for _, k := range names {
		v := kinds[k]
		out = append(out, fmt.Sprintf("  %s: %d disk(s), %s read, %s written", k, v.n, fmtBytes(v.read), fmtBytes(v.written)))
	}
	return out
}
