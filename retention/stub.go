// Package retention decides which backup points a policy keeps (restic's
// forget semantics).
//
// STUB: a minimal stand-in with the API of the retention package another
// branch writes, so that the prune service builds and is tested before it
// lands; delete this file when merging that package.
package retention

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// ErrInvalidPolicy: a policy with a negative count or nothing to keep.
var ErrInvalidPolicy = errors.New("invalid retention policy")

// Policy says which points to keep.
type Policy struct {
	Last    int      `json:"keep_last,omitempty"`
	Hourly  int      `json:"keep_hourly,omitempty"`
	Daily   int      `json:"keep_daily,omitempty"`
	Weekly  int      `json:"keep_weekly,omitempty"`
	Monthly int      `json:"keep_monthly,omitempty"`
	Yearly  int      `json:"keep_yearly,omitempty"`
	Protect []string `json:"protect,omitempty"`
}

// Validate refuses negative counts and an empty policy.
func (p Policy) Validate() error {
	counts := []int{p.Last, p.Hourly, p.Daily, p.Weekly, p.Monthly, p.Yearly}
	for _, n := range counts {
		if n < 0 {
			return fmt.Errorf("keep count %d is negative: %w", n, ErrInvalidPolicy)
		}
	}
	if slices.Max(counts) == 0 && len(p.Protect) == 0 {
		return fmt.Errorf("policy keeps nothing: %w", ErrInvalidPolicy)
	}
	return nil
}

// Point is one backup point.
type Point struct {
	ID   string
	Time time.Time
}

// Decision is whether a point is kept, and why.
type Decision struct {
	Point   Point
	Keep    bool
	Reasons []string
}

// Apply decides for every point, newest first.
func Apply(points []Point, p Policy, loc *time.Location) ([]Decision, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if loc == nil {
		loc = time.Local
	}
	ps := slices.Clone(points)
	slices.SortStableFunc(ps, func(a, b Point) int { return b.Time.Compare(a.Time) })
	type bucket struct {
		n      int
		reason string
		key    func(time.Time) int
		last   int
		seen   bool
	}
	buckets := []*bucket{
		{n: p.Last, reason: "last snapshot", key: nil},
		{n: p.Hourly, reason: "hourly snapshot", key: func(t time.Time) int { return t.Year()*1000000 + int(t.Month())*10000 + t.Day()*100 + t.Hour() }},
		{n: p.Daily, reason: "daily snapshot", key: func(t time.Time) int { return t.Year()*10000 + int(t.Month())*100 + t.Day() }},
		{n: p.Weekly, reason: "weekly snapshot", key: func(t time.Time) int { y, w := t.ISOWeek(); return y*100 + w }},
		{n: p.Monthly, reason: "monthly snapshot", key: func(t time.Time) int { return t.Year()*100 + int(t.Month()) }},
		{n: p.Yearly, reason: "yearly snapshot", key: func(t time.Time) int { return t.Year() }},
	}
	out := make([]Decision, 0, len(ps))
	for _, pt := range ps {
		d := Decision{Point: pt}
		if slices.Contains(p.Protect, pt.ID) {
			d.Keep, d.Reasons = true, append(d.Reasons, "protected")
		}
		t := pt.Time.In(loc)
		for _, b := range buckets {
			if b.n == 0 {
				continue
			}
			if b.key == nil {
				b.n--
				d.Keep, d.Reasons = true, append(d.Reasons, b.reason)
				continue
			}
			k := b.key(t)
			if !b.seen || k != b.last {
				b.seen, b.last = true, k
				b.n--
				d.Keep, d.Reasons = true, append(d.Reasons, b.reason)
			}
		}
		out = append(out, d)
	}
	return out, nil
}
