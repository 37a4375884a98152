package progress

import (
	"testing"
	"time"
)

// clock is a clock the test moves.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// The rate is the bytes since the newest sample at least a window old
// (the start, until a window has passed), over the time since it; ETA is
// what is left at that rate.
func TestSampler(t *testing.T) {
	const mib = 1 << 20
	clk := &clock{t: time.Unix(1e9, 0)}
	s := NewSampler(clk.now)
	s.Window = 4 * time.Second
	if got := s.Sample(0); got != 0 {
		t.Errorf("first sample: rate %g, want none", got)
	}
	steps := []struct {
		at       time.Duration // since the start
		done     int64
		wantRate float64
		wantETA  time.Duration
	}{
		{1 * time.Second, 10 * mib, 10 * mib, 9 * time.Second},       // (10-0)/1
		{2 * time.Second, 20 * mib, 10 * mib, 8 * time.Second},       // (20-0)/2
		{4 * time.Second, 40 * mib, 10 * mib, 6 * time.Second},       // (40-0)/4
		{5 * time.Second, 60 * mib, 50.0 / 4 * mib, 3 * time.Second}, // (60-10)/4: faster, the start is forgotten
		{6 * time.Second, 80 * mib, 60.0 / 4 * mib, 1 * time.Second}, // (80-20)/4
		{7 * time.Second, 100 * mib, 80.0 / 5 * mib, 0},              // (100-20)/5: done, no ETA
		{20 * time.Second, 100 * mib, 0, 0},                          // idle for a window: rate 0
		{21 * time.Second, 10 * mib, 0, 0},                           // fewer bytes (a restart): the rate starts over
		{22 * time.Second, 30 * mib, 20 * mib, 4 * time.Second},      // (30-10)/1; 70/20 = 3.5 s rounds to 4 s
	}
	start := clk.t
	for _, st := range steps {
		clk.t = start.Add(st.at)
		rate := s.Sample(st.done)
		if eta := ETA(st.done, 100*mib, rate); rate != st.wantRate || eta != st.wantETA {
			t.Errorf("at %s: rate %g, ETA %s; want %g, %s", st.at, rate, eta, st.wantRate, st.wantETA)
		}
	}
}

func TestETA(t *testing.T) {
	tests := []struct {
		done, total int64
		rate        float64
		want        time.Duration
	}{
		{0, 100, 10, 10 * time.Second},
		{50, 100, 10, 5 * time.Second},
		{100, 100, 10, 0},
		{120, 100, 10, 0},
		{0, 100, 0, 0},
		{0, 100, -1, 0},
		{0, 1 << 30, 3 << 20, 341 * time.Second}, // 341.33 s
	}
	for _, tt := range tests {
		if got := ETA(tt.done, tt.total, tt.rate); got != tt.want {
			t.Errorf("ETA(%d, %d, %g) = %s, want %s", tt.done, tt.total, tt.rate, got, tt.want)
		}
	}
}
