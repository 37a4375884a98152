package system

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/retention"
	"github.com/sendense/sendense/schemas"
	"github.com/sendense/sendense/testbed"
)

// TestRetentionRandomized: 30 backups of pgtest1 with random guest writes
// (data, explicit zeros and holes, on both disks), with random retention
// runs in between (keep-last 1 to 4, sometimes with a protected point or
// keep-hourly), then every point the catalog keeps, read through its chain,
// equals the disk as its snapshot froze it and verifies against the
// manifest its backup recorded. After each forget the catalog's
// chains are the kept points in order, the repository check finds nothing
// wrong, every removed point's files are gone, and every backup after the
// first stays an incremental of the previous kept point. The seed is
// printed; SENDENSE_SEED repeats a run.
func TestRetentionRandomized(t *testing.T) {
	t.Parallel()
	const vm = "pgtest1"
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SENDENSE_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("SENDENSE_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (SENDENSE_SEED=%d repeats this run)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x5e9d))

	h := startHarness(t, func(c *Config) {
		for _, spec := range smallVMs() {
			if spec.Name == vm {
				c.SimVMs = []testbed.VMSpec{spec}
			}
		}
	})
	tb := h.sys.Testbed
	disks := tb.VMs()[0].Disks
	ctx := context.Background()
	start := time.Now()

	var (
		kept    []*schemas.Completed // oldest first
		removed = map[string]*schemas.Completed{}
		forgets int
		fileOps int
	)
	for i := range 30 {
		if i > 0 {
			for _, d := range disks {
				h.randomGuestWrites(rng, vm, d)
			}
		}
		c := h.completed(h.request(vm, schemas.TypeAuto, ""))
		for _, d := range c.Disks {
			switch {
			case len(kept) == 0 && d.BackupType != schemas.TypeFull:
				t.Errorf("backup %d disk %d: %s, want the first backup to be a full", i, d.Disk.Key, d.BackupType)
			case len(kept) > 0 && (d.BackupType != schemas.TypeIncremental || d.Backing != kept[len(kept)-1].JobID):
				t.Errorf("backup %d disk %d: %s (%s) onto %q, want an incremental onto the newest kept point %s",
					i, d.Disk.Key, d.BackupType, d.Reason, d.Backing, kept[len(kept)-1].JobID)
			}
		}
		kept = append(kept, c)
		if i == 29 || rng.IntN(3) != 0 {
			continue
		}

		policy := retention.Policy{Last: 1 + rng.IntN(4)}
		if rng.IntN(3) == 0 {
			policy.Protect = []string{kept[rng.IntN(len(kept))].JobID}
		}
		if rng.IntN(4) == 0 {
			policy.Hourly = 1
		}
		reply := h.forget(vm, policy)
		forgets++
		if len(reply.VMs) != 1 || len(reply.VMs[0].Points) != len(kept) {
			t.Fatalf("forget %d (%+v): reply %+v, want the %d points of %s", forgets, policy, reply, len(kept), vm)
		}
		decided := map[string]repoapi.ForgetPoint{}
		for _, p := range reply.VMs[0].Points {
			decided[p.JobID] = p
		}
		var next []*schemas.Completed
		for _, c := range kept {
			p, ok := decided[c.JobID]
			switch {
			case !ok:
				t.Fatalf("forget %d: point %s not in the reply", forgets, c.JobID)
			case p.Keep:
				next = append(next, c)
			case !p.Removed:
				t.Fatalf("forget %d: point %s to be removed (%v) was not", forgets, c.JobID, p.Reasons)
			default:
				removed[c.JobID] = c
				fileOps += len(c.Disks)
			}
		}
		if n := len(next); n < min(policy.Last, len(kept)) || n == 0 || next[n-1] != kept[len(kept)-1] {
			t.Fatalf("forget %d (%+v) kept %d points, want at least keep-last and always the newest", forgets, policy, n)
		}
		for _, id := range policy.Protect {
			if _, gone := removed[id]; gone {
				t.Errorf("forget %d: protected point %s was removed", forgets, id)
			}
		}
		kept = next
		h.checkChains(ctx, vm, kept, removed)
	}

	// Every kept point, read through its chain, is its snapshot.
	for _, c := range kept {
		for _, d := range c.Disks {
			h.sameData(h.frozen(vm, c.JobID, d.Disk.Key), h.targetPath(d))
		}
	}
	h.checkChains(ctx, vm, kept, removed)
	// Merges and rebases change files, never a point: each kept point still
	// matches the manifest its backup recorded, read through its chain.
	body, _ := json.Marshal(repoapi.VerifyRequest{VM: vm})
	msg, err := h.sys.NC.RequestWithContext(ctx, repoapi.SubjectVerify, body)
	if err != nil {
		t.Fatal(err)
	}
	var vr repoapi.VerifyReply
	if err := json.Unmarshal(msg.Data, &vr); err != nil || msg.Header.Get(micro.ErrorCodeHeader) != "" {
		t.Fatalf("verify: %s %v", msg.Data, err)
	}
	if len(vr.Results) != len(kept)*len(disks) || vr.Failed() {
		t.Errorf("verify after the forget runs: %+v, want %d results, all ok", vr.Results, len(kept)*len(disks))
	}
	for _, r := range vr.Results {
		if r.Status != repoapi.VerifyOK {
			t.Errorf("verify %s disk %d: %s %s %s", r.JobID, r.DiskKey, r.Status, r.Problem, r.Detail)
		}
	}
	var bytes int64
	for _, d := range disks {
		links, err := h.cat.Chain(ctx, kept[0].VM.UUID, d.Key, "default")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			bytes += l.ActualSizeBytes
		}
	}
	t.Logf("30 backups and %d forget runs in %s: %d points removed (%d disk files merged, rebased or deleted), %d kept, the kept chains' files hold %d MiB; every kept point equals its snapshot and verifies against its manifest",
		forgets, time.Since(start).Round(time.Millisecond), len(removed), fileOps, len(kept), bytes>>20)
}

// randomGuestWrites writes random data over up to 3% of a disk, and
// sometimes explicit zeros or a hole over a random range.
func (h *harness) randomGuestWrites(rng *rand.Rand, vm string, d testbed.DiskInfo) {
	h.t.Helper()
	tb := h.sys.Testbed
	if _, err := tb.WriteRandom(vm, d.Key, 0.001+rng.Float64()*0.03, rng.Int64()); err != nil {
		h.t.Fatal(err)
	}
	for _, op := range []string{"zeros", "hole"} {
		if rng.IntN(3) != 0 {
			continue
		}
		n := 1 + rng.Int64N(2*mib)
		off := rng.Int64N(d.CapacityBytes - n)
		var err error
		if op == "zeros" {
			err = tb.WriteZeros(vm, d.Key, off, n)
		} else {
			err = tb.PunchHole(vm, d.Key, off/4096*4096, (n+4095)/4096*4096)
		}
		if err != nil {
			h.t.Fatalf("guest %s [%d, +%d): %v", op, off, n, err)
		}
	}
}

// forget runs a retention policy on vm through the hub, as `sendense
// forget` does.
func (h *harness) forget(vm string, policy retention.Policy) repoapi.ForgetReply {
	h.t.Helper()
	body, _ := json.Marshal(repoapi.ForgetRequest{VM: vm, Policy: policy})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var msg *nats.Msg
	for {
		var err error
		if msg, err = h.sys.NC.RequestWithContext(ctx, repoapi.SubjectForget, body); err != nil {
			h.t.Fatalf("forget %s %+v: %v", vm, policy, err)
		}
		// The agent holds the VM's lease for a moment after its completed
		// event (until the catalog shows it); forget answers busy then.
		code := msg.Header.Get(micro.ErrorCodeHeader)
		if code == repoapi.CodeBusy && ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if code != "" {
			h.t.Fatalf("forget %s %+v: %s %s", vm, policy, code, msg.Header.Get(micro.ErrorHeader))
		}
		break
	}
	var reply repoapi.ForgetReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		h.t.Fatalf("forget reply %s: %v", msg.Data, err)
	}
	return reply
}

// checkChains: the catalog's chain of each disk is the kept points, oldest
// first, the first a full and each next one backed by the one before, in
// the catalog and in the files; removed points are pruned in the catalog
// and their files are gone; the repository check finds no problem.
func (h *harness) checkChains(ctx context.Context, vm string, kept []*schemas.Completed, removed map[string]*schemas.Completed) {
	h.t.Helper()
	uuid := kept[0].VM.UUID
	for _, d := range kept[0].Disks {
		links, err := h.cat.Chain(ctx, uuid, d.Disk.Key, "default")
		if err != nil {
			h.t.Fatal(err)
		}
		got := make([]string, len(links))
		for i, l := range links {
			got[i] = l.JobID
			want := ""
			if i > 0 {
				want = links[i-1].JobID
			}
			if l.Backing != want {
				h.t.Errorf("disk %d link %d (%s): backing %q in the catalog, want %q", d.Disk.Key, i, l.JobID, l.Backing, want)
			}
		}
		var want []string
		for _, c := range kept {
			want = append(want, c.JobID)
		}
		if !slices.Equal(got, want) {
			h.t.Fatalf("disk %d: catalog chain %v, want the kept points %v", d.Disk.Key, got, want)
		}
		files := h.chain(h.targetPath(diskOf(h.t, kept[len(kept)-1], d.Disk.Key)))
		if len(files) != len(kept) {
			h.t.Errorf("disk %d: the newest file's backing chain has %d files, want %d", d.Disk.Key, len(files), len(kept))
		}
		for i, f := range files { // newest first
			if wantPath := h.targetPath(diskOf(h.t, kept[len(kept)-1-i], d.Disk.Key)); f.Filename != wantPath {
				h.t.Errorf("disk %d: file %d of the chain is %s, want %s", d.Disk.Key, i, f.Filename, wantPath)
			}
		}
	}
	keptIDs := map[string]bool{}
	for _, c := range kept {
		keptIDs[c.JobID] = true
	}
	for id, c := range removed {
		if j := h.job(id, backup.StatusPruned); j.ID != id {
			h.t.Errorf("removed point %s: catalog %+v", id, j)
		}
		for _, d := range c.Disks {
			if p := h.targetPath(d); fileExists(p) {
				h.t.Errorf("removed point %s disk %d: %s still exists", id, d.Disk.Key, p)
			}
		}
	}
	body, _ := json.Marshal(repoapi.CheckRequest{DryRun: true})
	msg, err := h.sys.NC.RequestWithContext(ctx, repoapi.SubjectCheck, body)
	if err != nil {
		h.t.Fatal(err)
	}
	var rep repoapi.CheckReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil || msg.Header.Get(micro.ErrorCodeHeader) != "" {
		h.t.Fatalf("repo check: %s %v", msg.Data, err)
	}
	if len(rep.Problems) != 0 || len(rep.Orphans) != 0 {
		h.t.Errorf("repo check after forget: problems %+v orphans %+v", rep.Problems, rep.Orphans)
	}
}
