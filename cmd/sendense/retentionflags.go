package main

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/sendense/sendense/retention"
)

// retentionFlags registers the retention policy flags on cmd
// (--keep-last, --keep-hourly, --keep-daily, --keep-weekly,
// --keep-monthly, --keep-yearly, each a count or "unlimited", and
// --protect JOB, repeatable) and returns the function that builds the
// policy from them once the flags are parsed. The policy is validated: no
// keep flag at all is an error wrapping retention.ErrEmptyPolicy, as
// restic refuses `forget` without a policy.
//
//	policy := retentionFlags(cmd)
//	...
//	RunE: func(cmd *cobra.Command, _ []string) error { p, err := policy(); ... }
func retentionFlags(cmd *cobra.Command) func() (retention.Policy, error) {
	var p retention.Policy
	f := cmd.Flags()
	for _, k := range []struct {
		name string
		dst  *int
		what string
	}{
		{"keep-last", &p.Last, "the newest N points"},
		{"keep-hourly", &p.Hourly, "the newest point of each of the last N hours that have one"},
		{"keep-daily", &p.Daily, "the newest point of each of the last N days that have one"},
		{"keep-weekly", &p.Weekly, "the newest point of each of the last N weeks (ISO, Monday first) that have one"},
		{"keep-monthly", &p.Monthly, "the newest point of each of the last N months that have one"},
		{"keep-yearly", &p.Yearly, "the newest point of each of the last N years that have one"},
	} {
		f.Var((*keepCount)(k.dst), k.name, "keep "+k.what+` (N or "unlimited")`)
	}
	f.StringArrayVar(&p.Protect, "protect", nil, "never remove this point (job id); repeat for more")
	return func() (retention.Policy, error) {
		if err := p.Validate(); err != nil {
			if errors.Is(err, retention.ErrEmptyPolicy) {
				return p, fmt.Errorf("no retention policy: give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly: %w", err)
			}
			return p, err
		}
		return p, nil
	}
}

// keepCount is a keep flag's value: a count of 0 or more, or "unlimited"
// (also -1), stored as retention.Unlimited.
type keepCount int

func (k *keepCount) String() string {
	if *k == retention.Unlimited {
		return "unlimited"
	}
	return strconv.Itoa(int(*k))
}

func (k *keepCount) Set(s string) error {
	if s == "unlimited" {
		*k = retention.Unlimited
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < retention.Unlimited {
		return fmt.Errorf("%q is not a count: want a number of 0 or more, or unlimited", s)
	}
	*k = keepCount(n)
	return nil
}

func (k *keepCount) Type() string { return "count" }
