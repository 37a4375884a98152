package progress

import "time"

// DefaultWindow is how far back a Sampler looks for its rate.
const DefaultWindow = 10 * time.Second

// Snapshot is one sample of a copy.
type Snapshot struct {
	Done, Total int64
	// Elapsed is the time since the sampler started.
	Elapsed time.Duration
	// Rate is bytes per second over the last Window (since the start
	// until a window has passed); 0 at the first sample.
	Rate float64
	// ETA is the time left at Rate; 0 when unknown (no rate yet) or done.
	ETA time.Duration
}

// point is one recorded sample.
type point struct {
	t    time.Time
	done int64
}

// Sampler samples one copy's byte counts (see the package doc).
type Sampler struct {
	// Window is how far back the rate looks. Default DefaultWindow.
	Window time.Duration

	now   func() time.Time
	start time.Time
	hist  []point // oldest first; hist[0] is at most Window before the newest
}

// NewSampler returns a sampler whose clock starts now; now nil is
// time.Now.
func NewSampler(now func() time.Time) *Sampler {
	if now == nil {
		now = time.Now
	}
	s := &Sampler{Window: DefaultWindow, now: now}
	s.start = now()
	s.hist = []point{{t: s.start}}
	return s
}

// Sample records done of total bytes now and returns the snapshot. A done
// lower than the last sample's (a disk that restarted) restarts the rate.
func (s *Sampler) Sample(done, total int64) Snapshot {
	now := s.now()
	if last := s.hist[len(s.hist)-1]; done < last.done {
		s.hist = s.hist[:0]
	}
	s.hist = append(s.hist, point{t: now, done: done})
	// Keep one point at or before the window's start, so the rate spans
	// the whole window.
	cut := 0
	for cut+1 < len(s.hist)-1 && now.Sub(s.hist[cut+1].t) >= s.Window {
		cut++
	}
	s.hist = s.hist[cut:]
	snap := Snapshot{Done: done, Total: total, Elapsed: now.Sub(s.start)}
	first := s.hist[0]
	if secs := now.Sub(first.t).Seconds(); secs > 0 && len(s.hist) > 1 {
		snap.Rate = float64(done-first.done) / secs
	}
	snap.ETA = ETA(done, total, snap.Rate)
	return snap
}

// ETA is the time left to copy total-done bytes at rate bytes per second,
// rounded to the second; 0 when unknown (rate 0) or nothing is left.
func ETA(done, total int64, rate float64) time.Duration {
	if rate <= 0 || total <= done {
		return 0
	}
	return time.Duration(float64(total-done) / rate * float64(time.Second)).Round(time.Second)
}
