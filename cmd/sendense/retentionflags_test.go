package main

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/sendense/sendense/retention"
)

// TestRetentionFlags: the keep flags build the policy a forget command
// applies; bad counts and no policy at all are errors naming the flag.
func TestRetentionFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args    []string
		want    retention.Policy
		wantErr string
		is      error
	}{
		{args: []string{"--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "unlimited"},
			want: retention.Policy{Daily: 7, Weekly: 4, Monthly: retention.Unlimited}},
		{args: []string{"--keep-last", "3", "--keep-hourly", "24", "--keep-yearly", "-1", "--protect", "job-a", "--protect", "job-b"},
			want: retention.Policy{Last: 3, Hourly: 24, Yearly: retention.Unlimited, Protect: []string{"job-a", "job-b"}}},
		{args: nil, wantErr: "--keep-last", is: retention.ErrEmptyPolicy},
		{args: []string{"--protect", "job-a"}, wantErr: "no retention policy", is: retention.ErrEmptyPolicy},
		{args: []string{"--keep-daily", "0"}, wantErr: "no retention policy", is: retention.ErrEmptyPolicy},
		{args: []string{"--keep-daily", "-2"}, wantErr: `invalid argument "-2" for "--keep-daily"`},
		{args: []string{"--keep-weekly", "many"}, wantErr: `"many" is not a count`},
		{args: []string{"--keep-last", "1", "--protect", ""}, wantErr: "protected id 0 is empty", is: retention.ErrInvalidPolicy},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := &cobra.Command{Use: "forget"}
			policy := retentionFlags(cmd)
			err := cmd.ParseFlags(tc.args)
			var p retention.Policy
			if err == nil {
				p, err = policy()
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || tc.is != nil && !errors.Is(err, tc.is) {
					t.Errorf("error %v, want one saying %q (is %v)", err, tc.wantErr, tc.is)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Last != tc.want.Last || p.Hourly != tc.want.Hourly || p.Daily != tc.want.Daily || p.Weekly != tc.want.Weekly ||
				p.Monthly != tc.want.Monthly || p.Yearly != tc.want.Yearly || !slices.Equal(p.Protect, tc.want.Protect) {
				t.Errorf("policy %+v, want %+v", p, tc.want)
			}
		})
	}
}
