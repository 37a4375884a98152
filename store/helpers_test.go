package store

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/schemas"
)

// testCatalog opens the catalog in t.TempDir() and, like bbolt's
// internal/btesting, checks the file's consistency in cleanup after every
// test, then closes it.
type testCatalog struct {
	*Catalog
	t    testing.TB
	path string
}

func newTestCatalog(t testing.TB) *testCatalog {
	t.Helper()
	return openTestCatalog(t, filepath.Join(t.TempDir(), "catalog.db"))
}

func openTestCatalog(t testing.TB, path string) *testCatalog {
	t.Helper()
	tc := &testCatalog{t: t, path: path}
	tc.open()
	t.Cleanup(tc.close)
	return tc
}

func (tc *testCatalog) open() {
	tc.t.Helper()
	var n atomic.Int64
	c, err := Open(tc.path, &Options{
		Logger: zerolog.New(zerolog.NewTestWriter(tc.t)),
		Now:    func() time.Time { return t0.Add(time.Duration(n.Add(1)) * time.Millisecond) },
	})
	if err != nil {
		tc.t.Fatalf("open catalog: %v", err)
	}
	tc.Catalog = c
}

// close checks consistency and closes; it is safe to call twice.
func (tc *testCatalog) close() {
	tc.t.Helper()
	if tc.Catalog == nil {
		return
	}
	if err := tc.Check(); err != nil {
		tc.t.Errorf("consistency check of %s: %v", tc.path, err)
	}
	if err := tc.Catalog.Close(); err != nil {
		tc.t.Errorf("close catalog: %v", err)
	}
	tc.Catalog = nil
}

func (tc *testCatalog) reopen() {
	tc.t.Helper()
	tc.close()
	tc.open()
}

// mustApply applies evs in one batch and fails on a fatal error or on any
// per-event error.
func (tc *testCatalog) mustApply(evs ...schemas.Event) {
	tc.t.Helper()
	errs := tc.apply(evs...)
	for i, err := range errs {
		if err != nil {
			tc.t.Fatalf("event %d: %v", i, err)
		}
	}
}

// apply applies evs in one batch and fails only on a fatal error.
func (tc *testCatalog) apply(evs ...schemas.Event) []error {
	tc.t.Helper()
	errs, err := tc.Apply(evs...)
	if err != nil {
		tc.t.Fatalf("apply: %v", err)
	}
	if len(errs) != len(evs) {
		tc.t.Fatalf("apply returned %d errors for %d events", len(errs), len(evs))
	}
	return errs
}

// applyBatches applies evs in batches of size n (n <= 0: one batch),
// ignoring per-event errors.
func (tc *testCatalog) applyBatches(evs []schemas.Event, n int) {
	tc.t.Helper()
	if n <= 0 {
		n = len(evs)
	}
	for len(evs) > 0 {
		k := min(n, len(evs))
		tc.apply(evs[:k]...)
		evs = evs[k:]
	}
}

func (tc *testCatalog) dump() Snapshot {
	tc.t.Helper()
	s, err := tc.Dump()
	if err != nil {
		tc.t.Fatalf("dump: %v", err)
	}
	return s
}

func (tc *testCatalog) job(id string) backup.Job {
	tc.t.Helper()
	j, err := tc.Job(id)
	if err != nil {
		tc.t.Fatalf("job %s: %v", id, err)
	}
	return j
}

func (tc *testCatalog) poison() []backup.PoisonRecord {
	tc.t.Helper()
	p, err := tc.Poison()
	if err != nil {
		tc.t.Fatalf("poison: %v", err)
	}
	return p
}

// requireSameDump fails with the first differing job/link/record when two
// snapshots differ.
func requireSameDump(t testing.TB, want, got Snapshot) {
	t.Helper()
	if want.Equal(got) {
		return
	}
	t.Errorf("snapshots differ:\n%s", snapshotDiff(want, got))
}

func snapshotDiff(a, b Snapshot) string {
	if d := testutil.FirstDiff(snapshotLines(a), snapshotLines(b)); d != "" {
		return d
	}
	return "no line differs"
}

func snapshotLines(s Snapshot) []string {
	var out []string
	add := func(kind string, v any) { out = append(out, fmt.Sprintf("%s %+v", kind, v)) }
	add("schema", s.SchemaVersion)
	for _, j := range s.Jobs {
		prune := j.Prune
		j.Prune = nil
		add("job", j)
		if prune != nil {
			add("job prune", *prune)
		}
	}
	for _, l := range s.Links {
		add("link", l)
	}
	for _, p := range s.Poison {
		p.Raw = nil
		add("poison", p)
	}
	for _, a := range s.Applied {
		add("applied", a)
	}
	return out
}

// Event builders.

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

var (
	vm1 = schemas.VMRef{Name: "pgtest1", UUID: "50123456-aaaa-bbbb-cccc-000000000001", Moref: "vm-101"}
	vm2 = schemas.VMRef{Name: "web2", UUID: "50123456-aaaa-bbbb-cccc-000000000002", Moref: "vm-102"}

	diskA = schemas.DiskRef{Key: 2000, UUID: "6000c291-0000-0000-0000-00000000000a", CapacityBytes: 8 << 30}
	diskB = schemas.DiskRef{Key: 2001, UUID: "6000c291-0000-0000-0000-00000000000b", CapacityBytes: 16 << 30}
)

// spec describes one attempt of one job.
type spec struct {
	job     string
	vm      schemas.VMRef
	repo    string
	attempt int
	at      time.Time // backup.started; later events follow a second apart
	disks   []schemas.DiskRef
	typ     string // full (default) or incremental
	backing string // job id of the base (incremental)
}

func (s spec) withDefaults() spec {
	if s.vm == (schemas.VMRef{}) {
		s.vm = vm1
	}
	if s.repo == "" {
		s.repo = "default"
	}
	if s.attempt == 0 {
		s.attempt = 1
	}
	if s.at.IsZero() {
		s.at = t0
	}
	if s.disks == nil {
		s.disks = []schemas.DiskRef{diskA}
	}
	if s.typ == "" {
		s.typ = schemas.TypeFull
	}
	return s
}

// header is an event's header with its canonical id (bus.EventID).
func (s spec) header(name string, disk int32, seq int64, at time.Time) schemas.Header {
	s = s.withDefaults()
	return schemas.Header{
		Schema:  schemas.SchemaRef{Name: name, Version: schemas.Version},
		ID:      eventID(s.job, s.attempt, name, disk, seq),
		Time:    at,
		JobID:   s.job,
		Attempt: s.attempt,
		VM:      s.vm,
	}
}

func (s spec) target(d schemas.DiskRef) string {
	s = s.withDefaults()
	return fmt.Sprintf("%s/%d/%s.qcow2", s.vm.UUID, d.Key, s.job)
}

func (s spec) changeID(d schemas.DiskRef) string {
	s = s.withDefaults()
	return fmt.Sprintf("52 de 4c 0b 6f 37 1f 3d-a2 5a 6b 2d a2 0d %02x f7/%d", d.Key%256, len(s.job)*1000+s.attempt*10+int(d.Key%7))
}

func (s spec) reason() string {
	if s.typ == schemas.TypeIncremental {
		return schemas.ReasonBaseUsable
	}
	return schemas.ReasonNoBase
}

func (s spec) started() *schemas.Started {
	s = s.withDefaults()
	ev := &schemas.Started{
		Header:        s.header(schemas.NameStarted, 0, 0, s.at),
		Repository:    s.repo,
		RequestedType: schemas.TypeAuto,
		RequestedBy:   "test",
		Snapshot:      "sendense-" + s.job,
	}
	for _, d := range s.disks {
		ev.Disks = append(ev.Disks, schemas.DiskPlan{
			Disk: d, BackupType: s.typ, Reason: s.reason(), Backing: s.backing, Target: s.target(d),
		})
	}
	return ev
}

func (s spec) changeIDEvent(i int) *schemas.ChangeID {
	s = s.withDefaults()
	d := s.disks[i]
	return &schemas.ChangeID{
		Header:       s.header(schemas.NameChangeID, d.Key, 0, s.at.Add(time.Duration(i+1)*time.Second)),
		Repository:   s.repo,
		Disk:         d,
		ChangeID:     s.changeID(d),
		BackupType:   s.typ,
		BytesRead:    int64(i+1) << 20,
		BytesWritten: int64(i+1) << 19,
		Target:       s.target(d),
	}
}

func (s spec) completedAt() time.Time {
	s = s.withDefaults()
	return s.at.Add(time.Duration(len(s.disks)+1) * time.Second)
}

func (s spec) completed() *schemas.Completed {
	s = s.withDefaults()
	ev := &schemas.Completed{
		Header:     s.header(schemas.NameCompleted, 0, 0, s.completedAt()),
		Repository: s.repo,
	}
	for i, d := range s.disks {
		ev.Disks = append(ev.Disks, schemas.DiskResult{
			Disk: d, ChangeID: s.changeID(d), BackupType: s.typ, Reason: s.reason(),
			BytesRead: int64(i+1) << 20, BytesWritten: int64(i+1) << 19,
			Target: s.target(d), Backing: s.backing, ActualSizeBytes: int64(i+1) << 18,
		})
	}
	return ev
}

func (s spec) failed(retryable bool) *schemas.Failed {
	s = s.withDefaults()
	return &schemas.Failed{
		Header:     s.header(schemas.NameFailed, 0, 0, s.completedAt()),
		Repository: s.repo,
		Reason:     schemas.FailTargetNBD,
		Message:    "connect to target: connection refused",
		Retryable:  retryable,
	}
}

func (s spec) rejected() *schemas.Rejected {
	s = s.withDefaults()
	return &schemas.Rejected{
		Header:  s.header(schemas.NameRejected, 0, 0, s.at),
		Reason:  schemas.RejectUnknownVM,
		Message: "no vm named " + s.vm.Name,
		Request: `{"vm":"` + s.vm.Name + `"}`,
	}
}

func (s spec) progress(seq int64) *schemas.Progress {
	s = s.withDefaults()
	return &schemas.Progress{
		Header:     s.header(schemas.NameProgress, 0, seq, s.at.Add(time.Duration(seq)*time.Millisecond)),
		Seq:        seq,
		BytesDone:  seq << 20,
		BytesTotal: 100 << 20,
	}
}

// run is the events of a successful attempt: started, one changeid per
// disk, completed.
func (s spec) run() []schemas.Event {
	s = s.withDefaults()
	evs := []schemas.Event{s.started()}
	for i := range s.disks {
		evs = append(evs, s.changeIDEvent(i))
	}
	return append(evs, s.completed())
}

// failedRun is started, the first disk's changeid, failed.
func (s spec) failedRun(retryable bool) []schemas.Event {
	return []schemas.Event{s.started(), s.changeIDEvent(0), s.failed(retryable)}
}

// eventID is bus.EventID, which store's tests do not import.
func eventID(job string, attempt int, name string, disk int32, seq int64) string {
	return fmt.Sprintf("%s.%d.%s.%d.%d", job, attempt, strings.TrimPrefix(name, "backup."), disk, seq)
}

// testSeq is the stream the tests' events are stored in: from, by and
// withPayloads give each event the next sequence, so the order a test
// builds its events in is their stream order, whatever order it applies
// them in.
var testSeq atomic.Uint64

// from wraps each event with agent as its publisher and the next stream
// sequence (WithSource, no payload: Apply encodes the event).
func from(agent string, evs ...schemas.Event) []schemas.Event {
	out := make([]schemas.Event, len(evs))
	for i, ev := range evs {
		out[i] = by(agent, ev)
	}
	return out
}

// by is from for one event.
func by(agent string, ev schemas.Event) schemas.Event {
	return WithSource(ev, Source{Agent: agent, Seq: testSeq.Add(1)})
}

// withPayloads wraps each event with its JSON payload, agent and the next
// stream sequence, as the catalog consumer hands them over.
func withPayloads(t testing.TB, agent string, evs ...schemas.Event) []schemas.Event {
	t.Helper()
	out := make([]schemas.Event, len(evs))
	for i, ev := range evs {
		data, err := schemas.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = WithSource(ev, Source{Payload: data, Agent: agent, Seq: testSeq.Add(1)})
	}
	return out
}

func concat(lists ...[]schemas.Event) []schemas.Event {
	var out []schemas.Event
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}
