package progress

import "time"

// DefaultWindow is how far back a Sampler looks for its rate.
const DefaultWindow = 10 * time.Second

// point is one recorded sample.
type point struct {
	t    time.Time
	done int64
}

// Sampler samples one copy's byte counts (see the package doc).
type Sampler struct {
	// Window is how far back the rate looks. Default DefaultWindow.
	Window time.Duration

	now  func() time.Time
	hist []point // oldest first; hist[0] is at most Window before the newest
}

// NewSampler returns a sampler whose clock starts now; now nil is
// time.Now.
func NewSampler(now func() time.Time) *Sampler {
	if now == nil {
		now = time.Now
	}
	return &Sampler{Window: DefaultWindow, now: now, hist: []point{{t: now()}}}
}

// Sample records done bytes now and returns the rate in bytes per second
// over the last Window (since the start until a window has passed); 0 at
// the first sample. A done lower than the last sample's (a disk that
// restarted) restarts the rate.
func (s *Sampler) Sample(done int64) float64 {
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
	first := s.hist[0]
	if secs := now.Sub(first.t).Seconds(); secs > 0 && len(s.hist) > 1 {
		return float64(done-first.done) / secs
	}
	return 0
}

// ETA is the time left to copy total-done bytes at rate bytes per second,
// rounded to the second; 0 when unknown (rate 0) or nothing is left.
func ETA(done, total int64, rate float64) time.Duration {
	if rate <= 0 || total <= done {
		return 0
	}
	return time.Duration(float64(total-done) / rate * float64(time.Second)).Round(time.Second)
}
