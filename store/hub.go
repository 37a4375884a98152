package store

import (
	"fmt"
	"strings"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/schemas"
)

// HubAgent is the agent of the events the hub publishes about completed
// jobs (schemas.HubEvents): the catalog consumer files an event from
// subject backup.<type>.hub with this agent (bus.HubAgent, the same name),
// and only the hub's credentials may publish there.
const HubAgent = "hub"

// Hub events are the events the hub publishes about a completed job (on
// backup.<type>.hub): they add to a completed job and never make or undo
// one. judge applies them only when (rule 7, consistency.go) their agent
// is HubAgent, their id is canonical with the completed attempt, the job
// is completed, their VM UUID and repository are the completed event's and
// hubEvent.check finds nothing wrong; then derive folds them into the job
// in canonical order (hubEvent.fold).
//
// To add one (backup.verified, say): its schema and Go type in schemas
// (listed in schemas.HubEvents, so the bus binds backup.verified.hub to
// BACKUP_EVENTS and lets only the hub publish it), the next free type code
// in eventNames (codes are stored in keys: never reuse or renumber one),
// an entry here, and the Job field its fold writes, encoded by appendJob.
type hubEvent struct {
	name string
	// check returns why ev does not fit the completed job j, or "".
	check func(j *backup.Job, ev schemas.Event) string
	// fold applies ev (applied) to the completed job j.
	fold func(j *backup.Job, ev schemas.Event)
}

var hubEvents = []hubEvent{
	{name: schemas.NamePruning, check: checkPrune, fold: func(j *backup.Job, ev schemas.Event) {
		e := ev.(*schemas.Pruning)
		if j.Prune == nil {
			j.Prune = &backup.Prune{State: backup.PrunePending}
		}
		j.Prune.RequestedAt = e.Time.UTC()
		j.Prune.Disks = e.Disks
	}},
	{name: schemas.NamePruned, check: checkPrune, fold: func(j *backup.Job, ev schemas.Event) {
		e := ev.(*schemas.Pruned)
		if j.Prune == nil {
			j.Prune = &backup.Prune{Disks: e.Disks}
		}
		j.Prune.State = backup.PruneDone
		j.Prune.PrunedAt = e.Time.UTC()
		j.Status = backup.StatusPruned
	}},
	{name: schemas.NameVerified, check: checkPrune, fold: func(j *backup.Job, ev schemas.Event) {
		e := ev.(*schemas.Verified)
		// Folded in canonical order (time, then id): the last is the
		// latest verification.
		v := &backup.Verification{Status: e.Status, Seq: e.Seq, VerifiedAt: e.Time.UTC(), Disks: e.Disks}
		j.Verification = v
		for i := range j.Disks {
			for _, d := range e.Disks {
				if d.Disk.Key == j.Disks[i].Disk.Key {
					j.Disks[i].Verified = d.Status
				}
			}
		}
	}},
}

// hubEventOf returns the hub event of name, or nil.
func hubEventOf(name string) *hubEvent {
	for i := range hubEvents {
		if hubEvents[i].name == name {
			return &hubEvents[i]
		}
	}
	return nil
}

// pruneDisks returns the disks of a backup.pruning, backup.pruned or
// backup.verified event (for a verification, only the fields checkPrune
// reads: disk and target).
func pruneDisks(ev schemas.Event) (string, []schemas.PruneDisk) {
	switch e := ev.(type) {
	case *schemas.Pruning:
		return e.Repository, e.Disks
	case *schemas.Pruned:
		return e.Repository, e.Disks
	case *schemas.Verified:
		disks := make([]schemas.PruneDisk, len(e.Disks))
		for i, d := range e.Disks {
			disks[i] = schemas.PruneDisk{Disk: d.Disk, Target: d.Target}
		}
		return e.Repository, disks
	}
	return "", nil
}

// checkPrune: every disk a prune event names is one of the completed
// job's, once, with the job's own target.
func checkPrune(j *backup.Job, ev schemas.Event) string {
	_, disks := pruneDisks(ev)
	var problems []string
	seen := map[int32]bool{}
	for _, d := range disks {
		k := d.Disk.Key
		if seen[k] {
			problems = append(problems, fmt.Sprintf("disk %d listed twice", k))
			continue
		}
		seen[k] = true
		var own *backup.Disk
		for i := range j.Disks {
			if j.Disks[i].Disk.Key == k {
				own = &j.Disks[i]
			}
		}
		switch {
		case own == nil:
			problems = append(problems, fmt.Sprintf("disk %d is not a disk of the completed job", k))
		case own.Target != d.Target:
			problems = append(problems, fmt.Sprintf("disk %d: target %q is not the job's %q", k, d.Target, own.Target))
		}
	}
	return strings.Join(problems, "; ")
}

// judgeHub returns why the hub event r does not fit the job completed by
// the completed event c (nil when the job is not completed), or "" (rule
// 7). j is the job derived without hub events.
func judgeHub(r record, c *schemas.Completed, j *backup.Job) string {
	h := r.ev.EventHeader()
	switch {
	case r.agent != HubAgent:
		return fmt.Sprintf("%s published by agent %s: only the hub publishes it", r.name, agentName(r.agent))
	case c == nil:
		return "job is not completed"
	case h.Attempt != c.Attempt:
		return fmt.Sprintf("attempt %d is not the completed attempt %d", h.Attempt, c.Attempt)
	case h.VM.UUID != c.VM.UUID:
		return fmt.Sprintf("vm uuid %s differs from %s of backup.completed", h.VM.UUID, c.VM.UUID)
	}
	if repo, _ := pruneDisks(r.ev); repo != "" && repo != c.Repository {
		return fmt.Sprintf("repository %s differs from %s of backup.completed", repo, c.Repository)
	}
	if he := hubEventOf(r.name); he != nil && j != nil {
		return he.check(j, r.ev)
	}
	return ""
}
