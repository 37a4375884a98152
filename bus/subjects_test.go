package bus_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

func TestEventID(t *testing.T) {
	tests := []struct {
		job     string
		attempt int
		typ     string
		disk    int32
		seq     int64
		want    string
	}{
		{"job-1", 1, "started", 0, 0, "job-1.1.started.0.0"},
		{"job-1", 2, "backup.changeid", 2000, 0, "job-1.2.changeid.2000.0"},
		{"job-1", 1, "progress", 0, 17, "job-1.1.progress.0.17"},
		{"0190c2f3-aaaa-7bbb-8ccc-123456789abc", 3, "completed", 0, 0, "0190c2f3-aaaa-7bbb-8ccc-123456789abc.3.completed.0.0"},
	}
	for _, tt := range tests {
		got := bus.EventID(tt.job, tt.attempt, tt.typ, tt.disk, tt.seq)
		if got != tt.want {
			t.Errorf("EventID(%q,%d,%q,%d,%d) = %q, want %q", tt.job, tt.attempt, tt.typ, tt.disk, tt.seq, got, tt.want)
		}
		if again := bus.EventID(tt.job, tt.attempt, tt.typ, tt.disk, tt.seq); again != got {
			t.Errorf("EventID not deterministic: %q then %q", got, again)
		}
	}
	// Different identities never collide.
	seen := map[string]bool{}
	for _, a := range []int{1, 2} {
		for _, typ := range []string{"started", "changeid", "progress"} {
			for _, d := range []int32{0, 2000, 2001} {
				for _, s := range []int64{0, 1} {
					id := bus.EventID("j", a, typ, d, s)
					if seen[id] {
						t.Fatalf("duplicate id %s", id)
					}
					seen[id] = true
				}
			}
		}
	}
}

func TestValidJobID(t *testing.T) {
	tests := []struct {
		id      string
		wantErr bool
	}{
		{"job-1", false},
		{"0190c2f3-aaaa-7bbb-8ccc-123456789abc", false},
		{"A_b-9", false},
		{"", true},
		{"a.b", true},
		{"a*", true},
		{"a>", true},
		{"a b", true},
		{"../etc", true},
		{strings.Repeat("a", bus.MaxJobIDLen), false},
		{strings.Repeat("a", bus.MaxJobIDLen+1), true},
	}
	for _, tt := range tests {
		err := bus.ValidJobID(tt.id)
		if (err != nil) != tt.wantErr {
			t.Errorf("ValidJobID(%q) = %v, wantErr %v", tt.id, err, tt.wantErr)
		}
		if err != nil && !errors.Is(err, bus.ErrInvalidJobID) {
			t.Errorf("ValidJobID(%q) = %v, not ErrInvalidJobID", tt.id, err)
		}
	}
	if err := bus.ValidJobID(bus.NewJobID()); err != nil {
		t.Errorf("NewJobID is not valid: %v", err)
	}
}

func TestDeriveJobID(t *testing.T) {
	ts := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	a := bus.DeriveJobID(bus.StreamRequests, 7, ts)
	if a != bus.DeriveJobID(bus.StreamRequests, 7, ts) {
		t.Fatal("DeriveJobID not deterministic")
	}
	if err := bus.ValidJobID(a); err != nil {
		t.Fatalf("derived job id %q: %v", a, err)
	}
	for _, other := range []string{
		bus.DeriveJobID(bus.StreamRequests, 8, ts),
		bus.DeriveJobID(bus.StreamRequests, 7, ts.Add(time.Nanosecond)),
		bus.DeriveJobID("OTHER", 7, ts),
	} {
		if other == a {
			t.Errorf("different message gave the same job id %s", a)
		}
	}
}

func TestStreamForSubject(t *testing.T) {
	tests := map[string]string{
		bus.SubjectRequested:                             bus.StreamRequests,
		bus.AgentSubject(schemas.NameStarted, "node1"):   bus.StreamEvents,
		bus.AgentSubject(schemas.NameChangeID, "node1"):  bus.StreamEvents,
		bus.AgentSubject(schemas.NameCompleted, "node1"): bus.StreamEvents,
		bus.AgentSubject(schemas.NameFailed, "node1"):    bus.StreamEvents,
		bus.AgentSubject(schemas.NameRejected, "node1"):  bus.StreamEvents,
		bus.ProgressSubject("job-1"):                     bus.StreamProgress,
		bus.HubSubject(schemas.NamePruning):              bus.StreamEvents,
		bus.HubSubject(schemas.NamePruned):               bus.StreamEvents,
		schemas.NamePruned + ".node1":                    "",
		"backup.progress.a.b":                            "",
		"backup.progress.":                               "",
		"backup.other":                                   "",
		bus.ScheduleSubject("nightly"):                   bus.StreamRequests,
		"backup.schedules.a.b":                           "",
		"sendense.catalog.jobs.list":                     "",
		// Events without the agent's token are no longer stored.
		schemas.NameCompleted:             "",
		schemas.NameCompleted + ".a.b":    "",
		schemas.NameCompleted + ".-agent": "",
		schemas.NameRequested + ".node1":  "",
	}
	for subj, want := range tests {
		if got := bus.StreamForSubject(subj); got != want {
			t.Errorf("StreamForSubject(%q) = %q, want %q", subj, got, want)
		}
	}
}

func TestParseEventSubject(t *testing.T) {
	tests := []struct {
		subject, name, agent string
		ok                   bool
	}{
		{bus.AgentSubject(schemas.NameCompleted, "node1"), schemas.NameCompleted, "node1", true},
		{bus.AgentSubject(schemas.NameStarted, "node_2-b"), schemas.NameStarted, "node_2-b", true},
		{bus.ProgressSubject("job-1"), schemas.NameProgress, "", true},
		{schemas.NameChangeID, schemas.NameChangeID, "", true}, // stored before agent identities
		{schemas.NameCompleted + ".a.b", "", "", false},
		{schemas.NameCompleted + ".", "", "", false},
		{schemas.NameCompleted + ".-x", "", "", false},
		{schemas.NameCompleted + "x.node1", "", "", false},
		{schemas.NameRequested, "", "", false},
		{schemas.NameProgress + ".a.b", "", "", false},
		{"backup.deleted.node1", "", "", false},
		{bus.HubSubject(schemas.NamePruning), schemas.NamePruning, bus.HubAgent, true},
		{bus.HubSubject(schemas.NamePruned), schemas.NamePruned, bus.HubAgent, true},
		{schemas.NamePruned + ".node1", "", "", false}, // only the hub publishes it
		{schemas.NamePruned, "", "", false},            // no legacy subject
	}
	for _, tt := range tests {
		name, agent, err := bus.ParseEventSubject(tt.subject)
		if (err == nil) != tt.ok || name != tt.name || agent != tt.agent {
			t.Errorf("ParseEventSubject(%q) = %q, %q, %v; want %q, %q, ok %t", tt.subject, name, agent, err, tt.name, tt.agent, tt.ok)
		}
		if err != nil && !errors.Is(err, bus.ErrInvalidSubject) {
			t.Errorf("ParseEventSubject(%q): %v, want ErrInvalidSubject", tt.subject, err)
		}
	}
}
