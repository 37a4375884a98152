package schemas

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	testVMUUID = "4217a1b3-6f0e-4c55-9b1e-2f3c4d5e6f70"
	testCID    = "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4/31"
	testBase   = "52 3c 7c 6d 57 a0 9c 14-5c 25 c3 fe 79 c0 43 d4/27"
	testTarget = testVMUUID + "/2000/job-7.qcow2"
)

var testDisk = DiskRef{Key: 2000, UUID: "6000c291-1c2d-4e5f-8a9b-0c1d2e3f4a5b", CapacityBytes: 10 << 30}

func testHeader(name, kind string) Header {
	h := Header{
		ID:      "job-7.2." + kind + ".2000.5",
		Time:    time.Date(2025, 1, 2, 3, 4, 5, 123456789, time.UTC),
		JobID:   "job-7",
		Attempt: 2,
		VM:      VMRef{Name: "pgtest1", UUID: testVMUUID, Moref: "vm-42"},
	}
	Stamp(&h, name)
	return h
}

// fullRequest and fullEvents return values with every field set (except
// fields whose only valid value is the zero value; see zeroAllowed).
func fullRequest() *Request {
	return &Request{
		Schema:      &SchemaRef{Name: NameRequested, Version: Version},
		VM:          "pgtest1",
		BackupType:  TypeIncremental,
		Repository:  "default",
		JobID:       "job-7",
		RequestedBy: "scheduler",
		Labels:      map[string]string{"team": "db", "app.example/tier": "gold"},
	}
}

func fullEvents() map[string]Event {
	return map[string]Event{
		NameStarted: &Started{
			Header:        testHeader(NameStarted, "started"),
			Repository:    "default",
			RequestedType: TypeAuto,
			RequestedBy:   "scheduler",
			RequestSeq:    41,
			RequestedAt:   &requestedAt,
			Snapshot:      "sendense-job-7",
			Disks: []DiskPlan{{
				Disk: testDisk, BackupType: TypeIncremental, Reason: ReasonBaseUsable,
				BaseChangeID: testBase, Backing: "job-6", Target: testTarget,
			}},
		},
		NameProgress: &Progress{
			Header:          testHeader(NameProgress, "progress"),
			Seq:             12,
			BytesDone:       1 << 29,
			BytesTotal:      1 << 31,
			RateBytesPerSec: 104857600.5,
			Disks:           []DiskProgress{{Disk: testDisk, BytesDone: 1 << 29, BytesTotal: 1 << 31, Done: true}},
		},
		NameChangeID: &ChangeID{
			Header:       testHeader(NameChangeID, "changeid"),
			Repository:   "default",
			Disk:         testDisk,
			ChangeID:     testCID,
			BackupType:   TypeIncremental,
			BytesRead:    64 << 20,
			BytesWritten: 32 << 20,
			Target:       testTarget,
		},
		NameCompleted: &Completed{
			Header:     testHeader(NameCompleted, "completed"),
			Repository: "default",
			Disks: []DiskResult{{
				Disk: testDisk, ChangeID: testCID, BackupType: TypeIncremental, Reason: ReasonBaseUsable,
				BaseChangeID: testBase, BytesRead: 64 << 20, BytesWritten: 32 << 20, Target: testTarget,
				Backing: "job-6", ActualSizeBytes: 34013184, ManifestSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
			}},
		},
		NameFailed: &Failed{
			Header:     testHeader(NameFailed, "failed"),
			Repository: "default",
			Reason:     FailChangeIDMissing,
			Message:    "read change id of disk 2000 of vm pgtest1: snapshot has no change id",
			Retryable:  true,
			Disk:       &DiskRef{Key: 2001, UUID: "6000c292-1c2d-4e5f-8a9b-0c1d2e3f4a5b", CapacityBytes: 1 << 30},
		},
		NameRejected: &Rejected{
			Header:  testHeader(NameRejected, "rejected"),
			Reason:  RejectUnknownVM,
			Message: "vm pgtest1 not found",
			Request: `{"vm":"pgtest1"}`,
		},
		NamePruning: &Pruning{
			Header:     testHeader(NamePruning, "pruning"),
			Repository: "default",
			Disks:      []PruneDisk{{Disk: testDisk, Operation: PruneRebase, Target: testTarget, Child: "job-8", Parent: "job-6"}},
		},
		NamePruned: &Pruned{
			Header:     testHeader(NamePruned, "pruned"),
			Repository: "default",
			Disks:      []PruneDisk{{Disk: testDisk, Operation: PruneRebase, Target: testTarget, Child: "job-8", Parent: "job-6"}},
		},
		NameVerified: &Verified{
			Header:     testHeader(NameVerified, "verified"),
			Repository: "default",
			Seq:        1735787045000,
			Status:     VerifyFailed,
			Disks: []VerifiedDisk{{Disk: testDisk, Target: testTarget, Status: VerifyFailed, Problem: "data_mismatch",
				Detail: "chunk 33 differs", ChunkIndex: 33, ChunkOffset: 33 << 20, BytesRead: 1 << 30}},
		},
	}
}

// zeroAllowed lists fields whose only valid value is their zero value.
var zeroAllowed = map[string]bool{
	"Rejected.Retryable": true, // a rejection is never retryable
}

// requireFull fails for any field of v (recursively) left at its zero value,
// so the round trip covers every field, including ones added later.
func requireFull(t *testing.T, path string, v reflect.Value) {
	t.Helper()
	if zeroAllowed[path] {
		return
	}
	if v.IsZero() {
		t.Errorf("%s is zero; set it in the fixture", path)
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		requireFull(t, path, v.Elem())
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			return
		}
		for i := range v.NumField() {
			f := v.Type().Field(i)
			p := path + "." + f.Name
			if f.Anonymous {
				p = path // embedded Header: its fields belong to the event
			}
			requireFull(t, p, v.Field(i))
		}
	case reflect.Slice:
		for i := range v.Len() {
			requireFull(t, path, v.Index(i))
		}
	}
}

// mutate returns the JSON of v after fn changed its generic form.
func mutate(t *testing.T, v any, fn func(m map[string]any)) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if fn != nil {
		fn(m)
	}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// at returns the parent container of the JSON pointer p and its last token.
func at(m map[string]any, p string) (any, string) {
	toks := strings.Split(strings.TrimPrefix(p, "/"), "/")
	var cur any = m
	for _, tok := range toks[:len(toks)-1] {
		switch c := cur.(type) {
		case map[string]any:
			cur = c[tok]
		case []any:
			i, _ := strconv.Atoi(tok)
			cur = c[i]
		}
	}
	return cur, toks[len(toks)-1]
}

// set returns a mutation that sets the value at JSON pointer p.
func set(p string, val any) func(map[string]any) {
	return func(m map[string]any) {
		parent, tok := at(m, p)
		switch c := parent.(type) {
		case map[string]any:
			c[tok] = val
		case []any:
			i, _ := strconv.Atoi(tok)
			c[i] = val
		}
	}
}

// del returns a mutation that removes the object member at JSON pointer p.
func del(p string) func(map[string]any) {
	return func(m map[string]any) {
		parent, tok := at(m, p)
		delete(parent.(map[string]any), tok)
	}
}

func all(fns ...func(map[string]any)) func(map[string]any) {
	return func(m map[string]any) {
		for _, fn := range fns {
			fn(m)
		}
	}
}

func subjectOf(name string) string {
	if name == NameProgress {
		return NameProgress + ".job-7"
	}
	return name
}

// requestedAt is the fixture's Started.RequestedAt: a minute before its events.
var requestedAt = time.Date(2025, 1, 2, 3, 3, 5, 0, time.UTC)
