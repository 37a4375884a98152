package store

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// Writers on several goroutines and readers at the same time end in the
// same catalog as one sequential writer (run with -race).
func TestConcurrentUse(t *testing.T) {
	const writers, jobsPer = 4, 10
	var specs [writers][]spec
	for w := range writers {
		for i := range jobsPer {
			specs[w] = append(specs[w], spec{
				job:   fmt.Sprintf("w%d-j%02d", w, i),
				vm:    schemas.VMRef{Name: fmt.Sprintf("vm%d", w), UUID: fmt.Sprintf("50123456-0000-0000-0000-%012d", w)},
				at:    t0.Add(time.Duration(i) * time.Hour),
				disks: []schemas.DiskRef{diskA, diskB},
			})
		}
	}
	ref := newTestCatalog(t)
	for w := range writers {
		for _, s := range specs[w] {
			ref.mustApply(s.run()...)
		}
	}

	c := newTestCatalog(t)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			for _, s := range specs[w] {
				evs := s.run()
				if errs, err := c.Apply(evs[2:]...); err != nil || errs[0] != nil {
					t.Errorf("apply: %v %v", err, errs)
				}
				if errs, err := c.Apply(evs[:2]...); err != nil || errs[0] != nil {
					t.Errorf("apply: %v %v", err, errs)
				}
			}
		})
	}
	var readers sync.WaitGroup
	readers.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.Jobs(backup.JobFilter{Limit: 5}); err != nil {
				t.Errorf("jobs: %v", err)
			}
			if _, err := c.Chains("50123456-0000-0000-0000-000000000001", ""); err != nil {
				t.Errorf("chains: %v", err)
			}
		}
	})
	wg.Wait()
	close(stop)
	readers.Wait()
	requireSameDump(t, ref.dump(), c.dump())
}
