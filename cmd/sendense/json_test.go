package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/backup"
)

// ndjson parses out as NDJSON: one JSON object per non-empty line.
func ndjson(t *testing.T, what, out string) []map[string]json.RawMessage {
	t.Helper()
	var lines []map[string]json.RawMessage
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%s: line %q is not a JSON object: %v\n%s", what, l, err, out)
		}
		lines = append(lines, m)
	}
	return lines
}

func subjectOf(m map[string]json.RawMessage) string {
	var s string
	_ = json.Unmarshal(m["subject"], &s)
	return s
}

// TestJSONOutputs: every streaming --json is NDJSON (watch, backup
// --wait), backup, restore and version have --json, tables print human
// sizes while --json keeps exact bytes, and the job table fits 100
// columns.
func TestJSONOutputs(t *testing.T) {
	t.Parallel()
	s := startServe(t, "small")
	watch := startProc(t, append([]string{"watch", "--json", "--job", "json-1", "--log-level", "debug", "--log-format", "json"}, s.cli...)...)
	for !strings.Contains(watch.out.String(), `"message":"watching"`) { // subscribed
		if watch.exited() {
			t.Fatalf("watch exited: %s", watch.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	out := s.must(t, "backup", "--vm", "pgtest1", "--wait", "--json", "--job-id", "json-1")
	lines := ndjson(t, "backup --wait --json", out)
	if subjectOf(lines[0]) != "backup.requested" || !strings.Contains(string(lines[0]["event"]), `"job_id":"json-1"`) {
		t.Errorf("backup --json first line %v, want the request", lines[0])
	}
	var subjects []string
	for _, l := range lines[:len(lines)-1] {
		subjects = append(subjects, subjectOf(l))
		if len(l["event"]) == 0 {
			t.Errorf("backup --json line without event: %v", l)
		}
	}
	if !strings.HasPrefix(subjects[len(subjects)-1], "backup.completed") {
		t.Errorf("backup --json subjects %v, want backup.completed last", subjects)
	}
	var last struct{ Job backup.Job }
	if err := json.Unmarshal([]byte(strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:])), &last); err != nil || last.Job.ID != "json-1" || last.Job.Status != backup.StatusCompleted {
		t.Errorf("backup --json last line: %+v %v, want {\"job\":…} completed", last, err)
	}

	// watch saw the same job as NDJSON, its outcome once stored.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(watch.out.String(), `"subject":"backup.completed.`) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	watch.kill()
	for _, l := range ndjson(t, "watch --json", watch.out.String()) {
		if _, isLog := l["level"]; isLog {
			continue // stderr shares the buffer
		}
		if subjectOf(l) == "" || len(l["event"]) == 0 || !strings.Contains(string(l["event"]), `"json-1"`) {
			t.Errorf("watch --json line %v: want subject and the job's event", l)
		}
	}

	if lines := ndjson(t, "backup --json", s.must(t, "backup", "--vm", "pgtest1", "--json", "--job-id", "json-2")); len(lines) != 1 || subjectOf(lines[0]) != "backup.requested" {
		t.Errorf("backup --json without --wait: %v, want one request line", lines)
	}

	var j backup.Job
	if err := json.Unmarshal([]byte(s.must(t, "job", "json-1", "--json")), &j); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	restored := ndjson(t, "restore --json", s.must(t, "restore", "--job", "json-1", "--to", dir, "--json", "--verify"))
	if len(restored) != len(j.Disks) {
		t.Fatalf("restore --json: %d lines, want one per disk (%d)", len(restored), len(j.Disks))
	}
	for i, l := range restored {
		var r restoreLine
		b, _ := json.Marshal(l)
		if err := json.Unmarshal(b, &r); err != nil || r.JobID != "json-1" || r.Disk != j.Disks[i].Disk.Key || r.Bytes != j.Disks[i].Disk.CapacityBytes ||
			!r.Verified || filepath.Dir(r.Path) != dir {
			t.Errorf("restore --json line %s, want disk %d of json-1, %d bytes, verified", b, j.Disks[i].Disk.Key, j.Disks[i].Disk.CapacityBytes)
		}
	}

	table := s.must(t, "job", "json-1")
	head, _, _ := strings.Cut(table, "\ndisk ")
	for _, l := range strings.Split(head, "\n") {
		if len(l) > 100 {
			t.Errorf("job table line of %d columns (> 100): %q", len(l), l)
		}
	}
	if !strings.Contains(head, "iB") || strings.Contains(head, fmt.Sprint(j.Disks[0].Disk.CapacityBytes)) {
		t.Errorf("job table sizes are not human (want KiB/MiB/GiB, not %d):\n%s", j.Disks[0].Disk.CapacityBytes, table)
	}
	for _, d := range j.Disks {
		if !strings.Contains(table, d.ChangeID) || !strings.Contains(table, d.Target) {
			t.Errorf("job table lacks disk %d's change id or target:\n%s", d.Disk.Key, table)
		}
	}
}
