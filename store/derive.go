package store

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// badRecord is a stored event that judge refused: it takes no part in
// the job and is kept as a poison record.
type badRecord struct {
	rec    record
	reason string
	err    error // ErrIncomplete or ErrInconsistent
}

// rank orders event types within one attempt, so that a fold in canonical
// order sees the plan before the results and the results before the verdict.
func rank(name string) int {
	switch name {
	case schemas.NameRejected:
		return 0
	case schemas.NameStarted:
		return 1
	case schemas.NameChangeID:
		return 2
	case schemas.NameFailed:
		return 3
	case schemas.NameCompleted:
		return 4
	case schemas.NamePruning:
		return 5
	case schemas.NamePruned:
		return 6
	case schemas.NameVerified:
		return 7
	}
	return 8
}

// canonical sorts records by (attempt, type rank, time, event id, agent):
// an order that depends only on the records, never on when they were
// applied or stored. derive folds the applied events in it, so that the
// plan comes before the results and the results before the verdict.
func canonical(recs []record) {
	slices.SortFunc(recs, compareCanonical)
}

func compareCanonical(a, b record) int {
	ha, hb := a.ev.EventHeader(), b.ev.EventHeader()
	if c := cmp.Compare(ha.Attempt, hb.Attempt); c != 0 {
		return c
	}
	if c := cmp.Compare(rank(a.name), rank(b.name)); c != 0 {
		return c
	}
	if c := ha.Time.Compare(hb.Time); c != 0 {
		return c
	}
	return cmp.Or(cmp.Compare(ha.ID, hb.ID), cmp.Compare(a.agent, b.agent))
}

// inStreamOrder sorts records by stream sequence, then canonically (the
// events without a sequence first, see consistency.go): the order judge
// reads a job's history in.
func inStreamOrder(recs []record) {
	slices.SortFunc(recs, func(a, b record) int {
		return cmp.Or(cmp.Compare(a.seq, b.seq), compareCanonical(a, b))
	})
}

// derive computes a job from the set of its stored events (with their
// stream sequences) and its newest progress. It is a pure function of that
// set: the order the events were applied in cannot change the result. It
// also returns the events judge refuses (consistency.go), by (event id,
// agent); they take no part in the job. job is nil when no event is left.
// It reorders recs.
func derive(jobID string, recs []record, prog *backup.Progress) (*backup.Job, []badRecord) {
	inStreamOrder(recs)
	vs, win := judge(jobID, recs)

	var bad []badRecord
	var keep, hub []record
	for i, r := range recs {
		switch {
		case vs[i].reason != "":
			bad = append(bad, badRecord{rec: r, reason: vs[i].reason, err: vs[i].err})
		case hubEventOf(r.name) != nil:
			hub = append(hub, r) // judged against the derived job below
		default:
			keep = append(keep, r)
		}
	}
	var completedEv *schemas.Completed
	if win >= 0 {
		completedEv = recs[win].ev.(*schemas.Completed)
	}
	if len(keep) == 0 {
		return nil, sortBad(append(bad, judgeHubs(hub, nil, nil)...))
	}
	canonical(keep)
	j, bad := deriveJob(jobID, keep, bad, recs, win, prog)
	bad = append(bad, judgeHubs(hub, completedEv, j)...)
	return j, sortBad(bad)
}

// judgeHubs returns the hub events among hub that do not fit the
// completed job j (rule 7, judgeHub) as bad records, and folds the others
// into j in canonical order. c is the completed event (nil when the job is
// not completed: then every hub event is bad); j is nil when the job has
// no applied agent event.
func judgeHubs(hub []record, c *schemas.Completed, j *backup.Job) []badRecord {
	var bad []badRecord
	canonical(hub)
	for _, r := range hub {
		if reason := judgeHub(r, c, j); reason != "" {
			bad = append(bad, badRecord{rec: r, reason: reason, err: ErrInconsistent})
			continue
		}
		hubEventOf(r.name).fold(j, r.ev)
		j.EventIDs = append(j.EventIDs, r.ev.EventHeader().ID)
	}
	if j != nil {
		slices.Sort(j.EventIDs)
		j.EventIDs = slices.Compact(j.EventIDs)
		for _, b := range bad {
			j.PoisonedEventIDs = append(j.PoisonedEventIDs, b.rec.ev.EventHeader().ID)
		}
		slices.Sort(j.PoisonedEventIDs)
		j.PoisonedEventIDs = slices.Compact(j.PoisonedEventIDs)
	}
	return bad
}

// sortBad orders refused records by (event id, agent).
func sortBad(bad []badRecord) []badRecord {
	slices.SortFunc(bad, func(a, b badRecord) int {
		return cmp.Or(cmp.Compare(a.rec.ev.EventHeader().ID, b.rec.ev.EventHeader().ID), cmp.Compare(a.rec.agent, b.rec.agent))
	})
	return bad
}

// deriveJob computes the job from its applied agent events keep (in
// canonical order); bad are the refused ones so far, recs and win judge's
// input and winner.
func deriveJob(jobID string, keep []record, bad []badRecord, recs []record, win int, prog *backup.Progress) (*backup.Job, []badRecord) {
	bad = sortBad(bad)

	j := &backup.Job{ID: jobID, Disks: []backup.Disk{}, EventIDs: make([]string, 0, len(keep))}
	for i, b := range bad {
		if id := b.rec.ev.EventHeader().ID; i == 0 || id != j.PoisonedEventIDs[len(j.PoisonedEventIDs)-1] {
			j.PoisonedEventIDs = append(j.PoisonedEventIDs, id)
		}
	}
	var (
		completed     *schemas.Completed
		completedBy   string
		failed        *schemas.Failed
		rejected      *schemas.Rejected
		active        int // highest attempt of started/changeid
		hasActive     bool
		failedAttempt int // attempt of the last failed counted
	)
	if win >= 0 {
		completed, completedBy = recs[win].ev.(*schemas.Completed), recs[win].agent
	}
	for i, r := range keep {
		h := r.ev.EventHeader()
		t := h.Time.UTC()
		if i == 0 || t.Before(j.CreatedAt) {
			j.CreatedAt = t
		}
		if i == 0 || h.Attempt > j.Attempt {
			j.Attempt = h.Attempt
		}
		mergeVM(&j.VM, h.VM)
		j.EventIDs = append(j.EventIDs, h.ID)
		switch e := r.ev.(type) {
		case *schemas.Started:
			setStr(&j.Repository, e.Repository)
			setStr(&j.RequestedType, e.RequestedType)
			setStr(&j.RequestedBy, e.RequestedBy)
			if j.RequestSeq == 0 {
				j.RequestSeq = e.RequestSeq // canonical order: the lowest attempt's
			}
			if e.RequestedAt != nil && e.RequestedAt.UTC().Before(j.CreatedAt) {
				j.CreatedAt = e.RequestedAt.UTC() // the job was created when it was requested
			}
			if j.StartedAt.IsZero() || t.Before(j.StartedAt) {
				j.StartedAt = t
			}
			if !hasActive || e.Attempt > active {
				active, hasActive = e.Attempt, true
			}
		case *schemas.ChangeID:
			setStr(&j.Repository, e.Repository)
			if !hasActive || e.Attempt > active {
				active, hasActive = e.Attempt, true
			}
		case *schemas.Failed:
			setStr(&j.Repository, e.Repository)
			failed = e // canonical order: the last one is the latest
			if j.FailedAttempts == 0 || e.Attempt != failedAttempt {
				j.FailedAttempts++
				failedAttempt = e.Attempt
			}
		case *schemas.Completed:
			setStr(&j.Repository, e.Repository) // judge keeps only the winner
		case *schemas.Rejected:
			rejected = e
		}
	}
	slices.Sort(j.EventIDs)
	j.EventIDs = slices.Compact(j.EventIDs) // one id from two agents

	decisive := 0
	switch {
	case completed != nil:
		j.Status = backup.StatusCompleted
		j.FinishedAt = completed.Time.UTC()
		j.Repository = completed.Repository
		j.VM.UUID = completed.VM.UUID
		j.Agent = completedBy
		j.Attempt = completed.Attempt // a higher attempt stored before it is history
		decisive = completed.Attempt
	case failed != nil && (!hasActive || failed.Attempt >= active):
		j.Status = backup.StatusFailed
		j.FinishedAt = failed.Time.UTC()
		j.Failure = &backup.Failure{Reason: failed.Reason, Message: failed.Message, Retryable: failed.Retryable, Attempt: failed.Attempt}
		decisive = failed.Attempt
	case hasActive:
		j.Status = backup.StatusRunning
		decisive = active
	case rejected != nil: // only backup.rejected
		j.Status = backup.StatusRejected
		j.FinishedAt = rejected.Time.UTC()
		j.Failure = &backup.Failure{Reason: rejected.Reason, Message: rejected.Message, Retryable: rejected.Retryable, Attempt: rejected.Attempt}
		return withProgress(j, prog), bad
	}
	if completed == nil {
		for _, r := range keep {
			if _, ok := r.ev.(*schemas.Started); ok && r.ev.EventHeader().Attempt == decisive {
				j.Agent = r.agent // canonical order: the first started of the attempt
				break
			}
		}
	}

	disks := map[int32]*backup.Disk{}
	get := func(ref schemas.DiskRef) *backup.Disk {
		d := disks[ref.Key]
		if d == nil {
			d = &backup.Disk{Disk: schemas.DiskRef{Key: ref.Key}}
			disks[ref.Key] = d
		}
		mergeRef(&d.Disk, ref)
		return d
	}
	for _, r := range keep {
		if r.ev.EventHeader().Attempt != decisive {
			continue
		}
		// A completed job's disks, and so its chain links, come from its
		// agent's events alone: rule 4 leaves no other agent's event of
		// the attempt but a backup.rejected; this keeps it so should the
		// rules change.
		if completed != nil && r.agent != completedBy {
			continue
		}
		switch e := r.ev.(type) {
		case *schemas.Started:
			for _, p := range e.Disks {
				d := get(p.Disk)
				setStr(&d.BackupType, p.BackupType)
				setStr(&d.Reason, p.Reason)
				setStr(&d.BaseChangeID, p.BaseChangeID)
				setStr(&d.Backing, p.Backing)
				setStr(&d.Target, p.Target)
			}
		case *schemas.ChangeID:
			d := get(e.Disk)
			setStr(&d.ChangeID, e.ChangeID)
			setStr(&d.BackupType, e.BackupType)
			setStr(&d.Target, e.Target)
			setInt(&d.BytesRead, e.BytesRead)
			setInt(&d.BytesWritten, e.BytesWritten)
		case *schemas.Completed:
			for _, res := range e.Disks {
				d := get(res.Disk)
				setStr(&d.ChangeID, res.ChangeID)
				setStr(&d.BackupType, res.BackupType)
				setStr(&d.Reason, res.Reason)
				setStr(&d.BaseChangeID, res.BaseChangeID)
				setStr(&d.Target, res.Target)
				setStr(&d.Backing, res.Backing)
				setInt(&d.BytesRead, res.BytesRead)
				setInt(&d.BytesWritten, res.BytesWritten)
				setInt(&d.ActualSizeBytes, res.ActualSizeBytes)
				setStr(&d.ManifestSHA256, res.ManifestSHA256)
			}
		}
	}
	if completed != nil {
		only := make(map[int32]*backup.Disk, len(completed.Disks))
		for _, res := range completed.Disks {
			only[res.Disk.Key] = disks[res.Disk.Key]
		}
		disks = only
	}
	for _, d := range disks {
		j.Disks = append(j.Disks, *d)
	}
	slices.SortFunc(j.Disks, func(a, b backup.Disk) int { return cmp.Compare(a.Disk.Key, b.Disk.Key) })
	return withProgress(j, prog), bad
}

func withProgress(j *backup.Job, prog *backup.Progress) *backup.Job {
	if prog != nil {
		p := *prog
		j.Progress = &p
	}
	return j
}

// checkCompleted returns why c may not mark its job completed (invariant
// 2), or "". planned are the disks of the backup.started of c's attempt
// from c's agent (nil when there is none: rule 5 refuses c then).
func checkCompleted(c *schemas.Completed, planned map[int32]schemas.DiskRef) string {
	var problems []string
	switch {
	case c.VM.UUID == "":
		problems = append(problems, "no vm uuid")
	case len(c.VM.UUID) > maxIDLen:
		problems = append(problems, fmt.Sprintf("vm uuid longer than %d bytes", maxIDLen))
	}
	switch {
	case c.Repository == "":
		problems = append(problems, "no repository")
	case len(c.Repository) > maxIDLen:
		problems = append(problems, fmt.Sprintf("repository longer than %d bytes", maxIDLen))
	}
	if len(c.Disks) == 0 {
		problems = append(problems, "no disks")
	}
	results := slices.Clone(c.Disks)
	slices.SortStableFunc(results, func(a, b schemas.DiskResult) int { return cmp.Compare(a.Disk.Key, b.Disk.Key) })
	seen := map[int32]schemas.DiskRef{}
	for _, d := range results {
		k := d.Disk.Key
		if _, dup := seen[k]; dup {
			problems = append(problems, fmt.Sprintf("disk %d listed twice", k))
			continue
		}
		seen[k] = d.Disk
		if d.ChangeID == "" {
			problems = append(problems, fmt.Sprintf("disk %d has no change id", k))
		}
		if d.Disk.UUID == "" {
			problems = append(problems, fmt.Sprintf("disk %d has no uuid", k))
		}
		if d.Target == "" {
			problems = append(problems, fmt.Sprintf("disk %d has no target", k))
		}
	}
	keys := make([]int32, 0, len(planned))
	for k := range planned {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		p := planned[k]
		got, ok := seen[k]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("disk %d (uuid %s) of backup.started attempt %d is missing", k, p.UUID, c.Attempt))
		case p.UUID != "" && got.UUID != "" && p.UUID != got.UUID:
			problems = append(problems, fmt.Sprintf("disk %d has uuid %s, backup.started attempt %d had %s", k, got.UUID, c.Attempt, p.UUID))
		}
	}
	return strings.Join(problems, "; ")
}

func setStr(dst *string, v string) {
	if v != "" {
		*dst = v
	}
}

func setInt(dst *int64, v int64) {
	if v != 0 {
		*dst = v
	}
}

func mergeVM(dst *schemas.VMRef, v schemas.VMRef) {
	setStr(&dst.Name, v.Name)
	setStr(&dst.UUID, v.UUID)
	setStr(&dst.Moref, v.Moref)
}

func mergeRef(dst *schemas.DiskRef, v schemas.DiskRef) {
	dst.Key = v.Key
	setStr(&dst.UUID, v.UUID)
	setInt(&dst.CapacityBytes, v.CapacityBytes)
}
