package store

import (
	"slices"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// TestJobsIDPrefixAndOffset: a short id selects the jobs whose id starts
// with it; Offset pages through the matches in Jobs' order.
func TestJobsIDPrefixAndOffset(t *testing.T) {
	c := newTestCatalog(t)
	var evs []schemas.Event
	for i, id := range []string{"abcd1111", "abcd2222", "abce3333", "zzzz4444"} {
		evs = append(evs, spec{job: id, at: t0.Add(time.Duration(i) * time.Minute)}.run()...)
	}
	c.mustApply(evs...)
	for _, tt := range []struct {
		f    backup.JobFilter
		want []string
	}{
		{backup.JobFilter{IDPrefix: "abcd"}, []string{"abcd2222", "abcd1111"}},
		{backup.JobFilter{IDPrefix: "abc"}, []string{"abce3333", "abcd2222", "abcd1111"}},
		{backup.JobFilter{IDPrefix: "zzzz4444"}, []string{"zzzz4444"}},
		{backup.JobFilter{IDPrefix: "nope"}, nil},
		{backup.JobFilter{Offset: 1, Limit: 2}, []string{"abce3333", "abcd2222"}},
		{backup.JobFilter{Offset: 3}, []string{"abcd1111"}},
		{backup.JobFilter{Offset: 9}, nil},
		{backup.JobFilter{IDPrefix: "abc", Offset: 1, Limit: 1}, []string{"abcd2222"}},
	} {
		jobs, err := c.Jobs(tt.f)
		if err != nil {
			t.Fatalf("jobs %+v: %v", tt.f, err)
		}
		var got []string
		for _, j := range jobs {
			got = append(got, j.ID)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("jobs %+v = %v, want %v", tt.f, got, tt.want)
		}
	}
}

// TestVMs: one row per VM with its newest job, its newest completed
// backup and its restore points.
func TestVMs(t *testing.T) {
	c := newTestCatalog(t)
	a := spec{job: "a", at: t0}
	b := spec{job: "b", at: t0.Add(time.Minute), vm: vm2}
	cc := spec{job: "c", at: t0.Add(2 * time.Minute)}
	d := spec{job: "d", at: t0.Add(3 * time.Minute)}
	c.mustApply(concat(a.run(), b.run(), cc.run(), d.failedRun(false))...)
	vms, err := c.VMs()
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 2 {
		t.Fatalf("vms = %+v, want 2", vms)
	}
	got := map[string]backup.VM{}
	for _, v := range vms {
		got[v.Name] = v
	}
	p := got[vm1.Name]
	if p.UUID != vm1.UUID || p.LastJobID != "d" || p.LastStatus != backup.StatusFailed || p.Points != 2 || p.Jobs != 3 || p.LastCompletedAt.IsZero() {
		t.Errorf("%s: %+v, want last job d failed, 2 points of 3 jobs", vm1.Name, p)
	}
	w := got[vm2.Name]
	if w.UUID != vm2.UUID || w.LastJobID != "b" || w.LastStatus != backup.StatusCompleted || w.Points != 1 || w.Jobs != 1 {
		t.Errorf("%s: %+v, want last job b completed, 1 point", vm2.Name, w)
	}
}
