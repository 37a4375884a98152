package copier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/sendense/sendense/manifest"
	"github.com/sendense/sendense/nbd"
)

// A lane is one source connection and one target connection driven by one
// goroutine: an event loop that keeps its share of the InFlight reads
// going, proves each chunk's zero blocks as its read completes, issues the
// writes (or zeroes) on the target, and recycles the chunk's buffer when
// they have all completed. Lanes share only the work list and the counters.

type reqKind uint8

const (
	kindRead      reqKind = iota
	kindWrite             // data
	kindZero              // write zeroes (incremental)
	kindZeroWrite         // zeroes written as data: the target cannot zero
)

func (k reqKind) String() string {
	switch k {
	case kindRead:
		return "read"
	case kindWrite:
		return "write"
	}
	return "zero"
}

// req is one NBD request of a chunk.
type req struct {
	kind    reqKind
	slot    int32
	off, n  int64
	attempt int // times issued
	due     time.Time
}

// slot is a chunk buffer and the chunk it holds.
type slot struct {
	buf     *nbd.Buffer
	off, n  int64
	pending int // target requests not yet completed
}

// stallCheck bounds one wait so stalls and due retries are noticed.
const stallCheck = time.Second

type lane struct {
	id       int
	src, dst *nbd.Handle
	o        *Options
	st       *stats
	log      zerolog.Logger
	w        *work
	inflight int // reads in flight and chunk buffers on this lane

	slots     []slot
	free      []int32
	reads     map[nbd.Cookie]req
	writes    map[nbd.Cookie]req
	retry     []req
	exhausted bool
	lastDone  time.Time
	// digests of the chunks this lane read (Options.Digests).
	digests []manifest.Entry
}

func newLane(id int, src, dst *nbd.Handle, o *Options, st *stats, log zerolog.Logger) *lane {
	return &lane{
		id: id, src: src, dst: dst, o: o, st: st,
		log:    log.With().Int("connection", id).Logger(),
		reads:  make(map[nbd.Cookie]req),
		writes: make(map[nbd.Cookie]req),
	}
}

// close closes both connections, then frees the buffers. Only after the
// connections are closed is it certain that libnbd no longer uses them.
func (l *lane) close() {
	l.src.Close()
	l.dst.Close()
	for i := range l.slots {
		l.slots[i].buf.Free()
	}
	l.slots = nil
}

func (l *lane) run(ctx context.Context) error {
	l.slots = make([]slot, l.inflight)
	l.free = make([]int32, 0, l.inflight)
	for i := range l.slots {
		l.slots[i].buf = nbd.NewBuffer(int(l.o.ChunkSize))
		l.free = append(l.free, int32(len(l.slots)-1-i))
	}
	l.lastDone = time.Now()
	for {
		if err := l.issueDue(); err != nil {
			return err
		}
		if err := l.fill(); err != nil {
			return err
		}
		inFlight := len(l.reads) + len(l.writes)
		if inFlight == 0 {
			if len(l.retry) == 0 && l.exhausted {
				return nil
			}
			if err := sleep(ctx, l.untilDue()); err != nil {
				return err
			}
			continue
		}
		_, perr := nbd.PollTimeout(ctx, min(stallCheck, l.o.StallTimeout, l.untilDue()), l.src, l.dst)
		if perr != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		if err := l.collect(perr); err != nil {
			return err
		}
		if perr != nil {
			return fmt.Errorf("%w: %w", ErrConnectionLost, perr)
		}
		if time.Since(l.lastDone) > l.o.StallTimeout && len(l.reads)+len(l.writes) > 0 {
			return fmt.Errorf("%d requests in flight on connection %d, none completed in %s: %w",
				len(l.reads)+len(l.writes), l.id+1, l.o.StallTimeout, ErrStalled)
		}
	}
}

// fill starts reads while there are free buffers and read slots.
func (l *lane) fill() error {
	for !l.exhausted && len(l.free) > 0 && len(l.reads) < l.inflight {
		off, n, ok := l.w.next()
		if !ok {
			l.exhausted = true
			return nil
		}
		si := l.free[len(l.free)-1]
		l.free = l.free[:len(l.free)-1]
		s := &l.slots[si]
		s.off, s.n, s.pending = off, n, 0
		if err := l.issue(req{kind: kindRead, slot: si, off: off, n: n}); err != nil {
			return err
		}
	}
	return nil
}

// issue sends r (again, if it is a retry).
func (l *lane) issue(r req) error {
	r.attempt++
	s := &l.slots[r.slot]
	var c nbd.Cookie
	var err error
	switch r.kind {
	case kindRead:
		c, err = l.src.AioPread(s.buf.Span(0, int(r.n)), r.off)
		if err == nil {
			l.reads[c] = r
		}
	case kindWrite, kindZeroWrite:
		bo := int(r.off - s.off)
		c, err = l.dst.AioPwrite(s.buf.Span(bo, bo+int(r.n)), r.off, 0)
		if err == nil {
			l.writes[c] = r
		}
	case kindZero:
		// No NO_HOLE: the target may deallocate, and a QCOW2 overlay then
		// records zero clusters that hide the backing file.
		c, err = l.dst.AioZero(r.n, r.off, 0)
		if err == nil {
			l.writes[c] = r
		}
	}
	if err != nil {
		if errors.Is(err, nbd.ErrDisconnected) {
			err = fmt.Errorf("%w: %w", ErrConnectionLost, err)
		}
		return l.reqErr(r, err)
	}
	return nil
}

func (l *lane) reqErr(r req, err error) *RequestError {
	uri := l.dst.URI()
	if r.kind == kindRead {
		uri = l.src.URI()
	}
	return &RequestError{Op: r.kind.String(), URI: uri, Offset: r.off, Length: r.n, Attempts: r.attempt, Err: err}
}

// collect retires completed commands on both connections. connErr is the
// poll's error: when a connection failed, its commands are not retried.
func (l *lane) collect(connErr error) error {
	for {
		done, ok := l.src.NextCompleted()
		if !ok {
			break
		}
		r, mine := l.reads[done.Cookie]
		if !mine {
			continue
		}
		delete(l.reads, done.Cookie)
		l.lastDone = time.Now()
		if done.Err != nil {
			if err := l.failed(r, done.Err, connErr); err != nil {
				return err
			}
			continue
		}
		l.st.read.Add(r.n)
		if err := l.scan(r.slot); err != nil {
			return err
		}
	}
	for {
		done, ok := l.dst.NextCompleted()
		if !ok {
			break
		}
		r, mine := l.writes[done.Cookie]
		if !mine {
			continue
		}
		delete(l.writes, done.Cookie)
		l.lastDone = time.Now()
		if done.Err != nil {
			if err := l.failed(r, done.Err, connErr); err != nil {
				return err
			}
			continue
		}
		if r.kind == kindWrite {
			l.st.written.Add(r.n)
		}
		s := &l.slots[r.slot]
		if s.pending--; s.pending == 0 {
			l.chunkDone(r.slot)
		}
	}
	return nil
}

// failed schedules a retry of r, or returns the error that ends the copy.
func (l *lane) failed(r req, cause, connErr error) error {
	if connErr != nil {
		return l.reqErr(r, fmt.Errorf("%w: %w (request: %w)", ErrConnectionLost, connErr, cause))
	}
	if r.attempt > l.o.Retries {
		return l.reqErr(r, cause)
	}
	backoff := 50 * time.Millisecond << (r.attempt - 1)
	l.log.Warn().Err(cause).Str("op", r.kind.String()).Int64("offset", r.off).Int64("length", r.n).
		Int("attempt", r.attempt).Dur("backoff", backoff).Msg("request failed, retrying")
	r.due = time.Now().Add(backoff)
	l.retry = append(l.retry, r)
	return nil
}

// issueDue re-sends the retries whose backoff has passed.
func (l *lane) issueDue() error {
	if len(l.retry) == 0 {
		return nil
	}
	now := time.Now()
	keep := l.retry[:0]
	for _, r := range l.retry {
		if r.due.After(now) {
			keep = append(keep, r)
			continue
		}
		if err := l.issue(r); err != nil {
			return err
		}
	}
	l.retry = keep
	return nil
}

// untilDue is the time until the next retry is due (stallCheck if none).
func (l *lane) untilDue() time.Duration {
	d := stallCheck
	for _, r := range l.retry {
		d = min(d, time.Until(r.due))
	}
	return max(d, time.Millisecond)
}

// scan proves each zero block of a chunk that was just read and issues the
// target requests: one write per run of data blocks, and per run of zero
// blocks nothing (full copy) or one write-zeroes (incremental).
func (l *lane) scan(si int32) error {
	s := &l.slots[si]
	b := s.buf.Bytes()
	z := l.o.ZeroBlock
	end := s.off + s.n
	runStart, runZero := s.off, false
	for pos := s.off; pos < end; {
		bend := min((pos/z+1)*z, end)
		zero := isZero(b[pos-s.off : bend-s.off])
		if pos == s.off {
			runZero = zero
		} else if zero != runZero {
			if err := l.emit(si, runStart, pos, runZero); err != nil {
				return err
			}
			runStart, runZero = pos, zero
		}
		pos = bend
	}
	if err := l.emit(si, runStart, end, runZero); err != nil {
		return err
	}
	if l.o.Digests {
		// After the writes are issued, so the target works meanwhile;
		// the buffer stays the chunk's until chunkDone. The read starts
		// on a manifest chunk (extents are widened to them, reads are
		// aligned to ChunkSize, a multiple) and ends on one or at the end
		// of the disk.
		for lo := s.off; lo < end; lo += manifest.ChunkSize {
			hi := min(lo+manifest.ChunkSize, end)
			l.digests = append(l.digests, manifest.Entry{Index: lo / manifest.ChunkSize, Digest: manifest.Sum(b[lo-s.off : hi-s.off])})
		}
	}
	if s.pending == 0 {
		l.chunkDone(si)
	}
	return nil
}

func (l *lane) emit(si int32, lo, hi int64, zero bool) error {
	r := req{kind: kindWrite, slot: si, off: lo, n: hi - lo}
	if zero {
		l.st.zero.Add(hi - lo)
		if !l.o.Incremental {
			return nil
		}
		r.kind = kindZero
		if !l.dst.CanZero() {
			r.kind = kindZeroWrite // the buffer holds the zeroes
		}
	}
	l.slots[si].pending++
	return l.issue(r)
}

func (l *lane) chunkDone(si int32) {
	l.st.done.Add(l.slots[si].n)
	l.free = append(l.free, si)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
