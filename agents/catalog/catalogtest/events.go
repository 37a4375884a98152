// Package catalogtest builds valid backup events for tests of the catalog
// consumer and of the commands that query it: whole jobs (started, one
// changeid per disk, completed), failed and rejected jobs, chains of fulls
// and incrementals, and a deterministic mix of many jobs.
//
// It must never be imported by non-test code.
package catalogtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/store"
)

// T0 is the time of the first event of every builder unless a Job says
// otherwise.
var T0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// VM returns the i-th test VM: name "vm-<i>", a fixed instance UUID and
// moref "vm-<100+i>".
func VM(i int) schemas.VMRef {
	return schemas.VMRef{
		Name:  fmt.Sprintf("vm-%02d", i),
		UUID:  fmt.Sprintf("50123456-aaaa-bbbb-cccc-%012x", i),
		Moref: fmt.Sprintf("vm-%d", 100+i),
	}
}

// Disk returns the i-th disk of a VM: device key 2000+i, a fixed disk UUID
// derived from vm and i, 8 GiB × (i+1).
func Disk(vm, i int) schemas.DiskRef {
	return schemas.DiskRef{
		Key:           int32(2000 + i),
		UUID:          fmt.Sprintf("6000c291-%04x-0000-0000-%012x", vm, i),
		CapacityBytes: int64(i+1) << 33,
	}
}

// Job describes one attempt of one backup job. Zero fields get defaults:
// VM(0), repository "default", attempt 1, T0, one disk Disk(0, 0), full.
type Job struct {
	ID      string
	VM      schemas.VMRef
	Repo    string
	Attempt int
	At      time.Time // backup.started; later events follow a second apart
	Disks   []schemas.DiskRef
	// Incremental makes every disk an incremental backed by Backing with
	// base change id BaseChangeID (both required then).
	Incremental  bool
	Backing      string
	BaseChangeID string
}

func (j Job) withDefaults() Job {
	if j.VM == (schemas.VMRef{}) {
		j.VM = VM(0)
	}
	if j.Repo == "" {
		j.Repo = schemas.DefaultRepository
	}
	if j.Attempt == 0 {
		j.Attempt = 1
	}
	if j.At.IsZero() {
		j.At = T0
	}
	if j.Disks == nil {
		j.Disks = []schemas.DiskRef{Disk(0, 0)}
	}
	return j
}

func (j Job) header(name string, diskKey int32, at time.Time) schemas.Header {
	h := schemas.Header{
		ID:      bus.EventID(j.ID, j.Attempt, name, diskKey, 0),
		Time:    at,
		JobID:   j.ID,
		Attempt: j.Attempt,
		VM:      j.VM,
	}
	schemas.Stamp(&h, name)
	return h
}

func (j Job) typ() (typ, reason string) {
	if j.Incremental {
		return schemas.TypeIncremental, schemas.ReasonBaseUsable
	}
	return schemas.TypeFull, schemas.ReasonNoBase
}

// Target is the repository path of disk d's QCOW2 in this job.
func (j Job) Target(d schemas.DiskRef) string {
	j = j.withDefaults()
	return fmt.Sprintf("%s/%d/%s.qcow2", j.VM.UUID, d.Key, j.ID)
}

// ChangeIDOf is the change id this job records for disk d (VMware format).
func (j Job) ChangeIDOf(d schemas.DiskRef) string {
	j = j.withDefaults()
	var sum uint32
	for _, c := range j.ID {
		sum = sum*31 + uint32(c)
	}
	return fmt.Sprintf("52 de 4c 0b 6f 37 1f 3d-a2 5a 6b 2d a2 0d %02x f7/%d", uint32(d.Key)%256, sum%1000000+uint32(j.Attempt))
}

// Started is the job's backup.started.
func (j Job) Started() *schemas.Started {
	j = j.withDefaults()
	typ, reason := j.typ()
	ev := &schemas.Started{
		Header:        j.header(schemas.NameStarted, 0, j.At),
		Repository:    j.Repo,
		RequestedType: schemas.TypeAuto,
		RequestedBy:   "test",
		Snapshot:      "sendense-" + j.ID,
	}
	for _, d := range j.Disks {
		p := schemas.DiskPlan{Disk: d, BackupType: typ, Reason: reason, Target: j.Target(d)}
		if j.Incremental {
			p.BaseChangeID, p.Backing = j.BaseChangeID, j.Backing
		}
		ev.Disks = append(ev.Disks, p)
	}
	return ev
}

// ChangeID is the backup.changeid of the job's i-th disk.
func (j Job) ChangeID(i int) *schemas.ChangeID {
	j = j.withDefaults()
	d := j.Disks[i]
	typ, _ := j.typ()
	return &schemas.ChangeID{
		Header:       j.header(schemas.NameChangeID, d.Key, j.At.Add(time.Duration(i+1)*time.Second)),
		Repository:   j.Repo,
		Disk:         d,
		ChangeID:     j.ChangeIDOf(d),
		BackupType:   typ,
		BytesRead:    int64(i+1) << 20,
		BytesWritten: int64(i+1) << 19,
		Target:       j.Target(d),
	}
}

// CompletedAt is the time of the job's completed or failed event.
func (j Job) CompletedAt() time.Time {
	j = j.withDefaults()
	return j.At.Add(time.Duration(len(j.Disks)+1) * time.Second)
}

// Completed is the job's backup.completed, with every disk's change id.
func (j Job) Completed() *schemas.Completed {
	j = j.withDefaults()
	typ, reason := j.typ()
	ev := &schemas.Completed{
		Header:     j.header(schemas.NameCompleted, 0, j.CompletedAt()),
		Repository: j.Repo,
	}
	for i, d := range j.Disks {
		r := schemas.DiskResult{
			Disk: d, ChangeID: j.ChangeIDOf(d), BackupType: typ, Reason: reason,
			BytesRead: int64(i+1) << 20, BytesWritten: int64(i+1) << 19,
			Target: j.Target(d), ActualSizeBytes: int64(i+1) << 18,
		}
		if j.Incremental {
			r.BaseChangeID, r.Backing = j.BaseChangeID, j.Backing
		}
		ev.Disks = append(ev.Disks, r)
	}
	return ev
}

// Failed is the job's backup.failed.
func (j Job) Failed(retryable bool) *schemas.Failed {
	j = j.withDefaults()
	return &schemas.Failed{
		Header:     j.header(schemas.NameFailed, 0, j.CompletedAt()),
		Repository: j.Repo,
		Reason:     schemas.FailTargetNBD,
		Message:    "connect to target: connection refused",
		Retryable:  retryable,
	}
}

// Rejected is the job's backup.rejected (unknown VM).
func (j Job) Rejected() *schemas.Rejected {
	j = j.withDefaults()
	return &schemas.Rejected{
		Header:  j.header(schemas.NameRejected, 0, j.At),
		Reason:  schemas.RejectUnknownVM,
		Message: "no vm named " + j.VM.Name,
		Request: `{"vm":"` + j.VM.Name + `"}`,
	}
}

// PruneDisks are the job's disks as the hub's prune events name them,
// each with operation op onto child (and parent, for a rebase).
func (j Job) PruneDisks(op, child, parent string) []schemas.PruneDisk {
	j = j.withDefaults()
	out := make([]schemas.PruneDisk, 0, len(j.Disks))
	for _, d := range j.Disks {
		out = append(out, schemas.PruneDisk{Disk: d, Operation: op, Target: j.Target(d), Child: child, Parent: parent})
	}
	return out
}

// Pruning is the hub's backup.pruning of the job (an hour after it
// completed), for publishing through bus.NewHubPublisher.
func (j Job) Pruning(op, child, parent string) *schemas.Pruning {
	j = j.withDefaults()
	return &schemas.Pruning{Header: j.header(schemas.NamePruning, 0, j.CompletedAt().Add(time.Hour)),
		Repository: j.Repo, Disks: j.PruneDisks(op, child, parent)}
}

// Pruned is the hub's backup.pruned of the job, a minute after Pruning.
func (j Job) Pruned(op, child, parent string) *schemas.Pruned {
	j = j.withDefaults()
	return &schemas.Pruned{Header: j.header(schemas.NamePruned, 0, j.CompletedAt().Add(time.Hour+time.Minute)),
		Repository: j.Repo, Disks: j.PruneDisks(op, child, parent)}
}

// Run is a successful attempt: started, one changeid per disk, completed.
func (j Job) Run() []schemas.Event {
	j = j.withDefaults()
	evs := []schemas.Event{j.Started()}
	for i := range j.Disks {
		evs = append(evs, j.ChangeID(i))
	}
	return append(evs, j.Completed())
}

// FailedRun is started, the first disk's changeid, failed.
func (j Job) FailedRun(retryable bool) []schemas.Event {
	return []schemas.Event{j.Started(), j.ChangeID(0), j.Failed(retryable)}
}

// Next returns the incremental that follows j (completed) on the same VM,
// disks and repository, an hour later, with job id id.
func (j Job) Next(id string) Job {
	j = j.withDefaults()
	n := j
	n.ID, n.Attempt, n.At = id, 1, j.At.Add(time.Hour)
	n.Incremental, n.Backing = true, j.ID
	n.BaseChangeID = j.ChangeIDOf(j.Disks[0])
	return n
}

// Mixed returns the events of n jobs (ids "<prefix>-0000", ...) over six
// VMs, in a deterministic order for seed: chains of a full and
// incrementals, failures, a retry that completes on attempt 2, and
// rejections. Events of different jobs are interleaved; a job's own events
// keep their order. Different prefixes give disjoint jobs on the same VMs.
func Mixed(prefix string, n int, seed uint64) []schemas.Event {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var jobs [][]schemas.Event
	const vms = 6
	prev := make([]*Job, vms)
	for i := range n {
		v := i % vms
		ndisks := 1 + v%3
		disks := make([]schemas.DiskRef, ndisks)
		for k := range disks {
			disks[k] = Disk(v, k)
		}
		j := Job{ID: fmt.Sprintf("%s-%04d", prefix, i), VM: VM(v), Disks: disks,
			At: T0.Add(time.Duration(i) * time.Minute)}
		if p := prev[v]; p != nil {
			nj := p.Next(j.ID)
			nj.At = j.At
			j = nj
		}
		switch r := rng.IntN(10); {
		case r < 6:
			jobs = append(jobs, j.Run())
			prev[v] = &j
		case r < 7:
			jobs = append(jobs, j.FailedRun(false))
		case r < 8:
			retry := j
			retry.Attempt = 2
			retry.At = j.At.Add(10 * time.Second)
			jobs = append(jobs, append(j.FailedRun(true), retry.Run()...))
			prev[v] = &retry
		default:
			jobs = append(jobs, []schemas.Event{j.Rejected()})
		}
	}
	// Interleave: repeatedly take the next event of a random job.
	var out []schemas.Event
	for len(jobs) > 0 {
		k := rng.IntN(len(jobs))
		out = append(out, jobs[k][0])
		if jobs[k] = jobs[k][1:]; len(jobs[k]) == 0 {
			jobs = append(jobs[:k], jobs[k+1:]...)
		}
	}
	return out
}

// Shuffle returns evs in a random order for seed.
func Shuffle(evs []schemas.Event, seed uint64) []schemas.Event {
	out := append([]schemas.Event(nil), evs...)
	rng := rand.New(rand.NewPCG(seed, seed+1))
	rng.Shuffle(len(out), func(i, k int) { out[i], out[k] = out[k], out[i] })
	return out
}

// Agent is the agent every builder's events come from.
const Agent = "test-agent"

// Publisher returns Agent's publisher on js (bus.NewAgentPublisher).
func Publisher(js jetstream.JetStream, log zerolog.Logger) *bus.Publisher {
	p, err := bus.NewAgentPublisher(js, Agent, log)
	if err != nil {
		panic(err) // Agent is a valid name
	}
	return p
}

// FromAgent marks evs as published by Agent and stored in a stream in the
// order given (sequences 1, 2, ...), for store.Apply: what the catalog
// consumer files for them when they are published in that order (Publish)
// to an empty stream. Only the order of the sequences counts, so this
// holds as long as the stream stored them in that order.
func FromAgent(evs ...schemas.Event) []schemas.Event {
	out := make([]schemas.Event, len(evs))
	for i, ev := range evs {
		out[i] = store.WithSource(ev, store.Source{Agent: Agent, Seq: uint64(i + 1)})
	}
	return out
}

// Publish publishes evs in order through p (an agent's publisher).
func Publish(ctx context.Context, p *bus.Publisher, evs ...schemas.Event) error {
	for _, ev := range evs {
		if _, err := p.PublishEvent(ctx, ev); err != nil {
			return err
		}
	}
	return nil
}

// PublishParallel publishes evs through p from workers goroutines (8 when
// workers <= 0), so many events are stored quickly on a server that syncs
// every write. The stream order then differs from evs' order. The catalog
// does not care as long as no two events compete (two agents' events of
// one attempt, two completed events of one job): then the stream order
// decides (store's consistency rules), and a catalog built with FromAgent
// in evs' order may differ from the consumer's.
func PublishParallel(ctx context.Context, p *bus.Publisher, workers int, evs ...schemas.Event) error {
	if workers <= 0 {
		workers = 8
	}
	ch := make(chan schemas.Event)
	errs := make(chan error, workers)
	for range workers {
		go func() {
			var first error
			for ev := range ch {
				if first == nil {
					if _, err := p.PublishEvent(ctx, ev); err != nil {
						first = err
					}
				}
			}
			errs <- first
		}()
	}
	for _, ev := range evs {
		ch <- ev
	}
	close(ch)
	var err error
	for range workers {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	return err
}

// Verified is the hub's backup.verified of the job, after the given time
// past its completion, with every disk's status st (a failed disk names
// chunk 3 as the first that differs).
func (j Job) Verified(after time.Duration, st string) *schemas.Verified {
	j = j.withDefaults()
	at := j.CompletedAt().Add(after)
	seq := at.UnixMilli()
	h := j.header(schemas.NameVerified, 0, at)
	h.ID = bus.EventID(j.ID, j.Attempt, schemas.NameVerified, 0, seq)
	ev := &schemas.Verified{Header: h, Repository: j.Repo, Seq: seq, Status: st}
	for _, p := range j.PruneDisks(schemas.PruneDelete, "", "") {
		d := schemas.VerifiedDisk{Disk: p.Disk, Target: p.Target, Status: st, BytesRead: p.Disk.CapacityBytes}
		if st == schemas.VerifyFailed {
			d.Problem, d.Detail, d.ChunkIndex, d.ChunkOffset = "data_mismatch", "chunk 3 differs from the manifest", 3, 3<<20
		}
		ev.Disks = append(ev.Disks, d)
	}
	return ev
}

// Chains returns n jobs of two disks, ids "<prefix>-<i>" (i in 7 digits),
// one second apart from T0, round robin over vms VMs from VM(firstVM):
// each VM's jobs a chain, a full and then incrementals (Next).
func Chains(prefix string, n, vms, firstVM int) []Job {
	jobs := make([]Job, 0, n)
	prev := map[int]Job{}
	for i := range n {
		v := firstVM + i%vms
		j := Job{ID: fmt.Sprintf("%s-%07d", prefix, i), VM: VM(v),
			Disks: []schemas.DiskRef{Disk(v, 0), Disk(v, 1)},
			At:    T0.Add(time.Duration(i) * time.Second)}
		if p, ok := prev[v]; ok {
			nj := p.Next(j.ID)
			nj.At = j.At
			j = nj
		}
		prev[v] = j
		jobs = append(jobs, j)
	}
	return jobs
}
