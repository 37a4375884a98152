package vmware_test

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/sendense/sendense/testbed"
	"github.com/sendense/sendense/vmware"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
	gib = int64(1) << 30
)

func testLog(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// startTestbed starts a testbed and a logged-in client; both are closed in
// t.Cleanup.
func startTestbed(t testing.TB, opts testbed.Options) (*testbed.Testbed, *vmware.Client) {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	opts.Log = testLog(t)
	ctx := testCtx(t)
	tb, err := testbed.New(ctx, opts)
	if err != nil {
		t.Fatalf("start testbed: %v", err)
	}
	t.Cleanup(func() {
		if err := tb.Close(); err != nil {
			t.Errorf("close testbed: %v", err)
		}
	})
	c, err := vmware.Connect(ctx, tb.URL(), true, testLog(t))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close client: %v", err)
		}
	})
	return tb, c
}

// smallVM is one VM with two small disks.
func smallVM(name string) testbed.VMSpec {
	return testbed.VMSpec{Name: name, Seed: 7, Disks: []testbed.DiskSpec{
		{CapacityBytes: 64 * mib, FillBytes: 8 * mib},
		{CapacityBytes: 32*mib + 3*kib, FillBytes: 2 * mib},
	}}
}

// covers reports whether the sorted extents cover [off, off+n) entirely.
func covers(ext []vmware.Extent, off, n int64) bool {
	end := off + n
	for _, e := range ext {
		if e.Offset > off {
			return false
		}
		if e.End() > off {
			off = e.End()
		}
		if off >= end {
			return true
		}
	}
	return off >= end
}

// alignedUnion is the set of block-aligned blocks the writes touch, clipped
// to capacity: the most a CBT reply may report for them.
func alignedUnion(writes []vmware.Extent, block, capacity int64) map[int64]bool {
	blocks := map[int64]bool{}
	for _, w := range writes {
		for b := w.Offset / block * block; b < w.End() && b < capacity; b += block {
			blocks[b] = true
		}
	}
	return blocks
}

// requireExactish fails unless ext covers every write and reports nothing
// outside the blocks the writes touch.
func requireExactish(t testing.TB, ext, writes []vmware.Extent, block, capacity int64) {
	t.Helper()
	for _, w := range writes {
		if !covers(ext, w.Offset, w.Length) {
			t.Errorf("changed areas do not cover write [%d, +%d)", w.Offset, w.Length)
		}
	}
	allowed := alignedUnion(writes, block, capacity)
	for _, e := range ext {
		for b := e.Offset / block * block; b < e.End(); b += block {
			if !allowed[b] {
				t.Errorf("changed area [%d, +%d) reports block %d that no write touched", e.Offset, e.Length, b)
				break
			}
		}
	}
}
