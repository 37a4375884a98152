package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Lease defaults.
const (
	// LeaseBucket is the KV bucket of the VM leases.
	LeaseBucket = "sendense_leases"
	// DefaultLeaseTTL is how long a lease outlives its last renewal, and so
	// how long a crashed agent's VM stays blocked.
	DefaultLeaseTTL = 30 * time.Second
	// MinLeaseTTL is the shortest TTL (the server's minimum stream max age).
	MinLeaseTTL = 100 * time.Millisecond
)

// VMLeaseKey returns the lease key of a VM: "vm.<instance uuid>".
func VMLeaseKey(vmUUID string) string { return "vm." + vmUUID }

// Leases hands out exclusive, expiring leases kept in a JetStream KV
// bucket. Each key holds at most one lease. Safe for concurrent use.
//
// Expiry is the bucket's max age (= ttl): every renewal writes a new
// revision, and a key whose last revision is older than ttl disappears, so
// the lease of a holder that stopped renewing (crashed, partitioned) can be
// taken ttl after its last renewal. This needs nothing beyond nats-server
// 2.2 (per-key TTLs need 2.11 and are not reset by KV Update in nats.go
// 1.55, so they are not used).
type Leases struct {
	kv  jetstream.KeyValue
	ttl time.Duration
	log zerolog.Logger
}

// LeasesOption tunes NewLeases.
type LeasesOption func(*leasesConfig)

type leasesConfig struct {
	replicas int
	log      zerolog.Logger
	await    *AwaitOptions
}

// LeaseAwait tunes NewLeases' wait for the bucket (see Await); default:
// Await's defaults, logging to LeaseLogger's logger.
func LeaseAwait(o AwaitOptions) LeasesOption { return func(c *leasesConfig) { c.await = &o } }

// LeaseReplicas sets the bucket's replicas in a cluster (default 1).
func LeaseReplicas(n int) LeasesOption { return func(c *leasesConfig) { c.replicas = n } }

// LeaseLogger sets the logger of renewals and losses (default: none).
func LeaseLogger(log zerolog.Logger) LeasesOption { return func(c *leasesConfig) { c.log = log } }

// NewLeases creates or updates the KV bucket (file storage, history 1,
// max age ttl) and returns its Leases, waiting with Await until ctx ends
// while the cluster does not answer yet. bucket "" means LeaseBucket; ttl 0
// means DefaultLeaseTTL; a ttl below MinLeaseTTL is an error. Every process
// using a bucket must use the same ttl: the last NewLeases sets it.
func NewLeases(ctx context.Context, js jetstream.JetStream, bucket string, ttl time.Duration, opts ...LeasesOption) (*Leases, error) {
	if bucket == "" {
		bucket = LeaseBucket
	}
	if ttl == 0 {
		ttl = DefaultLeaseTTL
	}
	if ttl < MinLeaseTTL {
		return nil, fmt.Errorf("lease bucket %s: ttl %s below %s", bucket, ttl, MinLeaseTTL)
	}
	var c leasesConfig
	for _, o := range opts {
		o(&c)
	}
	aw := AwaitOptions{Log: c.log}
	if c.await != nil {
		aw = *c.await
	}
	// A cluster that is still forming does not answer yet: wait for it
	// (Await) until ctx ends.
	var kv jetstream.KeyValue
	err := Await(ctx, "lease bucket "+bucket, func(ctx context.Context) error {
		var err error
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "Sendense leases: one backup per VM at a time",
			History:     1,
			TTL:         ttl,
			Storage:     jetstream.FileStorage,
			Replicas:    max(c.replicas, 1),
		})
		if err != nil {
			return fmt.Errorf("create or update lease bucket %s: %w", bucket, err)
		}
		return nil
	}, aw)
	if err != nil {
		return nil, err
	}
	return &Leases{kv: kv, ttl: ttl, log: c.log.With().Str("component", "leases").Logger()}, nil
}

// OpenLeases binds to an existing lease bucket (bucket "" means
// LeaseBucket) without creating or changing it, and takes its ttl from the
// bucket: what an agent does, whose credentials may write keys but not
// create buckets. A bucket that does not exist yet gives an error wrapping
// jetstream.ErrBucketNotFound; the caller waits for the hub to make it.
func OpenLeases(ctx context.Context, js jetstream.JetStream, bucket string, opts ...LeasesOption) (*Leases, error) {
	if bucket == "" {
		bucket = LeaseBucket
	}
	var c leasesConfig
	for _, o := range opts {
		o(&c)
	}
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("open lease bucket %s: %w", bucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("open lease bucket %s: %w", bucket, err)
	}
	if st.TTL() < MinLeaseTTL {
		return nil, fmt.Errorf("lease bucket %s: ttl %s below %s", bucket, st.TTL(), MinLeaseTTL)
	}
	return &Leases{kv: kv, ttl: st.TTL(), log: c.log.With().Str("component", "leases").Logger()}, nil
}

// Probe writes the key "probe.<name>" (name one subject token, such as an
// agent's name): a real write to JetStream, which an agent uses to tell
// whether JetStream stores again after it could not. Such keys expire with
// the bucket's ttl like leases, and are never a VM's lease. The error
// wraps ErrUnavailable when the write did not land.
func (l *Leases) Probe(ctx context.Context, name string) error {
	key := "probe." + name
	if !validKey.MatchString(key) || strings.HasSuffix(key, ".") || strings.Contains(name, ".") {
		return fmt.Errorf("probe %q: %w", key, ErrInvalidLeaseKey)
	}
	if _, err := l.kv.Put(ctx, key, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return fmt.Errorf("probe write %s: %w: %w", key, ErrUnavailable, err)
	}
	return nil
}

// TTL returns the leases' time to live.
func (l *Leases) TTL() time.Duration { return l.ttl }

// Holder says who holds a lease: one attempt of one job on one agent.
// Identity is carried in these fields, never parsed out of a string.
type Holder struct {
	Agent   string `json:"agent"`
	JobID   string `json:"job_id"`
	Attempt int    `json:"attempt"`
}

// String is "<agent>/<job_id>/<attempt>", for logs.
func (h Holder) String() string { return fmt.Sprintf("%s/%s/%d", h.Agent, h.JobID, h.Attempt) }

// leaseValue is what a lease key holds. Holder is the String of the
// structured fields, kept for people reading the bucket with `nats kv`.
type leaseValue struct {
	Holder   string    `json:"holder"`
	Agent    string    `json:"agent"`
	JobID    string    `json:"job_id"`
	Attempt  int       `json:"attempt"`
	Acquired time.Time `json:"acquired"`
	Renewed  time.Time `json:"renewed"`
}

func (v leaseValue) holder() Holder {
	return Holder{Agent: v.Agent, JobID: v.JobID, Attempt: v.Attempt}
}

var validKey = regexp.MustCompile(`^[-/_=\.a-zA-Z0-9]+$`)

// Acquire takes the lease on key for holder, or fails at once with a
// *HeldError (errors.Is ErrLeaseHeld) when someone holds it. It never
// waits for a held lease; the caller retries later (an agent negatively
// acks the request with a delay).
//
// holder names one attempt of one job; its job id is required. Acquire
// does not let a holder of the same name take over, because two
// deliveries of one request must not run at once.
//
// The lease renews itself every ttl/3 until Release, until it is lost, or
// until ctx ends. ctx is also the parent of Lease.Context: cancelling it
// stops renewal without releasing (the lease then expires after ttl) -
// which is exactly what a crash does. Call Release on every exit path.
func (l *Leases) Acquire(ctx context.Context, key string, holder Holder) (*Lease, error) {
	if !validKey.MatchString(key) || strings.HasPrefix(key, ".") || strings.HasSuffix(key, ".") {
		return nil, fmt.Errorf("acquire lease %q: %w", key, ErrInvalidLeaseKey)
	}
	if holder.JobID == "" {
		return nil, fmt.Errorf("acquire lease %s: holder has no job id", key)
	}
	now := time.Now()
	val := leaseValue{Holder: holder.String(), Agent: holder.Agent, JobID: holder.JobID, Attempt: holder.Attempt, Acquired: now, Renewed: now}
	data, err := json.Marshal(val)
	if err != nil {
		return nil, fmt.Errorf("acquire lease %s for %s: %w", key, holder, err)
	}
	rev, err := l.kv.Create(ctx, key, data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		held := &HeldError{Key: key}
		if e, gerr := l.kv.Get(ctx, key); gerr == nil {
			var cur leaseValue
			if json.Unmarshal(e.Value(), &cur) == nil {
				held.Holder, held.Since = cur.holder(), cur.Acquired
			}
		}
		return nil, held
	}
	if err != nil {
		return nil, fmt.Errorf("acquire lease %s for %s: %w", key, holder, err)
	}
	lctx, cancel := context.WithCancelCause(ctx)
	le := &Lease{
		leases: l,
		key:    key,
		holder: holder,
		value:  val,
		ctx:    lctx,
		cancel: cancel,
		lost:   make(chan struct{}),
		done:   make(chan struct{}),
		log:    l.log.With().Str("lease", key).Str("holder", holder.String()).Logger(),
	}
	le.rev.Store(rev)
	le.lastOK, le.acquired = now, now
	go le.renew()
	le.log.Debug().Uint64("revision", rev).Msg("lease acquired")
	return le, nil
}

// Lease is a held lease. Only Acquire makes one, and the work the lease
// protects must run with Context(), so it cannot run without the lease and
// stops when the lease is lost. Methods are safe for concurrent use.
type Lease struct {
	leases *Leases
	key    string
	holder Holder
	rev    atomic.Uint64

	// wmu serialises the writes of the renewal goroutine and Confirm, and
	// guards value and lastOK.
	wmu      sync.Mutex
	value    leaseValue
	lastOK   time.Time // start of the last successful write
	acquired time.Time // value.Acquired, read without wmu

	// ctx is handed out by Context: the lease's lifetime is a context by
	// design (kopia-style: holding the lock is proven by having its value).
	ctx    context.Context
	cancel context.CancelCauseFunc

	lost     chan struct{} // closed when the lease is lost
	lostOnce sync.Once
	done     chan struct{} // closed when the renewal goroutine ends
	relOnce  sync.Once
	relErr   error
	log      zerolog.Logger
}

// Key returns the lease's key.
func (le *Lease) Key() string { return le.key }

// Holder returns the holder given to Acquire.
func (le *Lease) Holder() Holder { return le.holder }

// Revision returns the KV revision of the last successful write.
func (le *Lease) Revision() uint64 { return le.rev.Load() }

// Context returns the context the protected work must use. It ends when
// the lease is lost (context.Cause: ErrLeaseLost), released (Cause:
// ErrLeaseReleased) or Acquire's ctx ends.
func (le *Lease) Context() context.Context { return le.ctx }

// Lost returns a channel closed when the lease was lost: a renewal found it
// gone or held by someone else (cause ErrLeaseLost), or could not renew it
// in time (cause ErrLeaseLost and ErrUnavailable: NATS could not store).
func (le *Lease) Lost() <-chan struct{} { return le.lost }

// Err returns nil while the lease is held, else the cause of the end of
// Context (ErrLeaseLost, ErrLeaseReleased or Acquire's ctx error).
func (le *Lease) Err() error {
	if le.ctx.Err() == nil {
		return nil
	}
	return context.Cause(le.ctx)
}

func (le *Lease) markLost(err error) {
	le.lostOnce.Do(func() {
		le.cancel(err)
		close(le.lost)
		le.log.Warn().Err(err).Msg("lease lost")
	})
}

// renew writes a new revision every ttl/3 (ttl/10 after a failed write).
// A revision mismatch or a vanished key means the lease is gone: lost at
// once. Transient errors are retried until the lease would have expired on
// the server (last successful write + ttl, minus a tenth for safety), then
// the lease counts as lost too, because someone else may take it from then
// on. The write's start time counts, since the server stamps it later.
func (le *Lease) renew() {
	defer close(le.done)
	ttl := le.leases.ttl
	next := ttl / 3
	t := time.NewTimer(next)
	defer t.Stop()
	for {
		select {
		case <-le.ctx.Done():
			return
		case <-t.C:
		}
		err := le.write(le.ctx)
		switch {
		case err == nil:
			next = ttl / 3
		case le.ctx.Err() != nil:
			return
		case errors.Is(err, errTakeOver):
			next = 0 // the key is still ours at a newer revision: write again
		default:
			le.log.Warn().Err(err).Dur("expires_in", time.Until(le.expiry())).Msg("lease renewal")
			next = ttl / 10
		}
		t.Reset(next)
	}
}

// errTakeOver: a write found the key at a newer revision that is still
// this lease's (an earlier write timed out on our side but landed).
var errTakeOver = errors.New("lease revision moved on")

// expiry is when the server forgets the lease after its last write.
func (le *Lease) expiry() time.Time {
	le.wmu.Lock()
	defer le.wmu.Unlock()
	return le.lastOK.Add(le.leases.ttl)
}

// write renews the lease once: a KV update at the last known revision,
// bounded by ctx and by the time left before the lease could expire. It
// marks the lease lost (and returns an error wrapping ErrLeaseLost) when
// the key is gone or someone else's, or when that time ran out.
func (le *Lease) write(ctx context.Context) error {
	le.wmu.Lock()
	defer le.wmu.Unlock()
	select {
	case <-le.lost:
		return fmt.Errorf("lease %s: %w", le.key, ErrLeaseLost)
	default:
	}
	ttl := le.leases.ttl
	deadline := le.lastOK.Add(ttl - ttl/10)
	sent := time.Now()
	if !sent.Before(deadline) {
		err := fmt.Errorf("lease %s: not renewed within %s: %w: %w", le.key, ttl, ErrLeaseLost, ErrUnavailable)
		le.markLost(err)
		return err
	}
	le.value.Renewed = sent
	data, _ := json.Marshal(le.value)
	wdl := sent.Add(ttl / 3)
	if deadline.Before(wdl) {
		wdl = deadline
	}
	wctx, cancel := context.WithDeadline(ctx, wdl)
	rev, err := le.leases.kv.Update(wctx, le.key, data, le.rev.Load())
	cancel()
	switch {
	case err == nil:
		le.rev.Store(rev)
		le.lastOK = sent
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("lease %s: renew: %w", le.key, ctx.Err())
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyNotFound),
		errors.Is(err, jetstream.ErrKeyDeleted), errors.Is(err, jetstream.ErrKeyExists):
		if rev, ok := le.ours(); ok {
			le.rev.Store(rev)
			return errTakeOver
		}
		err = fmt.Errorf("lease %s: renew: %w: %w", le.key, ErrLeaseLost, err)
		le.markLost(err)
		return err
	}
	// Not written, and nothing says it is lost: NATS did not store it.
	return fmt.Errorf("lease %s: renew: %w: %w", le.key, ErrUnavailable, err)
}

// Confirm renews the lease now and returns how long it is certainly held
// from now on: until the server could forget it (ttl after this write,
// less a tenth for clock rate and transit). Work that must only happen
// under the lease (an agent publishing backup.completed) runs within that
// time. An error wraps ErrLeaseLost when the lease is gone; any other
// error (NATS unavailable) means the lease cannot be confirmed now.
func (le *Lease) Confirm(ctx context.Context) (time.Duration, error) {
	for {
		err := le.write(ctx)
		if errors.Is(err, errTakeOver) {
			continue
		}
		if err != nil {
			return 0, err
		}
		ttl := le.leases.ttl
		return time.Until(le.expiry()) - ttl/10, nil
	}
}

// Release stops renewal and deletes the key if it still holds this lease's
// last revision, so it never removes a lease someone else took after this
// one expired. It returns an error wrapping ErrLeaseLost when the lease was
// lost before (nothing deleted), or the KV error. Calling it again returns
// the first result.
func (le *Lease) Release(ctx context.Context) error {
	le.relOnce.Do(func() {
		le.cancel(ErrLeaseReleased)
		<-le.done
		select {
		case <-le.lost:
			le.relErr = fmt.Errorf("release lease %s of %s: %w", le.key, le.holder, ErrLeaseLost)
			return
		default:
		}
		le.wmu.Lock()
		defer le.wmu.Unlock()
		rev := le.rev.Load()
		err := le.leases.kv.Delete(ctx, le.key, jetstream.LastRevision(rev))
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			// A renewal cut short by Release may have landed.
			if cur, ok := le.oursCtx(ctx); ok {
				rev = cur
				err = le.leases.kv.Delete(ctx, le.key, jetstream.LastRevision(rev))
			}
		}
		switch {
		case err == nil:
			le.log.Debug().Uint64("revision", rev).Msg("lease released")
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
			le.relErr = fmt.Errorf("release lease %s of %s: %w", le.key, le.holder, ErrLeaseLost)
		default:
			le.relErr = fmt.Errorf("release lease %s of %s: %w", le.key, le.holder, err)
		}
	})
	return le.relErr
}

// ours reports whether the key still holds this lease (same holder and
// acquisition time) and at which revision; used after a revision mismatch.
func (le *Lease) ours() (uint64, bool) {
	ctx, cancel := context.WithTimeout(le.ctx, le.leases.ttl/10)
	defer cancel()
	return le.oursCtx(ctx)
}

func (le *Lease) oursCtx(ctx context.Context) (uint64, bool) {
	e, err := le.leases.kv.Get(ctx, le.key)
	if err != nil {
		return 0, false
	}
	var cur leaseValue
	if json.Unmarshal(e.Value(), &cur) != nil {
		return 0, false
	}
	if cur.holder() != le.holder || !cur.Acquired.Equal(le.acquired) {
		return 0, false
	}
	return e.Revision(), true
}

// Holder returns who holds the lease on key; ok is false when nobody does
// (never taken, released, or expired). It is for observers such as the
// hub's reaper; holding a lease is only ever proven by a *Lease.
func (l *Leases) Holder(ctx context.Context, key string) (h Holder, ok bool, err error) {
	e, err := l.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Holder{}, false, nil
	}
	if err != nil {
		return Holder{}, false, fmt.Errorf("read lease %s: %w", key, err)
	}
	var cur leaseValue
	if err := json.Unmarshal(e.Value(), &cur); err != nil {
		return Holder{}, false, fmt.Errorf("decode lease %s: %w", key, err)
	}
	return cur.holder(), true, nil
}
