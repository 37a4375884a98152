package copier

import "sync/atomic"

// Progress counts a running copy's bytes for whoever shows them. Copy sets
// BytesTotal (the extents' total length) once it knows the extents, and
// BytesDone grows as extents finish (read, and written, zeroed or
// skipped). The copier only counts: it never samples, throttles or computes
// a rate; its caller reads the counts on its own schedule (the agent's
// progress sampler, package internal/progress).
//
// The zero value is ready to use; one Progress serves one Copy. Its
// methods are safe for concurrent use with the copy.
type Progress struct {
	// done is the copy's own counter, shared with its lanes (no second
	// count): nil until the copy started.
	done  atomic.Pointer[atomic.Int64]
	total atomic.Int64
}

// start makes p report the copy's counter done of total bytes.
func (p *Progress) start(done *atomic.Int64, total int64) {
	p.total.Store(total)
	p.done.Store(done)
}

// BytesDone is the bytes of the extents finished so far; 0 before the copy
// started.
func (p *Progress) BytesDone() int64 {
	if d := p.done.Load(); d != nil {
		return d.Load()
	}
	return 0
}

// BytesTotal is the extents' total length; 0 before the copy started.
func (p *Progress) BytesTotal() int64 { return p.total.Load() }
