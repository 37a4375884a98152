package bus_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/repository"
	"github.com/sendense/sendense/schemas"
)

// TestJobIDOneDefinition: every part that checks a job id agrees on every
// id of the table: schemas.ValidJobID (the definition), the schema's
// job_id pattern (a backup.requested carrying the id), bus.ValidJobID
// (producers, progress subjects) and repository.ValidateJobID (file
// names); and common.json's pattern is schemas.JobIDPattern.
func TestJobIDOneDefinition(t *testing.T) {
	common, err := schemas.Common()
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Defs map[string]struct {
			Pattern string `json:"pattern"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(common, &doc); err != nil {
		t.Fatal(err)
	}
	if got := doc.Defs["job_id"].Pattern; got != schemas.JobIDPattern {
		t.Errorf("common.json job_id pattern %q, want schemas.JobIDPattern %q", got, schemas.JobIDPattern)
	}

	for _, tt := range []struct {
		id   string
		want bool
	}{
		{"a", true},
		{"0", true},
		{"_", true},
		{"nightly-pgtest1-1", true},
		{"0190f5c2-7b3a-7c1e-9f00-1234567890ab", true},
		{"A_b-C", true},
		{"x-", true},
		{strings.Repeat("a", schemas.MaxJobIDLen), true},
		{"", false},
		{"-rf", false},
		{"-", false},
		{".", false},
		{"..", false},
		{"a.b", false},
		{".hidden", false},
		{"a/b", false},
		{"a b", false},
		{"a*", false},
		{"a>", false},
		{"é", false},
		{"a\n", false},
		{strings.Repeat("a", schemas.MaxJobIDLen+1), false},
	} {
		verdicts := map[string]bool{
			"schemas.ValidJobID":       schemas.ValidJobID(tt.id) == nil,
			"bus.ValidJobID":           bus.ValidJobID(tt.id) == nil,
			"repository.ValidateJobID": repository.ValidateJobID(tt.id) == nil,
		}
		body, _ := json.Marshal(map[string]string{"vm": "pgtest1", "job_id": tt.id})
		_, err := schemas.DecodeRequest(body)
		verdicts["the backup.requested schema"] = err == nil
		for who, ok := range verdicts {
			if ok != tt.want {
				t.Errorf("%s(%q) accepts = %t, want %t", who, tt.id, ok, tt.want)
			}
		}
		if !tt.want {
			if err := bus.ValidJobID(tt.id); !errors.Is(err, bus.ErrInvalidJobID) || !errors.Is(err, schemas.ErrInvalidJobID) {
				t.Errorf("bus.ValidJobID(%q) = %v, want ErrInvalidJobID", tt.id, err)
			}
			if err := repository.ValidateJobID(tt.id); !errors.Is(err, repository.ErrInvalidID) {
				t.Errorf("repository.ValidateJobID(%q) = %v, want ErrInvalidID", tt.id, err)
			}
		}
	}
}
