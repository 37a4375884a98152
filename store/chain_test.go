package store

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

func TestChain(t *testing.T) {
	both := []schemas.DiskRef{diskA, diskB}
	j1 := spec{job: "j1-full", disks: both, at: t0}
	j2 := spec{job: "j2-incr", disks: both, at: t0.Add(1 * time.Hour), typ: schemas.TypeIncremental, backing: "j1-full"}
	j3 := spec{job: "j3-failed", disks: both, at: t0.Add(2 * time.Hour), typ: schemas.TypeIncremental, backing: "j2-incr"}
	j4 := spec{job: "j4-incr", disks: both, at: t0.Add(3 * time.Hour), typ: schemas.TypeIncremental, backing: "j2-incr"}
	j5 := spec{job: "j5-running", disks: both, at: t0.Add(4 * time.Hour), typ: schemas.TypeIncremental, backing: "j4-incr"}
	off := spec{job: "j6-offsite", disks: both, at: t0.Add(30 * time.Minute), repo: "offsite"}
	// Two jobs of another VM completing at the same instant: job id decides.
	tieB := spec{job: "tie-b", vm: vm2, at: t0}
	tieA := spec{job: "tie-a", vm: vm2, at: t0}

	evs := concat(j1.run(), j2.run(), j3.failedRun(false), j4.run(), j5.run()[:2], off.run(), tieB.run(), tieA.run())
	slices.Reverse(evs) // newest first: the chain order must not depend on it

	c := newTestCatalog(t)
	c.mustApply(evs...)

	jobIDs := func(links []backup.Link) []string {
		var ids []string
		for _, l := range links {
			ids = append(ids, l.JobID)
		}
		return ids
	}
	for _, d := range both {
		links, err := c.Chain(vm1.UUID, d.Key, "default")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := jobIDs(links), []string{"j1-full", "j2-incr", "j4-incr"}; !slices.Equal(got, want) {
			t.Errorf("disk %d chain = %v, want %v (failed and running jobs are never links)", d.Key, got, want)
		}
		if links[1].Backing != "j1-full" || links[2].Backing != "j2-incr" || links[0].Backing != "" {
			t.Errorf("disk %d backings: %q %q %q", d.Key, links[0].Backing, links[1].Backing, links[2].Backing)
		}
		if links[2].BackupType != schemas.TypeIncremental || links[2].ChangeID != j4.changeID(d) || links[2].Target != j4.target(d) {
			t.Errorf("disk %d head link = %+v", d.Key, links[2])
		}
		head, err := c.ChainHead(vm1.UUID, d.Key, "default")
		if err != nil || head.JobID != "j4-incr" {
			t.Errorf("disk %d head = %+v, %v", d.Key, head, err)
		}
	}

	ties, err := c.Chain(vm2.UUID, diskA.Key, "default")
	if err != nil {
		t.Fatal(err)
	}
	if got := jobIDs(ties); !slices.Equal(got, []string{"tie-a", "tie-b"}) {
		t.Errorf("same-time chain = %v, want [tie-a tie-b]", got)
	}

	chains, err := c.Chains(vm1.UUID, "default")
	if err != nil {
		t.Fatal(err)
	}
	if len(chains) != 2 || chains[0].DiskKey != diskA.Key || chains[1].DiskKey != diskB.Key || len(chains[1].Links) != 3 {
		t.Errorf("chains(default) = %+v", chains)
	}
	all, err := c.Chains(vm1.UUID, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 4 || all[0].Repository != "default" || all[2].Repository != "offsite" || all[2].Links[0].JobID != "j6-offsite" {
		t.Errorf("chains(all repos) = %+v", all)
	}

	for _, q := range []struct {
		vm   string
		disk int32
		repo string
	}{{vm1.UUID, 9999, "default"}, {vm1.UUID, diskA.Key, "nowhere"}, {"no-such-vm", diskA.Key, "default"}} {
		if _, err := c.ChainHead(q.vm, q.disk, q.repo); !errors.Is(err, backup.ErrNotFound) {
			t.Errorf("ChainHead(%v) error = %v, want ErrNotFound", q, err)
		}
		if links, err := c.Chain(q.vm, q.disk, q.repo); err != nil || len(links) != 0 {
			t.Errorf("Chain(%v) = %v, %v; want empty", q, links, err)
		}
	}
	if chains, err := c.Chains("no-such-vm", ""); err != nil || len(chains) != 0 {
		t.Errorf("Chains(unknown) = %v, %v", chains, err)
	}

	// The running job completes: it becomes the head.
	c.mustApply(j5.run()...)
	if head, err := c.ChainHead(vm1.UUID, diskB.Key, "default"); err != nil || head.JobID != "j5-running" {
		t.Errorf("head after j5 completed = %+v, %v", head, err)
	}
}

func TestJobs(t *testing.T) {
	c := newTestCatalog(t)
	a := spec{job: "a", at: t0, attempt: 2}
	b := spec{job: "b", at: t0.Add(time.Minute), vm: vm2}
	cc := spec{job: "c", at: t0.Add(2 * time.Minute)}
	d := spec{job: "d", at: t0.Add(3 * time.Minute), vm: schemas.VMRef{Name: "ghost"}}
	c.mustApply(concat(cc.failedRun(false), a.run(), b.run(), []schemas.Event{d.rejected()})...)

	ids := func(f backup.JobFilter) []string {
		t.Helper()
		jobs, err := c.Jobs(f)
		if err != nil {
			t.Fatalf("jobs %+v: %v", f, err)
		}
		var out []string
		for _, j := range jobs {
			out = append(out, j.ID)
		}
		return out
	}
	tests := []struct {
		name string
		f    backup.JobFilter
		want []string
	}{
		{"all newest first", backup.JobFilter{}, []string{"d", "c", "b", "a"}},
		{"limit", backup.JobFilter{Limit: 2}, []string{"d", "c"}},
		{"vm by name", backup.JobFilter{VM: "pgtest1"}, []string{"c", "a"}},
		{"vm by uuid, any case", backup.JobFilter{VM: "50123456-AAAA-bbbb-cccc-000000000002"}, []string{"b"}},
		{"vm by moref", backup.JobFilter{VM: "vm-101"}, []string{"c", "a"}},
		{"status", backup.JobFilter{Status: backup.StatusCompleted}, []string{"b", "a"}},
		{"vm and status", backup.JobFilter{VM: "pgtest1", Status: backup.StatusFailed}, []string{"c"}},
		{"rejected", backup.JobFilter{Status: backup.StatusRejected}, []string{"d"}},
		{"nothing", backup.JobFilter{VM: "nope"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ids(tt.f); !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	if _, err := c.Jobs(backup.JobFilter{Status: "done"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown status error = %v, want ErrInvalid", err)
	}

	// An earlier event arriving late (of an earlier attempt: history of
	// the completed job) moves the job in the index.
	c.mustApply(spec{job: "a", at: t0.Add(-time.Hour)}.rejected())
	if got := ids(backup.JobFilter{}); got[len(got)-1] != "a" {
		t.Errorf("order after late event = %v", got)
	}
	c.mustApply(spec{job: "a", at: t0.Add(time.Hour)}.failed(true)) // created_at is the earliest event: "a" stays oldest
	if got := ids(backup.JobFilter{}); got[len(got)-1] != "a" {
		t.Errorf("order after a later event = %v", got)
	}
	st, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Jobs != 4 || st.ByStatus[backup.StatusCompleted] != 2 || st.ByStatus[backup.StatusFailed] != 1 || st.ByStatus[backup.StatusRejected] != 1 || st.Links != 2 {
		t.Errorf("stats = %+v", st)
	}
}

// TestChainDiskSubset: a VM's later backups without a disk (removed, or
// not in that job) leave that disk's chain and head where its last backup
// put them; the others go on.
func TestChainDiskSubset(t *testing.T) {
	j1 := spec{job: "j1", disks: []schemas.DiskRef{diskA, diskB}, at: t0}
	j2 := spec{job: "j2", disks: []schemas.DiskRef{diskA}, at: t0.Add(time.Hour), typ: schemas.TypeIncremental, backing: "j1"}
	j3 := spec{job: "j3", disks: []schemas.DiskRef{diskA}, at: t0.Add(2 * time.Hour), typ: schemas.TypeIncremental, backing: "j2"}
	c := newTestCatalog(t)
	c.mustApply(concat(j3.run(), j1.run(), j2.run())...)
	for _, tt := range []struct {
		disk      int32
		wantChain []string
	}{{diskA.Key, []string{"j1", "j2", "j3"}}, {diskB.Key, []string{"j1"}}} {
		links, err := c.Chain(vm1.UUID, tt.disk, "default")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, l := range links {
			if l.DiskKey != tt.disk {
				t.Errorf("disk %d chain holds a link of disk %d", tt.disk, l.DiskKey)
			}
			got = append(got, l.JobID)
		}
		if !slices.Equal(got, tt.wantChain) {
			t.Errorf("disk %d chain = %v, want %v", tt.disk, got, tt.wantChain)
		}
		head, err := c.ChainHead(vm1.UUID, tt.disk, "default")
		if want := tt.wantChain[len(tt.wantChain)-1]; err != nil || head.JobID != want || head.DiskKey != tt.disk {
			t.Errorf("disk %d head = %s/%d, %v; want %s", tt.disk, head.JobID, head.DiskKey, err, want)
		}
	}
	if _, err := c.ChainHead(vm1.UUID, 2999, "default"); !errors.Is(err, backup.ErrNotFound) {
		t.Errorf("head of a disk never backed up: %v, want ErrNotFound", err)
	}
	chains, err := c.Chains(vm1.UUID, "")
	if err != nil || len(chains) != 2 || len(chains[0].Links) != 3 || len(chains[1].Links) != 1 || chains[0].DiskKey != diskA.Key {
		t.Errorf("chains = %+v, %v", chains, err)
	}
	if st, err := c.Stats(); err != nil || st.Links != 4 {
		t.Errorf("stats links = %d, %v; want 4", st.Links, err)
	}
}
