package retention

import (
	"fmt"
	"strings"
)

// Unlimited is the count that never runs out (restic's "unlimited").
const Unlimited = -1

// Policy says which points to keep. Each count is how many periods of its
// kind keep their newest point: 0 means the rule is off, Unlimited (-1)
// every period.
type Policy struct {
	Last    int `json:"keep_last,omitempty"`    // the newest N points
	Hourly  int `json:"keep_hourly,omitempty"`  // the newest point of each of the newest N hours that have one
	Daily   int `json:"keep_daily,omitempty"`   // ... days
	Weekly  int `json:"keep_weekly,omitempty"`  // ... ISO weeks (Monday to Sunday)
	Monthly int `json:"keep_monthly,omitempty"` // ... months
	Yearly  int `json:"keep_yearly,omitempty"`  // ... years
	// Protect lists point ids that are always kept.
	Protect []string `json:"protect,omitempty"`
}

// rule is one count of a Policy with its name, in restic's order.
type rule struct {
	name  string // "last", "hourly", ...
	count int
}

func (p Policy) rules() []rule {
	return []rule{
		{"last", p.Last}, {"hourly", p.Hourly}, {"daily", p.Daily},
		{"weekly", p.Weekly}, {"monthly", p.Monthly}, {"yearly", p.Yearly},
	}
}

// Validate reports whether p can be applied: every count is -1 or more
// (ErrInvalidPolicy otherwise), at least one is not 0 (ErrEmptyPolicy
// otherwise), and no protected id is empty (ErrInvalidPolicy).
func (p Policy) Validate() error {
	empty := true
	for _, r := range p.rules() {
		if r.count < Unlimited {
			return fmt.Errorf("keep-%s %d: a count is 0 or more, or -1 for unlimited: %w", r.name, r.count, ErrInvalidPolicy)
		}
		if r.count != 0 {
			empty = false
		}
	}
	for i, id := range p.Protect {
		if id == "" {
			return fmt.Errorf("protected id %d is empty: %w", i, ErrInvalidPolicy)
		}
	}
	if empty {
		return ErrEmptyPolicy
	}
	return nil
}

// String describes p as restic does: "keep 7 daily, all monthly snapshots".
func (p Policy) String() string {
	var parts []string
	for _, r := range p.rules() {
		name := r.name
		if name == "last" {
			name = "latest"
		}
		switch {
		case r.count > 0:
			parts = append(parts, fmt.Sprintf("%d %s", r.count, name))
		case r.count == Unlimited:
			parts = append(parts, "all "+name)
		}
	}
	s := ""
	if len(parts) > 0 {
		s = strings.Join(parts, ", ") + " snapshots"
	}
	if len(p.Protect) > 0 {
		if s != "" {
			s += " and "
		}
		s += fmt.Sprintf("%d protected", len(p.Protect))
	}
	if s == "" {
		return "remove"
	}
	return "keep " + s
}
