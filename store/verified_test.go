package store

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// verified is a backup.verified of s's point at completed+after, every
// disk with status st.
func (s spec) verified(after time.Duration, st string) *schemas.Verified {
	s = s.withDefaults()
	at := s.completedAt().Add(after)
	seq := at.UnixMilli()
	ev := &schemas.Verified{
		Header:     s.header(schemas.NameVerified, 0, seq, at),
		Repository: s.repo, Seq: seq, Status: st,
	}
	for _, d := range s.disks {
		vd := schemas.VerifiedDisk{Disk: d, Target: s.target(d), Status: st, BytesRead: d.CapacityBytes}
		if st == schemas.VerifyFailed {
			vd.Problem, vd.Detail, vd.ChunkIndex, vd.ChunkOffset = "data_mismatch", "chunk 3 differs", 3, 3<<20
		}
		ev.Disks = append(ev.Disks, vd)
	}
	return ev
}

// TestVerifiedEvents: the catalog keeps the latest backup.verified of a
// completed job (by time, whatever the order applied), shows it on each
// disk and chain link, keeps every verification's event, and a replay in
// any order gives the same catalog.
func TestVerifiedEvents(t *testing.T) {
	s := spec{job: "v1"}
	c := newTestCatalog(t)
	runEvs := from("node1", s.run()...)
	c.mustApply(runEvs...)
	ok := by(HubAgent, s.verified(time.Hour, schemas.VerifyOK))
	failed := by(HubAgent, s.verified(2*time.Hour, schemas.VerifyFailed))
	c.mustApply(failed, ok) // the later verification wins, not the later applied
	j := c.job("v1")
	if j.Status != backup.StatusCompleted || j.Verification == nil || j.Verification.Status != schemas.VerifyFailed ||
		j.Verification.Disks[0].ChunkOffset != 3<<20 || j.Disks[0].Verified != schemas.VerifyFailed {
		t.Fatalf("job after two verifications: %+v", j)
	}
	if len(j.EventIDs) != 5 {
		t.Errorf("event ids %v, want started, changeid, completed and both verifications", j.EventIDs)
	}
	head, err := c.ChainHead(vm1.UUID, diskA.Key, "default")
	if err != nil || head.Verified != schemas.VerifyFailed {
		t.Fatalf("head %+v, %v: want verified failed", head, err)
	}
	again := by(HubAgent, s.verified(3*time.Hour, schemas.VerifyOK))
	c.mustApply(again)
	if head, _ := c.ChainHead(vm1.UUID, diskA.Key, "default"); head.Verified != schemas.VerifyOK {
		t.Errorf("head after a newer ok verification: %+v", head)
	}
	requireOrderFree(t, append(runEvs, ok, failed, again), 10, 7)
}

// TestVerifiedRefused: rule 7 for backup.verified.
func TestVerifiedRefused(t *testing.T) {
	s := spec{job: "vr1"}
	running := spec{job: "vr2"}
	wrongTarget := s.verified(time.Hour, schemas.VerifyOK)
	wrongTarget.Disks[0].Target = "x/2000/vr1.qcow2"
	badID := s.verified(time.Hour, schemas.VerifyOK)
	badID.ID = "vr1.1.verified.0.0"
	for name, tc := range map[string]struct {
		ev   schemas.Event
		want string
	}{
		"agent":    {by("node1", s.verified(time.Hour, schemas.VerifyFailed)), "only the hub publishes it"},
		"not done": {by(HubAgent, running.verified(time.Hour, schemas.VerifyOK)), "not completed"},
		"target":   {by(HubAgent, wrongTarget), "is not the job's"},
		"id":       {by(HubAgent, badID), "canonical"},
	} {
		t.Run(name, func(t *testing.T) {
			c := newTestCatalog(t)
			c.mustApply(from("node1", s.run()...)...)
			c.mustApply(from("node1", running.started())...)
			errs := c.apply(tc.ev)
			if !errors.Is(errs[0], ErrInconsistent) || !strings.Contains(errs[0].Error(), tc.want) {
				t.Errorf("apply: %v, want ErrInconsistent with %q", errs[0], tc.want)
			}
			if j := c.job("vr1"); j.Verification != nil || j.Disks[0].Verified != "" {
				t.Errorf("job after a refused verification: %+v", j)
			}
		})
	}
}
