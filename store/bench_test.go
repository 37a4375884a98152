package store

import (
	"fmt"
	"testing"
	"time"

	"github.com/sendense/sendense/schemas"
)

// BenchmarkApply applies batches of 4 events (one job, as at a low event
// rate) and 1024 events (the catalog consumer's largest batch) with sync
// on, one bbolt transaction per batch, and reports events/s and bbolt
// pages written per batch. The events are jobs of two disks (started, two
// changeids, completed) on 50 VMs, each job new, so the catalog and its
// chains grow as in production; each carries its payload, agent and
// stream sequence (WithSource), as the catalog consumer hands them over.
// Run it with `go test ./store -run '^$' -bench Apply -benchmem`.
func BenchmarkApply(b *testing.B) {
	for _, size := range []int{4, 1024} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			c := newTestCatalog(b)
			b.ReportAllocs()
			job := 0
			var seq uint64 // the stream sequence of the events made so far
			batch := make([]schemas.Event, 0, size)
			next := func() []schemas.Event {
				batch = batch[:0]
				for len(batch) < size {
					job++
					s := spec{
						job:   fmt.Sprintf("bench-%08d", job),
						vm:    schemas.VMRef{Name: "vm", UUID: fmt.Sprintf("50123456-0000-0000-0000-%012d", job%50)},
						at:    t0.Add(time.Duration(job) * time.Minute),
						disks: []schemas.DiskRef{diskA, diskB},
					}
					for _, ev := range s.run() {
						data, err := schemas.Marshal(ev)
						if err != nil {
							b.Fatal(err)
						}
						seq++
						batch = append(batch, WithSource(ev, Source{Payload: data, Agent: "bench-agent", Seq: seq}))
					}
				}
				return batch[:size]
			}
			var events int
			var pages int64
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				evs := next()
				before := c.db.Stats()
				b.StartTimer()
				errs, err := c.Apply(evs...)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				after := c.db.Stats()
				pages += after.TxStats.GetWrite() - before.TxStats.GetWrite()
				b.StartTimer()
				for _, e := range errs {
					if e != nil {
						b.Fatal(e)
					}
				}
				events += len(evs)
			}
			b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(pages)/float64(b.N), "pages/batch")
		})
	}
}
