package store

import (
	"fmt"
	"testing"
	"time"

	"github.com/sendense/sendense/schemas"
)

// BenchmarkApply applies batches of 100 and 500 events (jobs of two disks:
// started, two changeids, completed) with sync on, one bbolt transaction
// per batch, and reports events/s. Each job is new, so the catalog grows as
// it would in production.
func BenchmarkApply(b *testing.B) {
	for _, size := range []int{100, 500} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			c := newTestCatalog(b)
			b.ReportAllocs()
			job := 0
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
					batch = append(batch, s.run()...)
				}
				return batch[:size]
			}
			var events int
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				evs := next()
				b.StartTimer()
				errs, err := c.Apply(evs...)
				if err != nil {
					b.Fatal(err)
				}
				for _, e := range errs {
					if e != nil {
						b.Fatal(e)
					}
				}
				events += len(evs)
			}
			b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
