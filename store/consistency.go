package store

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/sendense/sendense/schemas"
)

// The catalog keeps only consistent history (design invariant 10). Which of
// a job's stored events are applied and which are poison is decided by
// judge, a pure function of the job's whole event set, each event with the
// agent that published it and the stream sequence it was stored at
// (Source), so apply order, batching and duplicates cannot change it.
//
// Stream order is the order of the sequences: it is the order the stream
// stored the events in, which no publisher chooses for another. The
// publisher's times are data, never order. Events without a sequence (0:
// applied without a Source, or filed by a build of layout 2) come before
// every event with one, and among themselves in canonical order
// (attempt, type, time, id, agent; see canonical).
//
//  1. Canonical ids. An event's id is
//     <job_id>.<attempt>.<type>.<disk_key>.<seq> (bus.EventID): type is
//     the event's short name (started, changeid, completed, failed,
//     rejected, progress), disk_key the disk's key for backup.changeid and
//     0 otherwise, seq the sequence of backup.progress and 0 otherwise.
//  2. Targets. Every target of backup.started, backup.changeid and
//     backup.completed is the job's own path in the repository,
//     <vm uuid>/<disk key>/<job id>.qcow2 (the event's VM UUID, the disk's
//     key, the job id), and the VM UUID and job id are plain path names
//     (not empty, "." or "..", no '/', '\' or NUL).
//  3. Completed means complete (invariant 2, checkCompleted). Its failures
//     are ErrIncomplete; every other rule's are ErrInconsistent.
//  4. One agent per attempt. Attempt N belongs to the agent of its first
//     backup.started in stream order (of those that pass rules 1 and 2).
//     Started, changeid, completed and failed events of attempt N from any
//     other agent are poison ("attempt N belongs to agent X"), wherever
//     they are in the stream.
//  5. Same source. A backup.completed of attempt N from agent A needs a
//     backup.started of attempt N from A with the same VM UUID and
//     repository whose disks are exactly the completed event's (keys and
//     UUIDs), and per disk a backup.changeid of attempt N from A whose
//     change id, backup type, target, disk UUID and repository equal the
//     completed disk's. A completed applied before them is poison until
//     they are applied; then it is applied and its poison record removed.
//  6. A completed job is never rewritten. Of the completed events that
//     pass rules 1-5, the job's is the one the stream completed first:
//     the lowest by the sequence at which it and the events rule 5 needs
//     are all stored (the highest of their sequences), then by its own
//     sequence. When the agent publishes started, changeid and completed
//     in turn, that is the valid completed with the lowest sequence; and
//     a completed stored early without its changeid events cannot take a
//     completed job over when they come later. The other completed
//     events, and every event of a higher attempt stored after the job's
//     completed, are poison ("job already completed at attempt N"). Events
//     stored before it stay history, and so do later ones of its attempt
//     or a lower one: a backup.failed of the completed attempt (the agent
//     could not confirm its completed publish) leaves the job completed.
//
//  7. The hub's events about a completed job (backup.pruning,
//     backup.pruned, backup.verified: schemas.HubEvents) count only from
//     agent HubAgent, with a canonical id (disk key 0, seq 0; a
//     backup.verified's seq is its own) of the completed attempt,
//     on a completed job, with its VM UUID and repository, naming only
//     the job's disks with their own targets (judgeHub, in hub.go). They
//     never make, undo or rewrite a completed job; applied, they add to
//     it (a backup.pruned makes it pruned). One that arrives before the
//     job's completed is poison until the completed is applied.
//
// Rules 1 and 2 are checked first; an event they refuse does not count for
// rules 4 and 5 (a completed whose started has a foreign target is poison
// too). The agent "" (a legacy event, published before agents had
// identities) is an agent like any other: legacy started, changeid and
// completed events of one attempt still make a completed job.

// verdict is why judge refuses an event ("" when it is applied) and the
// sentinel of the per-event error.
type verdict struct {
	reason string
	err    error
}

// slot names a started (key 0) or changeid event of one attempt from one
// agent; with canonical ids there is at most one applied event per slot.
type slot struct {
	attempt int
	agent   string
	kind    byte // 's' started, 'c' changeid
	key     int32
}

// judge applies the rules above to recs, which are in stream order
// (inStreamOrder). It returns one verdict per record and the index of the
// completed event that makes the job completed (-1 for none).
func judge(jobID string, recs []record) ([]verdict, int) {
	vs := make([]verdict, len(recs))
	owners := map[int]string{} // attempt -> agent of its first started (rule 4)
	for i, r := range recs {
		if r.name == schemas.NameCompleted {
			continue // its id and targets are checked after checkCompleted
		}
		if reason := checkShape(jobID, r); reason != "" {
			vs[i] = verdict{reason, ErrInconsistent}
			continue
		}
		if s, ok := r.ev.(*schemas.Started); ok {
			if _, ok := owners[s.Attempt]; !ok {
				owners[s.Attempt] = r.agent
			}
		}
	}
	foreign := func(r record) string {
		n := r.ev.EventHeader().Attempt
		if owner, ok := owners[n]; ok && owner != r.agent {
			return fmt.Sprintf("attempt %d belongs to agent %s", n, agentName(owner))
		}
		return ""
	}

	slots := make(map[slot]int, len(recs))
	for i, r := range recs {
		var k slot
		switch e := r.ev.(type) {
		case *schemas.Started:
			k = slot{attempt: e.Attempt, agent: r.agent, kind: 's'}
		case *schemas.ChangeID:
			k = slot{attempt: e.Attempt, agent: r.agent, kind: 'c', key: e.Disk.Key}
		case *schemas.Failed:
		default:
			continue
		}
		if vs[i].reason == "" {
			if reason := foreign(r); reason != "" {
				vs[i] = verdict{reason, ErrInconsistent}
			}
		}
		if k.kind == 0 {
			continue
		}
		// Prefer an applied event to a refused one in the same slot.
		if j, ok := slots[k]; !ok || (vs[j].reason != "" && vs[i].reason == "") {
			slots[k] = i
		}
	}

	winner, winnerAt := -1, 0
	for i, r := range recs {
		c, ok := r.ev.(*schemas.Completed)
		if !ok {
			continue
		}
		var started *schemas.Started
		si, hasStarted := slots[slot{attempt: c.Attempt, agent: r.agent, kind: 's'}]
		if hasStarted && vs[si].reason == "" {
			started = recs[si].ev.(*schemas.Started)
		}
		if reason := checkCompleted(c, plannedDisks(started)); reason != "" {
			vs[i] = verdict{reason, ErrIncomplete}
			continue
		}
		reason := checkShape(jobID, r)
		if reason == "" {
			reason = foreign(r)
		}
		at := max(i, si) // where the stream completed it: the last of it and its sources
		if reason == "" {
			switch {
			case started != nil:
				reason = checkSource(c, started, func(key int32) (*schemas.ChangeID, string) {
					ci, ok := slots[slot{attempt: c.Attempt, agent: r.agent, kind: 'c', key: key}]
					switch {
					case !ok:
						return nil, fmt.Sprintf("disk %d: no backup.changeid of attempt %d from agent %s", key, c.Attempt, agentName(r.agent))
					case vs[ci].reason != "":
						return nil, fmt.Sprintf("disk %d: backup.changeid of attempt %d from agent %s is poison", key, c.Attempt, agentName(r.agent))
					}
					at = max(at, ci)
					return recs[ci].ev.(*schemas.ChangeID), ""
				})
			case hasStarted:
				reason = fmt.Sprintf("backup.started of attempt %d from agent %s is poison", c.Attempt, agentName(r.agent))
			default:
				reason = fmt.Sprintf("no backup.started of attempt %d from agent %s", c.Attempt, agentName(r.agent))
			}
		}
		if reason != "" {
			vs[i] = verdict{reason, ErrInconsistent}
			continue
		}
		if winner < 0 || at < winnerAt {
			winner, winnerAt = i, at // ties: recs are in stream order, the first stays
		}
	}

	if winner >= 0 {
		w := recs[winner].ev.EventHeader().Attempt
		var reason string
		for i, r := range recs {
			if i == winner || vs[i].reason != "" {
				continue
			}
			if hubEventOf(r.name) != nil {
				continue // rule 7 (judgeHub)
			}
			if r.name == schemas.NameCompleted || (i > winner && r.ev.EventHeader().Attempt > w) {
				if reason == "" {
					reason = fmt.Sprintf("job already completed at attempt %d", w)
				}
				vs[i] = verdict{reason, ErrInconsistent}
			}
		}
	}
	return vs, winner
}

// plannedDisks are the disks of a backup.started by key (nil for none),
// for checkCompleted.
func plannedDisks(s *schemas.Started) map[int32]schemas.DiskRef {
	if s == nil {
		return nil
	}
	m := make(map[int32]schemas.DiskRef, len(s.Disks))
	for _, p := range s.Disks {
		d := m[p.Disk.Key]
		mergeRef(&d, p.Disk)
		m[p.Disk.Key] = d
	}
	return m
}

// checkSource returns why c, which passed checkCompleted against s, does
// not match the backup.started s and the backup.changeid events of its
// attempt from its agent (changeID looks one up by disk key, or says why
// there is none), or "" (rule 5).
func checkSource(c *schemas.Completed, s *schemas.Started, changeID func(int32) (*schemas.ChangeID, string)) string {
	var problems []string
	if c.VM.UUID != s.VM.UUID {
		problems = append(problems, fmt.Sprintf("vm uuid %s differs from %s of backup.started", c.VM.UUID, s.VM.UUID))
	}
	if c.Repository != s.Repository {
		problems = append(problems, fmt.Sprintf("repository %s differs from %s of backup.started", c.Repository, s.Repository))
	}
	planned := make(map[int32]schemas.DiskRef, len(s.Disks))
	for _, p := range s.Disks {
		if _, dup := planned[p.Disk.Key]; dup {
			problems = append(problems, fmt.Sprintf("backup.started lists disk %d twice", p.Disk.Key))
		}
		planned[p.Disk.Key] = p.Disk
	}
	results := slices.Clone(c.Disks)
	slices.SortFunc(results, func(a, b schemas.DiskResult) int { return cmp.Compare(a.Disk.Key, b.Disk.Key) })
	for _, d := range results {
		k := d.Disk.Key
		p, ok := planned[k]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("disk %d is not in backup.started of attempt %d", k, c.Attempt))
		case p.UUID != d.Disk.UUID:
			problems = append(problems, fmt.Sprintf("disk %d: uuid %s differs from %s of backup.started", k, d.Disk.UUID, p.UUID))
		}
		ci, why := changeID(k)
		if ci == nil {
			problems = append(problems, why)
			continue
		}
		for _, f := range [...]struct{ what, got, want string }{
			{"change id", d.ChangeID, ci.ChangeID},
			{"backup type", d.BackupType, ci.BackupType},
			{"target", d.Target, ci.Target},
			{"uuid", d.Disk.UUID, ci.Disk.UUID},
			{"repository", c.Repository, ci.Repository},
		} {
			if f.got != f.want {
				problems = append(problems, fmt.Sprintf("disk %d: %s %q differs from %q of backup.changeid", k, f.what, f.got, f.want))
			}
		}
	}
	return strings.Join(problems, "; ")
}

// checkShape returns why r's id or targets are not its job's own (rules 1
// and 2), or "". It allocates only to say why.
func checkShape(jobID string, r record) string {
	h := r.ev.EventHeader()
	var disk int32
	var seq int64
	switch e := r.ev.(type) {
	case *schemas.ChangeID:
		disk = e.Disk.Key
	case *schemas.Progress:
		seq = e.Seq
	case *schemas.Verified:
		seq = e.Seq
	}
	var problems []string
	if !isEventID(h.ID, jobID, h.Attempt, r.name, disk, seq) {
		want := appendEventID(nil, jobID, h.Attempt, r.name, disk, seq)
		problems = append(problems, fmt.Sprintf("id %q is not the canonical %q", h.ID, want))
	}
	switch r.name {
	case schemas.NameStarted, schemas.NameChangeID, schemas.NameCompleted: // the events with targets
		if !plainName(h.VM.UUID) || !plainName(jobID) {
			problems = append(problems, fmt.Sprintf("vm uuid %q and job id %q do not name a path in the repository", h.VM.UUID, jobID))
		}
	}
	switch e := r.ev.(type) {
	case *schemas.Started:
		for _, p := range e.Disks {
			problems = checkTarget(problems, h.VM.UUID, p.Disk.Key, jobID, p.Target)
		}
	case *schemas.ChangeID:
		problems = checkTarget(problems, h.VM.UUID, e.Disk.Key, jobID, e.Target)
	case *schemas.Completed:
		for _, d := range e.Disks {
			problems = checkTarget(problems, h.VM.UUID, d.Disk.Key, jobID, d.Target)
		}
	}
	return strings.Join(problems, "; ")
}

// checkTarget appends why t is not the job's path of disk key, if it is not.
func checkTarget(problems []string, vmUUID string, key int32, jobID, t string) []string {
	if isTarget(t, vmUUID, key, jobID) {
		return problems
	}
	return append(problems, fmt.Sprintf("disk %d: target %q is not %q", key, t, targetPath(vmUUID, key, jobID)))
}

// isEventID reports whether id is appendEventID's, without building it.
func isEventID(id, jobID string, attempt int, name string, disk int32, seq int64) bool {
	rest, ok := strings.CutPrefix(id, jobID)
	ok = ok && cutInt(&rest, int64(attempt))
	ok = ok && cutWord(&rest, strings.TrimPrefix(name, "backup."))
	ok = ok && cutInt(&rest, int64(disk))
	ok = ok && cutInt(&rest, seq)
	return ok && rest == ""
}

// cutWord removes "." and word from the front of *rest if both are there.
func cutWord(rest *string, word string) bool {
	r, ok := strings.CutPrefix(*rest, ".")
	if ok {
		r, ok = strings.CutPrefix(r, word)
	}
	if ok {
		*rest = r
	}
	return ok
}

// cutInt is cutWord of n in decimal.
func cutInt(rest *string, n int64) bool {
	var buf [20]byte
	return cutWord(rest, string(strconv.AppendInt(buf[:0], n, 10)))
}

// appendEventID appends the canonical id of an event (bus.EventID, which
// store does not import): <job_id>.<attempt>.<type>.<disk_key>.<seq>,
// where type is name without its "backup." prefix.
func appendEventID(b []byte, jobID string, attempt int, name string, disk int32, seq int64) []byte {
	b = append(b, jobID...)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(attempt), 10)
	b = append(b, '.')
	b = append(b, strings.TrimPrefix(name, "backup.")...)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(disk), 10)
	b = append(b, '.')
	return strconv.AppendInt(b, seq, 10)
}

// targetPath is the repository path of a disk's QCOW2 for a job.
func targetPath(vmUUID string, key int32, jobID string) string {
	return vmUUID + "/" + strconv.Itoa(int(key)) + "/" + jobID + ".qcow2"
}

// isTarget reports whether t == targetPath(vmUUID, key, jobID), without
// building the path.
func isTarget(t, vmUUID string, key int32, jobID string) bool {
	var buf [16]byte
	k := strconv.AppendInt(buf[:0], int64(key), 10)
	if len(t) != len(vmUUID)+1+len(k)+1+len(jobID)+len(".qcow2") {
		return false
	}
	rest, ok := strings.CutPrefix(t, vmUUID)
	if ok {
		rest, ok = strings.CutPrefix(rest, "/")
	}
	if ok {
		rest, ok = strings.CutPrefix(rest, string(k))
	}
	if ok {
		rest, ok = strings.CutPrefix(rest, "/")
	}
	if ok {
		rest, ok = strings.CutPrefix(rest, jobID)
	}
	return ok && rest == ".qcow2"
}

// plainName reports whether s can be one name in a path: not empty, "."
// or "..", and without '/', '\' or NUL.
func plainName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\\\x00")
}

// agentName is how reasons name an agent; "" is a legacy event's.
func agentName(agent string) string {
	if agent == "" {
		return `"" (legacy)`
	}
	return agent
}
