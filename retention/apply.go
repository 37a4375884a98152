package retention

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Point is one backup point: an id (a job id) and when it was taken.
type Point struct {
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
}

// Decision is what Apply decided for one point.
type Decision struct {
	Point Point `json:"point"`
	Keep  bool  `json:"keep"`
	// Reasons say why a kept point is kept, in restic's words and order:
	// "protected" first, then "last snapshot", "hourly snapshot", ...
	// "yearly snapshot"; "oldest daily snapshot" and so on where a bucket
	// kept the oldest point although it shared its period (see the
	// package doc). Empty for a removed point.
	Reasons []string `json:"reasons,omitempty"`
}

// ReasonProtected is the reason of a point kept because the policy
// protects it.
const ReasonProtected = "protected"

// periodOf returns a number naming the period of t for a rule; points of
// one period share it. nr is the point's index, newest first, so that
// keep-last gives each point a period of its own.
func periodOf(rule string, t time.Time, nr int) int {
	switch rule {
	case "hourly":
		return ((t.Year()*100+int(t.Month()))*100+t.Day())*100 + t.Hour()
	case "daily":
		return (t.Year()*100+int(t.Month()))*100 + t.Day()
	case "weekly":
		y, w := t.ISOWeek()
		return y*100 + w
	case "monthly":
		return t.Year()*100 + int(t.Month())
	case "yearly":
		return t.Year()
	}
	return nr // last
}

// bucket is a rule while Apply walks the points.
type bucket struct {
	rule   string
	left   int  // count left; -1 unlimited
	last   int  // the period of the last point this bucket kept
	filled bool // last is set
}

// Apply decides for every point whether p keeps it, and why. Points may
// come in any order; the decisions come newest first, equal times ordered
// by id, so the result is the same for the same points and policy. Periods
// are taken in loc (nil: UTC). An invalid policy (Policy.Validate) or a
// point with an empty or repeated id (ErrInvalidPoint) is an error and
// nothing is decided. Protected ids that name no point are ignored.
func Apply(points []Point, p Policy, loc *time.Location) ([]Decision, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if loc == nil {
		loc = time.UTC
	}
	seen := make(map[string]bool, len(points))
	for i, pt := range points {
		if pt.ID == "" {
			return nil, fmt.Errorf("point %d (%s) has no id: %w", i, pt.Time.Format(time.RFC3339), ErrInvalidPoint)
		}
		if seen[pt.ID] {
			return nil, fmt.Errorf("point id %s given twice: %w", pt.ID, ErrInvalidPoint)
		}
		seen[pt.ID] = true
	}
	protected := make(map[string]bool, len(p.Protect))
	for _, id := range p.Protect {
		protected[id] = true
	}

	sorted := slices.Clone(points)
	slices.SortFunc(sorted, func(a, b Point) int {
		if c := b.Time.Compare(a.Time); c != 0 {
			return c // newest first
		}
		return strings.Compare(a.ID, b.ID)
	})

	var buckets []*bucket
	for _, r := range p.rules() {
		if r.count != 0 {
			buckets = append(buckets, &bucket{rule: r.name, left: r.count})
		}
	}
	out := make([]Decision, len(sorted))
	for nr, pt := range sorted {
		d := Decision{Point: pt}
		if protected[pt.ID] {
			d.Keep = true
			d.Reasons = append(d.Reasons, ReasonProtected)
		}
		oldest := nr == len(sorted)-1
		local := pt.Time.In(loc)
		for _, b := range buckets {
			if b.left == 0 {
				continue
			}
			period := periodOf(b.rule, local, nr)
			same := b.filled && period == b.last
			if same && !oldest {
				continue
			}
			reason := b.rule + " snapshot"
			if same {
				reason = "oldest " + reason
			}
			d.Keep = true
			d.Reasons = append(d.Reasons, reason)
			b.last, b.filled = period, true
			if b.left > 0 {
				b.left--
			}
		}
		out[nr] = d
	}
	return out, nil
}
