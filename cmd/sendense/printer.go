package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
)

// printer is how backup --wait, restore and watch print, as restic's
// ui/backup printers are: the command says what happened and each
// printer shows what its reader needs. A terminal gets live bars, a pipe
// plain lines, --json NDJSON (one object per line, nothing else on
// stdout). Methods are safe for concurrent use.
type printer interface {
	// Event passes on a bus message of what the command follows, as
	// received; problem, if not "", says what is wrong with it. The JSON
	// printer prints it as {"subject":…,"event":{…}} (see busLine); the
	// text printers print nothing (Println says it for people).
	Event(m *nats.Msg, problem string) error
	// Println prints a line for people that is never overwritten by
	// progress. The JSON printer prints nothing.
	Println(line string)
	// Notice prints a note about the command rather than the job (the job
	// is still queued, ...) on stderr, with --json too. When stderr is the
	// terminal the bars are drawn on, the terminal printer prints it above
	// them instead, so no bar overwrites it.
	Notice(line string)
	// Update shows the live state. The JSON printer prints nothing: a
	// backup's progress is in its events, a restore's result in Result.
	Update(s status)
	// Result prints a record of the outcome for programs (a restored
	// disk, the stored job). Only the JSON printer prints it, as one line.
	Result(v any) error
	// Finish ends the live view; the text printers print the summary.
	Finish(s summary)
}

// newPrinter returns the JSON printer for --json, else a terminal printer
// when w is a terminal, else the plain one (no escape codes).
func newPrinter(w io.Writer, asJSON bool) printer {
	switch {
	case asJSON:
		return newJSONPrinter(w)
	case isTerminal(w):
		return newTermPrinter(w)
	}
	return newPlainPrinter(w, nil)
}

// newLinePrinter is newPrinter for commands without a live view (watch,
// backup without --wait): JSON or plain lines, never bars.
func newLinePrinter(w io.Writer, asJSON bool) printer {
	if asJSON {
		return newJSONPrinter(w)
	}
	return newPlainPrinter(w, nil)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// lineOut is what the line printers share: the output, the notices'
// output, and the lock that keeps their lines whole.
type lineOut struct {
	mu   sync.Mutex
	w    io.Writer
	errw io.Writer // Notice's
}

func (p *lineOut) Notice(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.errw, line)
}

// jsonPrinter prints NDJSON: events and results, one object per line.
type jsonPrinter struct {
	lineOut
}

func newJSONPrinter(w io.Writer) *jsonPrinter {
	return &jsonPrinter{lineOut{w: w, errw: os.Stderr}}
}

func (p *jsonPrinter) Event(m *nats.Msg, problem string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return writeBusLine(p.w, m, problem)
}

func (p *jsonPrinter) Result(v any) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return json.NewEncoder(p.w).Encode(v)
}

func (*jsonPrinter) Println(string) {}
func (*jsonPrinter) Update(status)  {}
func (*jsonPrinter) Finish(summary) {}

// plainEvery bounds how often the plain printer prints progress.
const plainEvery = 5 * time.Second

// plainPrinter prints progress as lines: every disk and the total at the
// first update and then at most every plainEvery, and a disk's line once
// more when it is done.
type plainPrinter struct {
	lineOut
	now  func() time.Time
	last time.Time
	done map[int32]bool
}

func newPlainPrinter(w io.Writer, now func() time.Time) *plainPrinter {
	if now == nil {
		now = time.Now
	}
	return &plainPrinter{lineOut: lineOut{w: w, errw: os.Stderr}, now: now, done: map[int32]bool{}}
}

func (*plainPrinter) Event(*nats.Msg, string) error { return nil }
func (*plainPrinter) Result(any) error              { return nil }

func (p *plainPrinter) Println(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.w, line)
}

func (p *plainPrinter) Update(s status) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	due := p.last.IsZero() || now.Sub(p.last) >= plainEvery
	for _, d := range s.Disks {
		switch {
		case p.done[d.Key]:
		case d.Finished:
			p.done[d.Key] = true
			fmt.Fprintln(p.w, diskLine(d))
		case due:
			fmt.Fprintln(p.w, diskLine(d))
		}
	}
	if due {
		p.last = now
		fmt.Fprintln(p.w, totalLine(s))
	}
}

func (p *plainPrinter) Finish(s summary) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range s.lines() {
		fmt.Fprintln(p.w, l)
	}
}

func percent(done, total int64) float64 {
	if total <= 0 {
		return 0
	}
	return 100 * float64(done) / float64(total)
}

// diskLine is a disk's state as one plain line; an ended disk's shows its
// mean throughput.
func diskLine(d diskProgress) string {
	l := fmt.Sprintf("disk %d: %3.0f%% %s of %s", d.Key, percent(d.Done, d.Total), fmtBytes(d.Done), fmtBytes(d.Total))
	if d.Finished {
		if m := d.mean(); m > 0 {
			l += ", " + fmtRate(m)
		}
		l += ", done"
	}
	return l
}

// totalLine is the whole job's state as one plain line: bytes, rate, ETA.
func totalLine(s status) string {
	return fmt.Sprintf("total: %3.0f%% %s of %s, %s", percent(s.Done, s.Total), fmtBytes(s.Done), fmtBytes(s.Total), rateETA(s))
}

// rateETA is "12.0 MiB/s, ETA 9s" (no ETA when unknown).
func rateETA(s status) string {
	var b strings.Builder
	b.WriteString(fmtRate(s.Rate))
	if s.ETA > 0 {
		fmt.Fprintf(&b, ", ETA %s", s.ETA)
	}
	return b.String()
}

// termPrinter draws a bar per disk and one for the total (with the rate
// and ETA) with mpb; lines are printed through mpb (above the bars), so no
// bar overwrites them and no stale bar stays.
type termPrinter struct {
	mu    sync.Mutex
	w     io.Writer
	errw  io.Writer // Notice's, when it is not a terminal
	p     *mpb.Progress
	bars  map[int32]*mpb.Bar
	total *mpb.Bar
	// last is the status the total bar's decorator shows: read without
	// t.mu, which Update holds while it waits on mpb's bar goroutines.
	last atomic.Pointer[status]
}

func newTermPrinter(w io.Writer, opts ...mpb.ContainerOption) *termPrinter {
	opts = append([]mpb.ContainerOption{mpb.WithOutput(w), mpb.WithWidth(40), mpb.WithRefreshRate(150 * time.Millisecond)}, opts...)
	return &termPrinter{w: w, errw: os.Stderr, p: mpb.New(opts...), bars: map[int32]*mpb.Bar{}}
}

func (t *termPrinter) Notice(line string) {
	if isTerminal(t.errw) {
		t.Println(line)
		return
	}
	fmt.Fprintln(t.errw, line)
}

func (*termPrinter) Event(*nats.Msg, string) error { return nil }
func (*termPrinter) Result(any) error              { return nil }

func (t *termPrinter) Println(line string) {
	if _, err := t.p.Write([]byte(line + "\n")); err != nil {
		fmt.Fprintln(t.w, line) // the container has ended
	}
}

func (t *termPrinter) Update(s status) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.last.Store(&s)
	for _, d := range s.Disks {
		b, ok := t.bars[d.Key]
		if !ok {
			b = t.p.AddBar(d.Total,
				mpb.BarPriority(int(d.Key)),
				mpb.BarRemoveOnComplete(), // its "recorded" line stays
				mpb.PrependDecorators(decor.Name(fmt.Sprintf("disk %d ", d.Key)), decor.CountersKibiByte("% .1f / % .1f")),
				mpb.AppendDecorators(decor.Percentage(decor.WCSyncSpace)))
			t.bars[d.Key] = b
		}
		b.SetTotal(d.Total, false)
		b.SetCurrent(d.Done)
		if d.Finished {
			b.SetTotal(d.Total, true)
		}
	}
	if t.total == nil {
		// Total 0: the bar never completes by itself (mpb), Finish drops it.
		t.total = t.p.AddBar(0,
			mpb.BarPriority(math.MaxInt),
			mpb.PrependDecorators(decor.Name("total     "), decor.CountersKibiByte("% .1f / % .1f")),
			mpb.AppendDecorators(decor.Percentage(decor.WCSyncSpace), decor.Any(func(decor.Statistics) string {
				return rateETA(*t.last.Load())
			}, decor.WCSyncSpace)))
	}
	t.total.SetTotal(s.Total, false)
	t.total.SetCurrent(s.Done)
}

func (t *termPrinter) Finish(s summary) {
	t.mu.Lock()
	for _, b := range t.bars {
		b.Abort(true) // drop: the summary replaces the bars (done ones are gone already)
	}
	if t.total != nil {
		t.total.Abort(true)
	}
	t.mu.Unlock()
	t.p.Wait()
	for _, l := range s.lines() {
		fmt.Fprintln(t.w, l)
	}
}
