package store

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// Fuzz inputs are records separated by recordSep, each
// <subject> fieldSep <agent> fieldSep <JSON payload>, as the catalog
// consumer receives them (the agent taken from the subject).
const (
	recordSep = 0x1e
	fieldSep  = 0x1f
	maxEvents = 12
)

// fuzzEvent is one decoded fuzz record.
type fuzzEvent struct {
	ev      schemas.Event
	payload []byte
	agent   string
	seq     uint64 // stream sequence: the record's place among the decoded ones, or 0
}

func (e fuzzEvent) sourced() schemas.Event {
	return WithSource(e.ev, Source{Payload: e.payload, Agent: e.agent, Seq: e.seq})
}

// decodeFuzzInput splits data into records and decodes those that
// schemas.Decode accepts. With sequenced, each event's stream sequence is
// its place among them (1, 2, ...), else 0 (unknown). It drops the events
// whose outcome the catalog documents as depending on the order they are
// applied in: a second event of the same identity with other content
// (where the first applied wins) when the identity is not one Apply files
// by stream sequence: an event without sequences (sequenced false), a
// progress event (job id and event id), an event without a usable job id
// (event id: the applied bucket), or one Apply refuses before filing it
// (an empty or oversized event id or agent).
func decodeFuzzInput(data []byte, sequenced bool) []fuzzEvent {
	type ident struct {
		kind           byte
		job, id, agent string
	}
	seen := map[ident]bool{}
	var out []fuzzEvent
	for _, rec := range bytes.Split(data, []byte{recordSep}) {
		if len(out) == maxEvents {
			break
		}
		subject, rest, ok := bytes.Cut(rec, []byte{fieldSep})
		if !ok {
			continue
		}
		agent, payload, ok := bytes.Cut(rest, []byte{fieldSep})
		if !ok {
			continue
		}
		ev, err := schemas.Decode(string(subject), payload)
		if err != nil {
			continue
		}
		h := ev.EventHeader()
		k := ident{'f', h.JobID, h.ID, string(agent)}
		_, progress := ev.(*schemas.Progress)
		switch {
		case h.JobID == "" || len(h.JobID) > maxIDLen:
			k = ident{kind: 'a', id: h.ID}
		case progress:
			k = ident{kind: 'p', job: h.JobID, id: h.ID}
		case h.ID == "" || len(h.ID) > maxIDLen || len(agent) > maxIDLen:
			k.kind = 'r'
		case sequenced:
			k.kind = 0 // filed by sequence: no need to drop
		}
		if k.kind != 0 && seen[k] {
			continue
		}
		seen[k] = true
		e := fuzzEvent{ev: ev, payload: bytes.Clone(payload), agent: string(agent)}
		if sequenced {
			e.seq = uint64(len(out) + 1)
		}
		out = append(out, e)
	}
	return out
}

// encodeFuzzInput is the inverse of decodeFuzzInput, for seeds.
func encodeFuzzInput(t testing.TB, agent string, evs ...schemas.Event) []byte {
	t.Helper()
	var b []byte
	for _, ev := range evs {
		a := agent
		if s, ok := ev.(*sourced); ok {
			ev, a = s.Event, s.src.Agent
		}
		subject := schemas.NameOf(ev)
		if subject == schemas.NameProgress {
			subject += "." + ev.EventHeader().JobID
		}
		data, err := schemas.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := schemas.Decode(subject, data); err != nil {
			t.Fatalf("seed event %s does not decode: %v", ev.EventHeader().ID, err)
		}
		if len(b) > 0 {
			b = append(b, recordSep)
		}
		b = append(append(append(append(append(b, subject...), fieldSep), a...), fieldSep), data...)
	}
	return b
}

// openFuzzCatalog opens a catalog in a fresh directory as Open does, but
// without fsync and without Open's large initial mapping: the fuzzer checks
// logic, not durability, and runs thousands of catalogs.
func openFuzzCatalog(t *testing.T) *Catalog {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "catalog.db"), 0o600, &bolt.Options{
		NoSync: true, NoGrowSync: true, NoFreelistSync: true,
		FreelistType: bolt.FreelistMapType, PageSize: pageSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	c := &Catalog{db: db, now: time.Now}
	if err := db.Update(c.initBuckets); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// FuzzApply applies the events of its input to fresh catalogs, each event
// with the stream sequence of its place in the input: in input order in
// one batch, in reverse order in small batches, and shuffled (a shuffle
// seeded by the input) in random batches with some events redelivered. It
// requires the same catalog from all three, and that every completed job
// (every chain head) has the backup.started of its attempt from its agent
// and a matching backup.changeid per disk among its applied events. Then
// it does the same with every sequence 0 (unknown: events applied without
// a Source).
func FuzzApply(f *testing.F) {
	f.Fuzz(checkApply)
}

// checkApply is FuzzApply's check of one input.
func checkApply(t *testing.T, data []byte) {
	for _, sequenced := range []bool{true, false} {
		evs := decodeFuzzInput(data, sequenced)
		if len(evs) == 0 {
			return
		}
		one := openFuzzCatalog(t)
		batch := make([]schemas.Event, len(evs))
		for i, e := range evs {
			batch[i] = e.sourced()
		}
		if _, err := one.Apply(batch...); err != nil {
			t.Fatal(err)
		}
		want, err := one.Dump()
		if err != nil {
			t.Fatal(err)
		}

		many := openFuzzCatalog(t)
		size := 1 + int(data[0])%3
		for end := len(evs); end > 0; end -= size {
			var b []schemas.Event
			for i := end - 1; i >= max(0, end-size); i-- {
				b = append(b, evs[i].sourced())
			}
			if _, err := many.Apply(b...); err != nil {
				t.Fatal(err)
			}
		}
		got, err := many.Dump()
		if err != nil {
			t.Fatal(err)
		}
		if !want.Equal(got) {
			t.Fatalf("sequenced %v: one batch and reversed batches of %d differ:\n%s", sequenced, size, snapshotDiff(want, got))
		}

		h := fnv.New64a()
		h.Write(data)
		rng := rand.New(rand.NewPCG(h.Sum64(), 3))
		mixed := slices.Clone(batch)
		for range rng.IntN(3) {
			mixed = append(mixed, batch[rng.IntN(len(batch))])
		}
		rng.Shuffle(len(mixed), func(i, j int) { mixed[i], mixed[j] = mixed[j], mixed[i] })
		shuffled := openFuzzCatalog(t)
		for rest := mixed; len(rest) > 0; {
			n := 1 + rng.IntN(len(rest))
			if _, err := shuffled.Apply(rest[:n]...); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		if got, err = shuffled.Dump(); err != nil {
			t.Fatal(err)
		}
		if !want.Equal(got) {
			t.Fatalf("sequenced %v: one batch and a shuffle differ:\n%s", sequenced, snapshotDiff(want, got))
		}

		for _, j := range want.Jobs {
			if j.Status != backup.StatusCompleted {
				continue
			}
			applied := func(match func(fuzzEvent) bool) bool {
				return slices.ContainsFunc(evs, func(e fuzzEvent) bool {
					h := e.ev.EventHeader()
					return h.JobID == j.ID && h.Attempt == j.Attempt && e.agent == j.Agent &&
						slices.Contains(j.EventIDs, h.ID) && match(e)
				})
			}
			if !applied(func(e fuzzEvent) bool { _, ok := e.ev.(*schemas.Started); return ok }) {
				t.Fatalf("completed job %s (attempt %d, agent %q) has no applied started of its attempt from its agent", j.ID, j.Attempt, j.Agent)
			}
			for _, d := range j.Disks {
				if !applied(func(e fuzzEvent) bool {
					c, ok := e.ev.(*schemas.ChangeID)
					return ok && c.Disk.Key == d.Disk.Key && c.ChangeID == d.ChangeID && c.Target == d.Target
				}) {
					t.Fatalf("completed job %s: disk %d's change id %s is no applied changeid's of its agent %q", j.ID, d.Disk.Key, d.ChangeID, j.Agent)
				}
			}
		}
		for _, l := range want.Links {
			if i := slices.IndexFunc(want.Jobs, func(j backup.Job) bool { return j.ID == l.JobID }); i < 0 || want.Jobs[i].Status != backup.StatusCompleted {
				t.Fatalf("link of job %s, which is not completed", l.JobID)
			}
		}
	}
}

// TestWriteFuzzSeeds writes FuzzApply's seed corpus when
// SENDENSE_WRITE_FUZZ_SEEDS is set; otherwise it checks that every seed
// still decodes to events.
func TestWriteFuzzSeeds(t *testing.T) {
	both := []schemas.DiskRef{diskA, diskB}
	legit := spec{job: "j-legit", disks: both}
	a2 := spec{job: "j-legit", disks: both, attempt: 2, at: t0.Add(time.Hour)}
	escape := spec{job: "j-escape"}.run()
	escape[1].(*schemas.ChangeID).Target = "../../etc/passwd"
	run := legit.run()
	prog := legit.progress(1)
	prog.Disks = []schemas.DiskProgress{{Disk: diskA, BytesDone: prog.BytesDone, BytesTotal: prog.BytesTotal}}
	seeds := map[string][]byte{
		"legit": encodeFuzzInput(t, "node1", concat(run[:1], []schemas.Event{prog}, run[1:])...),
		"forged-completed": encodeFuzzInput(t, "node1", concat(run,
			from("node2", forgedCompleted(legit, 2)), []schemas.Event{forgedCompleted(legit, 3)})...),
		"out-of-order": encodeFuzzInput(t, "node1", run[3], run[1], a2.failed(false), run[2], run[0]),
		"two-agents-legacy": encodeFuzzInput(t, "", concat(run[:3], from("node2", run[3], legit.started()),
			from("node1", a2.run()...))...),
		"escape": encodeFuzzInput(t, "node1", escape...),
		"forged-new-job": encodeFuzzInput(t, "node2", concat(from("node1", run...),
			[]schemas.Event{forgedCompleted(spec{job: "j-forged", disks: both, at: t0.Add(time.Hour)}, 1)})...),
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzApply")
	write := os.Getenv("SENDENSE_WRITE_FUZZ_SEEDS") != ""
	for name, data := range seeds {
		if n := len(decodeFuzzInput(data, true)); n < 3 {
			t.Errorf("seed %s decodes to %d events", name, n)
		}
		if !write {
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		file := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(data)))
		if err := os.WriteFile(filepath.Join(dir, name), []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
