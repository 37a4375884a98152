package system

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/vmware"
)

// The attacks of the trust issue, each through the real pipeline: a hostile
// client without agent credentials, and one with them.

// withAgents makes the credentials of more agents before the system starts,
// so its server admits them (a second, rogue agent).
func withAgents(names ...string) func(*Config) {
	return func(c *Config) {
		ids := make([]bus.Identity, len(names))
		for i, n := range names {
			ids[i] = bus.AgentIdentity(n)
		}
		if err := (bus.Creds{Dir: filepath.Join(c.DataDir, "creds")}).Ensure(ids...); err != nil {
			panic(err)
		}
	}
}

// client is a connection as one identity, in process.
type client struct {
	nc *nats.Conn
	js jetstream.JetStream
}

func (h *harness) connectAs(id bus.Identity) *client {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, js, err := h.sys.connect(ctx, id)
	if err != nil {
		h.t.Fatalf("connect as %s: %v", id, err)
	}
	return &client{nc: nc, js: js}
}

// refused publishes data on subject as c, the way `nats pub` does, and
// asserts the server refused it.
func (h *harness) refused(c *client, who, subject string, data []byte) {
	h.t.Helper()
	if err := c.nc.Publish(subject, data); err != nil {
		h.t.Fatal(err)
	}
	_ = c.nc.Flush()
	if err := c.nc.LastError(); !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), subject) {
		h.t.Errorf("%s publishing on %s: last error %v, want a permission violation", who, subject, err)
	}
}

// forge publishes ev as the agent named agent (with that agent's
// credentials): what a compromised or buggy agent can still do.
func (h *harness) forge(agent string, ev schemas.Event) {
	h.t.Helper()
	c := h.connectAs(bus.AgentIdentity(agent))
	data, err := json.Marshal(ev)
	if err != nil {
		h.t.Fatal(err)
	}
	subject := bus.AgentSubject(schemas.NameOf(ev), agent)
	if _, err := c.js.Publish(context.Background(), subject, data, jetstream.WithMsgID(ev.EventHeader().ID)); err != nil {
		h.t.Fatalf("agent %s publishing its forgery on %s: %v", agent, subject, err)
	}
}

// poisoned waits until the catalog lists a poison record for event id; a
// test goes on without one (failed), to show what the event did.
func (h *harness) poisoned(eventID string) backup.PoisonRecord {
	h.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		recs, err := h.cat.Poison(context.Background(), 1000)
		if err == nil {
			for _, r := range recs {
				if r.EventID == eventID {
					return r
				}
			}
		}
		if time.Now().After(deadline) {
			h.t.Errorf("no poison record for event %s (%v)", eventID, err)
			return backup.PoisonRecord{}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// streamCount is the number of messages in a stream.
func (h *harness) streamCount(name string) uint64 {
	h.t.Helper()
	st, err := h.sys.JS.Stream(context.Background(), name)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	return info.State.Msgs
}

// bumped returns c's change ids advanced by one sequence: what the next
// snapshot's change ids look like, and so what a forger predicts.
func bumped(t *testing.T, id string) string {
	t.Helper()
	cid, err := vmware.ParseChangeID(id)
	if err != nil {
		t.Fatal(err)
	}
	cid.Seq++
	return cid.String()
}

// TestForgedCompleted is attack 1: a copy of a real job's completed event
// with a higher attempt and every change id advanced to the next sequence.
// Before, it replaced the job's change ids, and the next incremental
// started and ended at the same change id, copied nothing, and its restore
// differed from the VM's disk. Now a client without agent credentials is
// refused by the server, and one with them (the job's own agent, or
// another) is poisoned by the catalog; the next incremental is correct.
func TestForgedCompleted(t *testing.T) {
	t.Parallel()
	h := startHarness(t, withAgents("rogue"))
	h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	h.guestWrite("pgtest1", 21)
	real := h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	before := h.job(real.JobID, backup.StatusCompleted)

	forged := *real
	forged.Attempt = real.Attempt + 1
	forged.ID = bus.EventID(real.JobID, forged.Attempt, schemas.NameCompleted, 0, 0)
	forged.Disks = append([]schemas.DiskResult(nil), real.Disks...)
	for i := range forged.Disks {
		forged.Disks[i].ChangeID = bumped(t, real.Disks[i].ChangeID)
	}
	data, _ := json.Marshal(&forged)
	stored := h.streamCount(bus.StreamEvents)
	for _, role := range []bus.Role{bus.RoleRequester, bus.RoleMonitor, bus.RoleHub, bus.RoleCatalog} {
		h.refused(h.connectAs(bus.Identity{Role: role}), string(role), bus.AgentSubject(schemas.NameCompleted, "test-agent"), data)
	}
	if n := h.streamCount(bus.StreamEvents); n != stored {
		t.Errorf("events stream grew from %d to %d messages by forgeries without agent credentials", stored, n)
	}

	// With agent credentials: stored, but poisoned, and the job unchanged.
	h.forge("test-agent", &forged)
	rec := h.poisoned(forged.ID)
	t.Logf("forgery by the job's own agent poisoned: %s", rec.Reason)
	rogue := forged
	rogue.Attempt++
	rogue.ID = bus.EventID(real.JobID, rogue.Attempt, schemas.NameCompleted, 0, 0)
	h.forge("rogue", &rogue)
	rec = h.poisoned(rogue.ID)
	t.Logf("forgery by another agent poisoned: %s", rec.Reason)
	time.Sleep(500 * time.Millisecond) // the catalog applies what it applies
	after := h.job(real.JobID, backup.StatusCompleted)
	if after.Attempt != before.Attempt || jsonOf(after.Disks) != jsonOf(before.Disks) {
		t.Errorf("completed job rewritten by the forgeries:\nbefore %s\nafter  %s", jsonOf(before), jsonOf(after))
	}

	// The next incremental starts from the real change ids, copies the
	// guest's writes, and restores identical to its snapshot.
	h.guestWrite("pgtest1", 22)
	next := h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	for _, d := range next.Disks {
		base := diskOf(t, real, d.Disk.Key)
		if d.BackupType != schemas.TypeIncremental || d.BaseChangeID != base.ChangeID || d.Backing != real.JobID {
			t.Errorf("disk %d: %s since %q backing %q, want incremental since %q backing %s",
				d.Disk.Key, d.BackupType, d.BaseChangeID, d.Backing, base.ChangeID, real.JobID)
		}
		if d.BytesRead == 0 {
			t.Errorf("disk %d: the incremental read nothing", d.Disk.Key)
		}
		h.sameData(h.frozen("pgtest1", next.JobID, d.Disk.Key), h.targetPath(d))
	}
}

// TestForgedJobs is attacks 2 and 8: events for a job that never ran, and
// events that would rewrite a completed job or point outside the
// repository, from agent credentials, are poisoned and never a chain head;
// without agent credentials a forged started is refused.
func TestForgedJobs(t *testing.T) {
	t.Parallel()
	h := startHarness(t, nil)
	real := h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	vm := real.VM

	// A forged started from a requester: refused.
	ghost := "ghost-job"
	started := &schemas.Started{Header: header(ghost, 1, schemas.NameStarted, vm, 0), Repository: "default",
		RequestedType: schemas.TypeAuto, Snapshot: "sendense-" + ghost}
	for _, d := range real.Disks {
		started.Disks = append(started.Disks, schemas.DiskPlan{Disk: d.Disk, BackupType: schemas.TypeFull,
			Reason: schemas.ReasonNoBase, Target: targetOf(vm.UUID, d.Disk.Key, ghost)})
	}
	data, _ := json.Marshal(started)
	h.refused(h.connectAs(bus.Identity{Role: bus.RoleRequester}), "requester", bus.AgentSubject(schemas.NameStarted, "test-agent"), data)

	// Attack 2: a completed of a job that never ran, as the chain's head.
	fake := *real
	fake.Header = header(ghost, 1, schemas.NameCompleted, vm, 0)
	fake.Time = time.Now().UTC()
	fake.Disks = append([]schemas.DiskResult(nil), real.Disks...)
	for i := range fake.Disks {
		fake.Disks[i].Target = targetOf(vm.UUID, fake.Disks[i].Disk.Key, ghost)
		fake.Disks[i].ChangeID = bumped(t, real.Disks[i].ChangeID)
	}
	h.forge("test-agent", &fake)
	h.poisoned(fake.ID)

	// Attack 8: events of a higher attempt on the completed job, and a
	// completed whose target leaves the repository.
	failed := &schemas.Failed{Header: header(real.JobID, real.Attempt+1, schemas.NameFailed, vm, 0), Repository: "default",
		Reason: schemas.FailCopy, Message: "forged", Retryable: false}
	h.forge("test-agent", failed)
	cid := &schemas.ChangeID{Header: header(real.JobID, real.Attempt+1, schemas.NameChangeID, vm, real.Disks[0].Disk.Key),
		Repository: "default", Disk: real.Disks[0].Disk, ChangeID: bumped(t, real.Disks[0].ChangeID),
		BackupType: schemas.TypeFull, Target: real.Disks[0].Target}
	h.forge("test-agent", cid)
	escape := fake
	escape.Header = header("escape-job", 1, schemas.NameCompleted, vm, 0)
	escape.Disks = append([]schemas.DiskResult(nil), real.Disks...)
	for i := range escape.Disks {
		escape.Disks[i].Target = "../../etc/passwd"
	}
	h.forge("test-agent", &escape)
	for _, id := range []string{failed.ID, cid.ID, escape.ID} {
		r := h.poisoned(id)
		t.Logf("%s poisoned: %s", id, r.Reason)
	}
	j := h.job(real.JobID, backup.StatusCompleted)
	if j.Attempt != real.Attempt || j.Failure != nil {
		t.Errorf("completed job rewritten: attempt %d failure %+v", j.Attempt, j.Failure)
	}
	if _, err := h.cat.Job(context.Background(), "escape-job"); err == nil {
		if j, _ := h.cat.Job(context.Background(), "escape-job"); j.Status == backup.StatusCompleted {
			t.Errorf("job with a target outside the repository is completed: %+v", j)
		}
	}

	// The next backup plans from the real head and completes.
	h.guestWrite("pgtest1", 31)
	next := h.completed(h.request("pgtest1", schemas.TypeAuto, ""))
	for _, d := range next.Disks {
		if d.Backing != real.JobID || d.BaseChangeID != diskOf(t, real, d.Disk.Key).ChangeID {
			t.Errorf("disk %d backs onto %q since %q, want %s", d.Disk.Key, d.Backing, d.BaseChangeID, real.JobID)
		}
		h.sameData(h.frozen("pgtest1", next.JobID, d.Disk.Key), h.targetPath(d))
	}
}

// TestLeaseDeleted is attack 3: only agents and the hub (which takes a VM's
// lease while it prunes the VM's chains; design "Retention") write the
// lease bucket; and an
// agent whose lease is deleted mid-copy (by another agent's credentials)
// notices within one renewal interval, stops, removes its snapshot and
// target, never reports completed for that attempt, and the job is tried
// again and completes on the previous head: the chain does not fork.
func TestLeaseDeleted(t *testing.T) {
	t.Parallel()
	h := startHarness(t, func(c *Config) {
		withAgents("rogue")(c)
		c.LeaseTTL = 3 * time.Second
	})
	good := h.completed(h.request("bigvm", schemas.TypeAuto, ""))
	if _, err := h.sys.Testbed.WriteRandom("bigvm", 2000, 0.6, 51); err != nil {
		t.Fatal(err)
	}
	id := h.request("bigvm", schemas.TypeFull, "")
	st := h.waitStarted(id)
	key := "$KV." + bus.LeaseBucket + "." + bus.VMLeaseKey(st.VM.UUID)
	del := nats.NewMsg(key)
	del.Header.Set("KV-Operation", "DEL")
	for _, role := range []bus.Role{bus.RoleRequester, bus.RoleMonitor, bus.RoleCatalog} {
		c := h.connectAs(bus.Identity{Role: role})
		if err := c.nc.PublishMsg(del); err != nil {
			t.Fatal(err)
		}
		_ = c.nc.Flush()
		if err := c.nc.LastError(); !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("%s deleting the lease: %v, want a permission violation", role, err)
		}
	}
	if _, held, _ := h.sys.Leases.Holder(context.Background(), bus.VMLeaseKey(st.VM.UUID)); !held {
		t.Fatal("lease gone after refused deletes")
	}

	kv, err := h.connectAs(bus.AgentIdentity("rogue")).js.KeyValue(context.Background(), bus.LeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(context.Background(), bus.VMLeaseKey(st.VM.UUID)); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	ev := h.next(time.Minute, func(ev schemas.Event) bool {
		if ev.EventHeader().JobID != id || ev.EventHeader().Attempt != st.Attempt {
			return false
		}
		switch ev.(type) {
		case *schemas.Failed, *schemas.Completed:
			return true
		}
		return false
	})
	f, ok := ev.(*schemas.Failed)
	if !ok || f.Reason != schemas.FailLeaseLost || !f.Retryable {
		t.Fatalf("attempt %d after its lease was deleted: %s, want a retryable %s failure", st.Attempt, jsonOf(ev), schemas.FailLeaseLost)
	}
	if took := time.Since(deleted); took > 3*time.Second/3+2*time.Second {
		t.Errorf("the agent took %v to stop after its lease was deleted", took)
	}
	// It is tried again and completes, backed by the last good point.
	c := h.completed(id)
	if c.Attempt <= st.Attempt {
		t.Errorf("completed at attempt %d, want one after %d", c.Attempt, st.Attempt)
	}
	if d := c.Disks[0]; d.BackupType != schemas.TypeFull {
		t.Errorf("retried job: %s", d.BackupType)
	}
	h.sameData(h.frozen("bigvm", id, 2000), h.targetPath(c.Disks[0]))
	chain, err := h.cat.Chain(context.Background(), good.VM.UUID, 2000, "default")
	if err != nil || len(chain) != 2 {
		t.Errorf("chain %+v (%v), want the two completed jobs", chain, err)
	}
	if n := len(h.snapshots("bigvm")); n != 0 {
		t.Errorf("%d snapshots left", n)
	}
}

// guestWrite writes 1% of each of vm's disks at random.
func (h *harness) guestWrite(vm string, seed int64) {
	h.t.Helper()
	for _, v := range h.sys.Testbed.VMs() {
		if v.Name != vm {
			continue
		}
		for i, d := range v.Disks {
			if _, err := h.sys.Testbed.WriteRandom(vm, d.Key, 0.01, seed+int64(i)); err != nil {
				h.t.Fatal(err)
			}
		}
	}
}

// header is an event header as an agent makes it.
func header(job string, attempt int, name string, vm schemas.VMRef, disk int32) schemas.Header {
	h := schemas.Header{ID: bus.EventID(job, attempt, name, disk, 0), Time: time.Now().UTC(), JobID: job, Attempt: attempt, VM: vm}
	schemas.Stamp(&h, name)
	return h
}

// targetOf is the repository's own path of a job's disk.
func targetOf(vmUUID string, key int32, job string) string {
	return fmt.Sprintf("%s/%d/%s.qcow2", vmUUID, key, job)
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
