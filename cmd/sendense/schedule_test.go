package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus"
)

// TestScheduleCommands drives `sendense schedule` against serve with the
// simulated vCenter: bad names, patterns and zones are refused before
// anything is published; a schedule fires backups that complete, each its
// own job with requested_by "schedule:<name>", one at a time per VM; a
// second add of the name is refused (exit 4) unless --force; list shows
// the next firing; rm stops it and a second rm says it is gone.
func TestScheduleCommands(t *testing.T) {
	t.Parallel()
	s := startServe(t, "small")

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"schedule", "add", "bad.name", "--vm", "pgtest1", "--cron", "@daily"}, "character '.'"},
		{[]string{"schedule", "add", "n", "--vm", "pgtest1", "--cron", "0 2 * * *"}, `did you mean "0 0 2 * * *"`},
		{[]string{"schedule", "add", "n", "--vm", "pgtest1", "--cron", "@daily", "--time-zone", "Mars/Olympus"}, "Mars/Olympus"},
		{[]string{"schedule", "add", "n", "--vm", "pgtest1", "--cron", "@every 1h", "--time-zone", "UTC"}, "no time zone"},
		{[]string{"schedule", "add", "n", "--vm", "pgtest1", "--cron", "@daily", "--type", "differential"}, "backup_type"},
		{[]string{"schedule", "add", "n", "--vm", "pgtest1"}, `"cron" not set`},
		{[]string{"schedule", "rm", "none"}, "schedule not found"},
	} {
		if _, err := s.run(t, tc.args...); exitCode(err) != 1 || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want exit 1 saying %q", tc.args, err, tc.want)
		}
	}
	if out := s.must(t, "schedule", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("schedules after only bad adds: %s", out)
	}

	out := s.must(t, "schedule", "add", "every", "--vm", "pgtest1", "--cron", "@every 1s", "--type", "incremental")
	if !strings.Contains(out, "schedule every added") {
		t.Errorf("add output: %s", out)
	}
	added := time.Now()
	if _, err := s.run(t, "schedule", "add", "every", "--vm", "pgtest1", "--cron", "@hourly"); exitCode(err) != exitConflict || !strings.Contains(err.Error(), "--force") {
		t.Errorf("adding an existing schedule: %v, want exit %d naming --force", err, exitConflict)
	}

	// Three fired backups complete, one after another.
	var fired []backup.Job
	deadline := time.Now().Add(2 * time.Minute)
	for len(fired) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d scheduled backups completed after 2 minutes, want 3", len(fired))
		}
		time.Sleep(200 * time.Millisecond)
		var jobs []backup.Job
		if o, err := s.run(t, "jobs", "--json", "--limit", "0"); err != nil || json.Unmarshal([]byte(o), &jobs) != nil {
			continue
		}
		fired = fired[:0]
		for _, j := range jobs {
			if j.RequestedBy == "schedule:every" && j.Status == backup.StatusCompleted {
				fired = append(fired, j)
			}
		}
	}
	elapsed := time.Since(added)
	slices.SortFunc(fired, func(a, b backup.Job) int { return a.StartedAt.Compare(b.StartedAt) })
	for i, j := range fired {
		t.Logf("job %s started %s finished %s (%.1fs)", j.ID, j.StartedAt.Format("15:04:05.000"), j.FinishedAt.Format("15:04:05.000"), j.FinishedAt.Sub(j.StartedAt).Seconds())
		if bus.ValidJobID(j.ID) != nil || j.RequestedType != "incremental" {
			t.Errorf("scheduled job %+v", j)
		}
		if i > 0 && j.StartedAt.Before(fired[i-1].FinishedAt) {
			t.Errorf("job %s started at %v, before job %s of the same VM finished at %v", j.ID, j.StartedAt, fired[i-1].ID, fired[i-1].FinishedAt)
		}
	}
	// A firing that came while the VM's job ran found its lease held and
	// waited (a delayed nak), then ran: nothing overlapped, nothing was
	// dropped.
	if busy := strings.Count(s.p.out.String(), "vm busy; request waits"); fired[0].FinishedAt.Sub(fired[0].StartedAt) > 1500*time.Millisecond && busy == 0 {
		t.Errorf("the first scheduled backup took %v with a firing every second, but no request waited for the VM's lease",
			fired[0].FinishedAt.Sub(fired[0].StartedAt))
	} else {
		t.Logf("%d times a fired request found the VM busy and waited", busy)
	}
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(t.Context(), bus.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context(), jetstream.WithSubjectFilter(bus.SubjectRequested))
	if err == nil {
		t.Logf("after %.1fs of @every 1s: 3 backups completed, %d requests waiting in the queue", elapsed.Seconds(), info.State.Subjects[bus.SubjectRequested])
	}

	// Replace it with a nightly cron in a zone; list computes the next run.
	s.must(t, "schedule", "add", "every", "--vm", "pgtest1", "--cron", "0 30 2 * * *", "--time-zone", "Europe/Berlin", "--force")
	var rows []scheduleRow
	if err := json.Unmarshal([]byte(s.must(t, "schedule", "list", "--json")), &rows); err != nil {
		t.Fatal(err)
	}
	berlin, _ := time.LoadLocation("Europe/Berlin")
	if len(rows) != 1 || rows[0].Name != "every" || rows[0].Cron != "0 30 2 * * *" || rows[0].TimeZone != "Europe/Berlin" ||
		rows[0].VM != "pgtest1" || rows[0].RequestedBy != "schedule:every" || rows[0].Error != "" {
		t.Fatalf("list --json: %+v", rows)
	}
	if n := rows[0].Next.In(berlin); n.Hour() != 2 || n.Minute() != 30 || time.Until(n) > 25*time.Hour || time.Until(n) < 0 {
		t.Errorf("next firing %v, want the next 02:30 in Berlin", n)
	}
	if table := s.must(t, "schedule", "list"); !strings.Contains(table, "every") || !strings.Contains(table, "Europe/Berlin") {
		t.Errorf("list:\n%s", table)
	}
	if out := s.must(t, "schedule", "rm", "every"); !strings.Contains(out, "schedule every removed") {
		t.Errorf("rm output: %s", out)
	}
	if _, err := s.run(t, "schedule", "rm", "every"); exitCode(err) != 1 || !strings.Contains(err.Error(), "schedule not found") {
		t.Errorf("second rm: %v", err)
	}
	if out := s.must(t, "schedule", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("schedules after rm: %s", out)
	}
}
