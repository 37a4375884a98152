package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
)

// The CLI shows progress the way restic's ui/backup does: a progressCounter
// is the one place that counts (bytes per disk, rate, ETA, the summary) and
// a printer only prints what it is given — live bars on a terminal, plain
// lines on a pipe. `--json` prints the bus events themselves (NDJSON) and
// uses neither.

// diskProgress is one disk's state as the CLI shows it.
type diskProgress struct {
	Key      int32
	Kind     string // full, incremental or restore
	Done     int64
	Total    int64
	Read     int64 // as the agent reported when the disk ended
	Written  int64
	Finished bool
}

// progressCounter counts one job's (or one restore's) progress per disk.
type progressCounter struct {
	mu    sync.Mutex
	now   func() time.Time
	start time.Time
	disks map[int32]*diskProgress
	order []int32
}

func newProgressCounter(now func() time.Time) *progressCounter {
	if now == nil {
		now = time.Now
	}
	return &progressCounter{now: now, start: now(), disks: map[int32]*diskProgress{}}
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
}

// ended records a disk's bytes read and written as reported at its end.
func (c *progressCounter) ended(key int32, read, written int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.disk(key)
	d.Read, d.Written, d.Finished = read, written, true
	if d.Total == 0 { // ended before any progress showed it
		d.Total = read
	}
	d.Done = d.Total
}

// diskView is a disk's state with its rate and ETA, as printed.
type diskView struct {
	diskProgress
	Rate float64       // bytes per second since the disk's first update
	ETA  time.Duration // 0 when unknown or done
}

// views returns every disk's state, in key order.
func (c *progressCounter) views() []diskView {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	out := make([]diskView, 0, len(c.order))
	for _, k := range c.order {
		d := c.disks[k]
		v := diskView{diskProgress: *d}
		// Disks are copied side by side: each one's rate counts from the
		// job's start.
		if s := now.Sub(c.start).Seconds(); s > 0 {
			v.Rate = float64(d.Done) / s
		}
		if v.Rate > 0 && !d.Finished && d.Total > d.Done {
			v.ETA = time.Duration(float64(d.Total-d.Done) / v.Rate * float64(time.Second)).Round(time.Second)
		}
		out = append(out, v)
	}
	return out
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
	out := []string{fmt.Sprintf("%s %s in %s: %d disk(s) of %s, %s read, %s written, %s/s",
		s.What, s.Outcome, s.Duration.Round(time.Millisecond), len(s.Disks), fmtBytes(size), fmtBytes(read), fmtBytes(written), fmtBytes(int64(tput)))}
	for _, k := range names {
		v := kinds[k]
		out = append(out, fmt.Sprintf("  %s: %d disk(s), %s read, %s written", k, v.n, fmtBytes(v.read), fmtBytes(v.written)))
	}
	return out
}

// printer prints progress: lines that stay (above any bars), the live
// state of each disk, and the summary at the end.
type printer interface {
	// Println prints a line that is never overwritten by progress.
	Println(line string)
	// Update shows every disk's current state.
	Update(disks []diskView)
	// Finish removes live progress and prints the summary.
	Finish(s summary)
}

// newPrinter returns a terminal printer when w is a terminal, else a plain
// one (no escape codes).
func newPrinter(w io.Writer) printer {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return newTermPrinter(w)
	}
	return newPlainPrinter(w, nil)
}

// plainEvery bounds how often the plain printer prints a disk's progress.
const plainEvery = 5 * time.Second

// plainPrinter prints progress as lines: a disk's first update, then at
// most every plainEvery, and once when it is done.
type plainPrinter struct {
	mu   sync.Mutex
	w    io.Writer
	now  func() time.Time
	last map[int32]time.Time
	done map[int32]bool
}

func newPlainPrinter(w io.Writer, now func() time.Time) *plainPrinter {
	if now == nil {
		now = time.Now
	}
	return &plainPrinter{w: w, now: now, last: map[int32]time.Time{}, done: map[int32]bool{}}
}

func (p *plainPrinter) Println(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.w, line)
}

func (p *plainPrinter) Update(disks []diskView) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for _, d := range disks {
		if p.done[d.Key] {
			continue
		}
		if last, ok := p.last[d.Key]; ok && !d.Finished && now.Sub(last) < plainEvery {
			continue
		}
		p.last[d.Key] = now
		p.done[d.Key] = d.Finished
		fmt.Fprintln(p.w, progressLine(d))
	}
}

func (p *plainPrinter) Finish(s summary) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range s.lines() {
		fmt.Fprintln(p.w, l)
	}
}

// progressLine is a disk's state as one plain line.
func progressLine(d diskView) string {
	pct := 0.0
	if d.Total > 0 {
		pct = 100 * float64(d.Done) / float64(d.Total)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "disk %d: %3.0f%% %s of %s, %s/s", d.Key, pct, fmtBytes(d.Done), fmtBytes(d.Total), fmtBytes(int64(d.Rate)))
	switch {
	case d.Finished:
		b.WriteString(", done")
	case d.ETA > 0:
		fmt.Fprintf(&b, ", ETA %s", d.ETA)
	}
	return b.String()
}

// termPrinter draws a bar per disk with mpb; lines are printed through
// mpb (above the bars), so no bar overwrites them and no stale bar stays.
type termPrinter struct {
	mu    sync.Mutex
	w     io.Writer
	p     *mpb.Progress
	bars  map[int32]*mpb.Bar
	views map[int32]diskView
}

func newTermPrinter(w io.Writer, opts ...mpb.ContainerOption) *termPrinter {
	opts = append([]mpb.ContainerOption{mpb.WithOutput(w), mpb.WithWidth(40), mpb.WithRefreshRate(150 * time.Millisecond)}, opts...)
	return &termPrinter{w: w, p: mpb.New(opts...), bars: map[int32]*mpb.Bar{}, views: map[int32]diskView{}}
}

func (t *termPrinter) Println(line string) {
	if _, err := t.p.Write([]byte(line + "\n")); err != nil {
		fmt.Fprintln(t.w, line) // the container has ended
	}
}

func (t *termPrinter) Update(disks []diskView) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, d := range disks {
		t.views[d.Key] = d
		b, ok := t.bars[d.Key]
		if !ok {
			key := d.Key
			b = t.p.AddBar(d.Total,
				mpb.BarRemoveOnComplete(), // its "recorded" line stays
				mpb.PrependDecorators(decor.Name(fmt.Sprintf("disk %d ", key)), decor.CountersKibiByte("% .1f / % .1f")),
				mpb.AppendDecorators(decor.Percentage(decor.WCSyncSpace), decor.Any(func(decor.Statistics) string {
					t.mu.Lock()
					v := t.views[key]
					t.mu.Unlock()
					s := fmtBytes(int64(v.Rate)) + "/s"
					if v.ETA > 0 {
						s += " ETA " + v.ETA.String()
					}
					return s
				}, decor.WCSyncSpace)))
			t.bars[d.Key] = b
		}
		b.SetTotal(d.Total, false)
		b.SetCurrent(d.Done)
		if d.Finished {
			b.SetTotal(d.Total, true)
		}
	}
}

func (t *termPrinter) Finish(s summary) {
	t.mu.Lock()
	for _, b := range t.bars {
		b.Abort(true) // drop: the summary replaces the bars (done ones are gone already)
	}
	t.mu.Unlock()
	t.p.Wait()
	for _, l := range s.lines() {
		fmt.Fprintln(t.w, l)
	}
}
