package node

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sendense/sendense/internal/progress"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/vmware"
)

// jobProgress publishes the job's state once at first, again when a disk
// ends (with its bytes), and nothing while nothing moves; the rate comes
// from its one sampler.
func TestJobProgress(t *testing.T) {
	pub := &recPublisher{}
	a := &Agent{cfg: Config{AgentID: "a1", ProgressInterval: time.Hour}, deps: Deps{Publisher: pub}, log: zerolog.Nop()}
	r := &request{jobID: "job-1", attempt: 1, log: zerolog.Nop()}
	disk := func(key int32, length int64) *diskRun {
		return &diskRun{plan: &diskPlan{disk: vmware.Disk{Key: key}, ref: schemas.DiskRef{Key: key},
			extents: []vmware.Extent{{Offset: 0, Length: length}}}}
	}
	p := newJobProgress(a, r, []*diskRun{disk(2000, 100<<20), disk(2001, 10<<20)})
	now := time.Unix(1e9, 0)
	p.sampler = progress.NewSampler(func() time.Time { return now })
	ctx := context.Background()

	events := func() []*schemas.Progress {
		pub.mu.Lock()
		defer pub.mu.Unlock()
		var out []*schemas.Progress
		for _, ev := range pub.evs {
			out = append(out, ev.(*schemas.Progress))
		}
		return out
	}
	p.publish(ctx)
	p.publish(ctx) // nothing moved, no disk copying: nothing new
	evs := events()
	if len(evs) != 1 || evs[0].Seq != 1 || evs[0].BytesDone != 0 || evs[0].BytesTotal != 110<<20 || evs[0].RateBytesPerSec != 0 {
		t.Fatalf("first events %+v, want one at seq 1: 0 of the planned 110 MiB, no rate", evs)
	}
	if p.counter(2001) == p.counter(2000) || p.counter(2001) == nil {
		t.Fatal("disks share a counter")
	}

	now = now.Add(2 * time.Second)
	p.finished(2001, 10<<20)
	select {
	case <-p.kick:
	default:
		t.Error("a disk's end does not kick the publisher")
	}
	p.publish(ctx)
	evs = events()
	last := evs[len(evs)-1]
	if len(evs) != 2 || last.Seq != 2 || last.BytesDone != 10<<20 || !last.Disks[1].Done || last.Disks[0].Done ||
		last.RateBytesPerSec != 5<<20 {
		t.Fatalf("after disk 2001 ended: %+v, want seq 2, 10 MiB done, disk 2001 done, 5 MiB/s", last)
	}
	p.publish(ctx)
	if n := len(events()); n != 2 {
		t.Errorf("%d events after an idle sample, want still 2", n)
	}
}
