package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	t.Run(NameRequested, func(t *testing.T) {
		want := fullRequest()
		requireFull(t, "Request", reflect.ValueOf(want))
		b, err := Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		if err := Validate(NameRequested, b); err != nil {
			t.Fatalf("validate: %v\n%s", err, b)
		}
		got, err := DecodeRequest(b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(&got, want) {
			t.Errorf("round trip changed the request:\n got %+v\nwant %+v", got, *want)
		}
	})
	for name, want := range fullEvents() {
		t.Run(name, func(t *testing.T) {
			typ := reflect.TypeOf(want).Elem().Name()
			requireFull(t, typ, reflect.ValueOf(want))
			if got := NameOf(want); got != name {
				t.Errorf("NameOf(%s) = %q, want %q", typ, got, name)
			}
			b, err := Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			if err := Validate(subjectOf(name), b); err != nil {
				t.Fatalf("validate: %v\n%s", err, b)
			}
			got, err := Decode(subjectOf(name), b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("round trip changed the event:\n got %+v\nwant %+v", got, want)
			}
			if h := got.EventHeader(); h.Schema != (SchemaRef{Name: name, Version: Version}) {
				t.Errorf("schema ref = %+v", h.Schema)
			}
		})
	}
}

// Messages that must validate, beyond the fully populated fixtures.
func TestValid(t *testing.T) {
	ev := fullEvents()
	fullDisk := DiskResult{
		Disk: testDisk, ChangeID: testCID, BackupType: TypeFull, Reason: ReasonCBTReset,
		BytesRead: 10 << 30, BytesWritten: 1 << 30, Target: testTarget, ActualSizeBytes: 1 << 30,
	}
	tests := []struct {
		name    string
		subject string
		data    []byte
	}{
		{"minimal request", NameRequested, []byte(`{"vm":"pgtest1"}`)},
		{"request by uuid", NameRequested, []byte(`{"vm":"` + testVMUUID + `","backup_type":"full"}`)},
		{"request by moref", NameRequested, []byte(`{"vm":"vm-42","repository":"nfs.primary_2"}`)},
		{"request with a 128-character uuid-ish job id", NameRequested, []byte(`{"vm":"x","job_id":"` + strings.Repeat("_a-", 42) + `ab"}`)},
		{"events of a bus-derived job id", NameChangeID, mutate(t, ev[NameChangeID], all(
			set("/job_id", "0190c2f3-5b1e-7c55-9b1e-2f3c4d5e6f70"), set("/id", "0190c2f3-5b1e-7c55-9b1e-2f3c4d5e6f70.1.changeid.2000.0")))},
		{"request with dots not dotdot", NameRequested, []byte(`{"vm":".a.b c."}`)},
		{"request with schema ref", NameRequested, []byte(`{"schema":{"name":"backup.requested","version":1},"vm":"x"}`)},
		{"request with padding at the size limit", NameRequested,
			append([]byte(`{"vm":"pgtest1"}`), bytes.Repeat([]byte(" "), MaxMessageBytes-len(`{"vm":"pgtest1"}`))...)},
		{"completed with a full disk and upper-case change id", NameCompleted, mutate(t, ev[NameCompleted], func(m map[string]any) {
			d := mustMap(t, fullDisk)
			d["change_id"] = strings.ToUpper(testCID)
			m["disks"] = append(m["disks"].([]any), d)
		})},
		{"started with a full disk", NameStarted, mutate(t, ev[NameStarted], set("/disks/0",
			mustMap(t, DiskPlan{Disk: testDisk, BackupType: TypeFull, Reason: ReasonRequestedFull, Target: testTarget})))},
		{"rejected without vm uuid", NameRejected, mutate(t, ev[NameRejected], set("/vm", map[string]any{"name": "../x"}))},
		{"rejected with empty vm", NameRejected, mutate(t, ev[NameRejected], set("/vm", map[string]any{}))},
		{"failed without disk and repository", NameFailed, mutate(t, ev[NameFailed], all(del("/disk"), del("/repository")))},
		{"progress without disks", NameProgress + ".job-7", mutate(t, ev[NameProgress], set("/disks", []any{}))},
		{"progress on bare name", NameProgress, mutate(t, ev[NameProgress], nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Validate(tt.subject, tt.data); err != nil {
				t.Fatalf("Validate: %v\n%.300s", err, tt.data)
			}
			if tt.subject == NameRequested {
				return
			}
			if _, err := Decode(tt.subject, tt.data); err != nil {
				t.Fatalf("Decode: %v", err)
			}
		})
	}
}

func mustMap(t *testing.T, v any) map[string]any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestInvalid(t *testing.T) {
	ev := fullEvents()
	req := fullRequest()
	tests := []struct {
		name    string
		subject string
		data    []byte
		field   string // Problem.Field expected among the problems
		rule    string // its Rule
		text    string // the error text must contain this (names the field)
	}{
		// Completed means complete.
		{"completed without change_id", NameCompleted, mutate(t, ev[NameCompleted], del("/disks/0/change_id")),
			"/disks/0", "required", "/disks/0: missing property 'change_id'"},
		{"completed with empty change_id", NameCompleted, mutate(t, ev[NameCompleted], set("/disks/0/change_id", "")),
			"/disks/0/change_id", "pattern", "/disks/0/change_id"},
		{"completed change_id without dash", NameCompleted, mutate(t, ev[NameCompleted], set("/disks/0/change_id", strings.Replace(testCID, "-", " ", 1))),
			"/disks/0/change_id", "pattern", "/disks/0/change_id"},
		{"completed change_id without seq", NameCompleted, mutate(t, ev[NameCompleted], set("/disks/0/change_id", strings.Split(testCID, "/")[0])),
			"/disks/0/change_id", "pattern", "VMware CBT change id"},
		{"completed change_id not hex", NameCompleted, mutate(t, ev[NameCompleted], set("/disks/0/change_id", strings.Replace(testCID, "3c", "zz", 1))),
			"/disks/0/change_id", "pattern", "/disks/0/change_id"},
		{"completed change_id is *", NameCompleted, mutate(t, ev[NameCompleted], set("/disks/0/change_id", "*")),
			"/disks/0/change_id", "pattern", "/disks/0/change_id"},
		{"completed change_id of the second disk missing", NameCompleted, mutate(t, ev[NameCompleted], func(m map[string]any) {
			d := m["disks"].([]any)[0].(map[string]any)
			d2 := map[string]any{}
			for k, v := range d {
				d2[k] = v
			}
			delete(d2, "change_id")
			m["disks"] = append(m["disks"].([]any), d2)
		}), "/disks/1", "required", "change_id"},
		{"completed without disks", NameCompleted, mutate(t, ev[NameCompleted], set("/disks", []any{})),
			"/disks", "minItems", "/disks"},
		{"completed disks missing", NameCompleted, mutate(t, ev[NameCompleted], del("/disks")),
			"", "required", "missing property 'disks'"},
		{"completed incremental without backing", NameCompleted, mutate(t, ev[NameCompleted], set("/disks/0/backing", "")),
			"/disks/0/backing", "minLength", "/disks/0/backing"},
		{"completed full with backing", NameCompleted, mutate(t, ev[NameCompleted], all(set("/disks/0/backup_type", "full"), set("/disks/0/reason", "no_base"), del("/disks/0/base_change_id"))),
			"/disks/0/backing", "maxLength", "/disks/0/backing"},
		{"completed full with base change id", NameCompleted, mutate(t, ev[NameCompleted], all(set("/disks/0/backup_type", "full"), set("/disks/0/reason", "no_base"), set("/disks/0/backing", ""))),
			"/disks/0/base_change_id", "false", "/disks/0/base_change_id"},
		{"completed incremental with a full's reason", NameCompleted, mutate(t, ev[NameCompleted], set("/disks/0/reason", "no_base")),
			"/disks/0/reason", "const", "/disks/0/reason"},
		{"completed backup_type auto", NameCompleted, mutate(t, ev[NameCompleted], set("/disks/0/backup_type", "auto")),
			"/disks/0/backup_type", "enum", "/disks/0/backup_type"},
		{"completed vm without uuid", NameCompleted, mutate(t, ev[NameCompleted], del("/vm/uuid")),
			"/vm", "required", "missing property 'uuid'"},
		{"completed vm uuid malformed", NameCompleted, mutate(t, ev[NameCompleted], set("/vm/uuid", "vm-42")),
			"/vm/uuid", "pattern", "/vm/uuid"},
		{"changeid without change_id", NameChangeID, mutate(t, ev[NameChangeID], del("/change_id")),
			"", "required", "missing property 'change_id'"},
		{"changeid with empty change_id", NameChangeID, mutate(t, ev[NameChangeID], set("/change_id", "")),
			"/change_id", "pattern", "/change_id"},
		{"changeid without disk uuid", NameChangeID, mutate(t, ev[NameChangeID], del("/disk/uuid")),
			"/disk", "required", "missing property 'uuid'"},

		// Unknown fields.
		{"request unknown field", NameRequested, []byte(`{"vm":"pgtest1","colour":"red"}`),
			"", "additionalProperties", "'colour' not allowed"},
		{"request field in wrong case", NameRequested, []byte(`{"VM":"pgtest1"}`),
			"", "additionalProperties", "'VM' not allowed"},
		{"started unknown field", NameStarted, mutate(t, ev[NameStarted], set("/extra", 1)),
			"", "additionalProperties", "'extra' not allowed"},
		{"progress unknown field", NameProgress + ".job-7", mutate(t, ev[NameProgress], set("/extra", 1)),
			"", "additionalProperties", "'extra' not allowed"},
		{"changeid unknown field", NameChangeID, mutate(t, ev[NameChangeID], set("/extra", 1)),
			"", "additionalProperties", "'extra' not allowed"},
		{"completed unknown field", NameCompleted, mutate(t, ev[NameCompleted], set("/extra", 1)),
			"", "additionalProperties", "'extra' not allowed"},
		{"failed unknown field", NameFailed, mutate(t, ev[NameFailed], set("/extra", 1)),
			"", "additionalProperties", "'extra' not allowed"},
		{"rejected unknown field", NameRejected, mutate(t, ev[NameRejected], set("/extra", 1)),
			"", "additionalProperties", "'extra' not allowed"},
		{"unknown field in vm", NameCompleted, mutate(t, ev[NameCompleted], set("/vm/extra", 1)),
			"/vm", "additionalProperties", "/vm: additional properties 'extra' not allowed"},
		{"unknown field in a disk", NameCompleted, mutate(t, ev[NameCompleted], set("/disks/0/disk/extra", 1)),
			"/disks/0/disk", "additionalProperties", "/disks/0/disk"},
		{"unknown field in schema ref", NameFailed, mutate(t, ev[NameFailed], set("/schema/extra", 1)),
			"/schema", "additionalProperties", "/schema"},

		// Wrong types and ranges.
		{"request vm not a string", NameRequested, []byte(`{"vm":42}`), "/vm", "type", "/vm: got number, want string"},
		{"attempt as string", NameFailed, mutate(t, ev[NameFailed], set("/attempt", "1")), "/attempt", "type", "/attempt"},
		{"attempt zero", NameFailed, mutate(t, ev[NameFailed], set("/attempt", 0)), "/attempt", "minimum", "/attempt"},
		{"attempt fractional", NameFailed, mutate(t, ev[NameFailed], set("/attempt", 1.5)), "/attempt", "type", "/attempt"},
		{"disk key as string", NameCompleted, mutate(t, ev[NameCompleted], set("/disks/0/disk/key", "2000")), "/disks/0/disk/key", "type", "/disks/0/disk/key"},
		{"negative bytes", NameCompleted, mutate(t, ev[NameCompleted], set("/disks/0/bytes_read", -1)), "/disks/0/bytes_read", "minimum", "/disks/0/bytes_read"},
		{"retryable as string", NameFailed, mutate(t, ev[NameFailed], set("/retryable", "no")), "/retryable", "type", "/retryable"},
		{"disks as object", NameCompleted, mutate(t, ev[NameCompleted], set("/disks", map[string]any{})), "/disks", "type", "/disks"},
		{"time not a date-time", NameStarted, mutate(t, ev[NameStarted], set("/time", "yesterday")), "/time", "format", "/time"},
		{"schema name of another message", NameFailed, mutate(t, ev[NameCompleted], nil), "/schema/name", "const", "/schema/name"},
		{"schema version 2", NameCompleted, mutate(t, ev[NameCompleted], set("/schema/version", 2)), "/schema/version", "const", "/schema/version"},
		{"empty event id", NameCompleted, mutate(t, ev[NameCompleted], set("/id", "")), "/id", "pattern", "/id"},
		{"event id with a space", NameCompleted, mutate(t, ev[NameCompleted], set("/id", "a b")), "/id", "pattern", "/id"},
		{"event job id with a slash", NameCompleted, mutate(t, ev[NameCompleted], set("/job_id", "a/b")), "/job_id", "pattern", "/job_id"},
		{"failed reason not a code", NameFailed, mutate(t, ev[NameFailed], set("/reason", "Copy-Failed")), "/reason", "pattern", "/reason"},
		{"failed empty message", NameFailed, mutate(t, ev[NameFailed], set("/message", "")), "/message", "minLength", "/message"},
		{"failed without retryable", NameFailed, mutate(t, ev[NameFailed], del("/retryable")), "", "required", "'retryable'"},
		{"rejected retryable", NameRejected, mutate(t, ev[NameRejected], set("/retryable", true)), "/retryable", "const", "/retryable"},
		{"rejected request over 4096", NameRejected, mutate(t, ev[NameRejected], set("/request", strings.Repeat("x", 4097))), "/request", "maxLength", "/request"},
		{"started snapshot not ours", NameStarted, mutate(t, ev[NameStarted], set("/snapshot", "nightly")), "/snapshot", "pattern", "/snapshot"},
		{"started incremental without base", NameStarted, mutate(t, ev[NameStarted], all(del("/disks/0/base_change_id"), del("/disks/0/backing"))),
			"/disks/0", "required", "missing properties 'base_change_id', 'backing'"},
		{"started reason unknown", NameStarted, mutate(t, ev[NameStarted], set("/disks/0/reason", "because")), "/disks/0/reason", "enum", "/disks/0/reason"},
		{"started without disks", NameStarted, mutate(t, ev[NameStarted], set("/disks", []any{})), "/disks", "minItems", "/disks"},
		{"progress negative rate", NameProgress + ".job-7", mutate(t, ev[NameProgress], set("/rate_bytes_per_sec", -1)), "/rate_bytes_per_sec", "minimum", "/rate_bytes_per_sec"},

		// Requests.
		{"request without vm", NameRequested, []byte(`{"backup_type":"full"}`), "", "required", "missing property 'vm'"},
		{"request bad backup_type", NameRequested, []byte(`{"vm":"pgtest1","backup_type":"differential"}`), "/backup_type", "enum", "/backup_type"},
		{"request vm ../x", NameRequested, []byte(`{"vm":"../x"}`), "/vm", "pattern", `/vm: "../x" does not match`},
		{"request vm a/b", NameRequested, []byte(`{"vm":"a/b"}`), "/vm", "pattern", `/vm: "a/b"`},
		{"request vm a..b", NameRequested, []byte(`{"vm":"a..b"}`), "/vm", "pattern", "/vm"},
		{"request vm ..", NameRequested, []byte(`{"vm":".."}`), "/vm", "pattern", "/vm"},
		{"request vm backslash", NameRequested, []byte(`{"vm":"a\\b"}`), "/vm", "pattern", "/vm"},
		{"request vm control char", NameRequested, []byte(`{"vm":"a\u0000b"}`), "/vm", "pattern", "/vm"},
		{"request vm newline", NameRequested, []byte(`{"vm":"a\nb"}`), "/vm", "pattern", "/vm"},
		{"request vm C1 control char", NameRequested, []byte(`{"vm":"a\u0085b"}`), "/vm", "pattern", "/vm"},
		{"request vm empty", NameRequested, []byte(`{"vm":""}`), "/vm", "minLength", "/vm"},
		{"request vm too long", NameRequested, []byte(`{"vm":"` + strings.Repeat("v", 256) + `"}`), "/vm", "maxLength", "/vm"},
		{"request job_id with path", NameRequested, []byte(`{"vm":"x","job_id":"../etc"}`), "/job_id", "pattern", "/job_id"},
		{"request job_id too long", NameRequested, []byte(`{"vm":"x","job_id":"` + strings.Repeat("j", 129) + `"}`), "/job_id", "pattern", "/job_id"},
		{"request job_id starting with a dash", NameRequested, []byte(`{"vm":"x","job_id":"-rf"}`), "/job_id", "pattern", "/job_id"},
		{"request job_id with a dot", NameRequested, []byte(`{"vm":"x","job_id":"a.b"}`), "/job_id", "pattern", "/job_id"},
		{"request repository ..", NameRequested, []byte(`{"vm":"x","repository":".."}`), "/repository", "pattern", "/repository"},
		{"request repository with slash", NameRequested, []byte(`{"vm":"x","repository":"a/b"}`), "/repository", "pattern", "/repository"},
		{"request label value not a string", NameRequested, []byte(`{"vm":"x","labels":{"a":1}}`), "/labels/a", "type", "/labels/a"},
		{"request label key empty", NameRequested, []byte(`{"vm":"x","labels":{"":"v"}}`), "/labels", "additionalProperties", "/labels"},
		{"request label key with space", NameRequested, []byte(`{"vm":"x","labels":{"a b":"v"}}`), "/labels", "additionalProperties", "/labels: additional properties 'a b' not allowed"},
		{"request label value too long", NameRequested, []byte(`{"vm":"x","labels":{"a":"` + strings.Repeat("v", 256) + `"}}`), "/labels/a", "maxLength", "/labels/a"},
		{"request too many labels", NameRequested, mutate(t, req, set("/labels", func() map[string]any {
			l := map[string]any{}
			for i := range 33 {
				l[strings.Repeat("k", i+1)] = "v"
			}
			return l
		}())), "/labels", "maxProperties", "/labels"},
		{"request not an object", NameRequested, []byte(`"pgtest1"`), "", "type", "got string, want object"},
		{"request schema of an event", NameRequested, []byte(`{"vm":"x","schema":{"name":"backup.started","version":1}}`), "/schema/name", "const", "/schema/name"},

		// Identity: the subject's job and the payload's job agree.
		{"progress on another job's subject", NameProgress + ".job-8", mutate(t, ev[NameProgress], nil), "/job_id", "subject", `"job-7" differs from the subject's job "job-8"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.subject, tt.data)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate = %v, want a *ValidationError\n%.300s", err, tt.data)
			}
			name, _, _ := subjectName(tt.subject)
			if ve.Schema != name {
				t.Errorf("Schema = %q, want %q", ve.Schema, name)
			}
			found := false
			for _, p := range ve.Problems {
				found = found || (p.Field == tt.field && p.Rule == tt.rule)
			}
			if !found {
				t.Errorf("no problem {Field: %q, Rule: %q} in %+v", tt.field, tt.rule, ve.Problems)
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %q does not contain %q", err, tt.text)
			}
			if !strings.HasPrefix(err.Error(), name+": ") {
				t.Errorf("error %q does not start with the schema name", err)
			}
			if errors.Is(err, ErrInvalidJSON) || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrUnknownSubject) {
				t.Errorf("schema violation matches a sentinel: %v", err)
			}
			// Decode refuses it the same way.
			if name == NameRequested {
				_, err = DecodeRequest(tt.data)
			} else {
				_, err = Decode(tt.subject, tt.data)
			}
			if !errors.As(err, &ve) {
				t.Errorf("decode = %v, want a *ValidationError", err)
			}
		})
	}
}

func TestRefused(t *testing.T) {
	huge := mutate(t, fullEvents()[NameFailed], set("/message", strings.Repeat("x", 1<<20)))
	tests := []struct {
		name    string
		subject string
		data    []byte
		wantErr error
	}{
		{"malformed", NameRequested, []byte(`{"vm":`), ErrInvalidJSON},
		{"not json", NameCompleted, []byte(`vm=pgtest1`), ErrInvalidJSON},
		{"empty", NameCompleted, nil, ErrInvalidJSON},
		{"trailing data", NameRequested, []byte(`{"vm":"a"} {"vm":"b"}`), ErrInvalidJSON},
		{"1 MiB event", NameFailed, huge, ErrTooLarge},
		{"1 MiB of garbage is refused before parsing", NameRequested, bytes.Repeat([]byte("{"), 1<<20), ErrTooLarge},
		{"one byte over the limit", NameRequested, append([]byte(`{"vm":"x"}`), bytes.Repeat([]byte(" "), MaxMessageBytes-9)...), ErrTooLarge},
		{"unknown subject", "backup.deleted", []byte(`{}`), ErrUnknownSubject},
		{"progress subject without job", NameProgress + ".", []byte(`{}`), ErrUnknownSubject},
		{"prefix of a subject", "backup", []byte(`{}`), ErrUnknownSubject},
		{"empty subject", "", []byte(`{}`), ErrUnknownSubject},
		{"subject with two suffixes", NameCompleted + ".agent.x", []byte(`{}`), ErrUnknownSubject},
		{"request with a suffix", NameRequested + ".agent", []byte(`{}`), ErrUnknownSubject},
		{"agent suffix on progress", NameProgress + ".job.agent", []byte(`{}`), ErrUnknownSubject},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.subject, tt.data)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Validate = %v, want %v", err, tt.wantErr)
			}
			var ve *ValidationError
			if errors.As(err, &ve) {
				t.Errorf("got a *ValidationError for %v", tt.wantErr)
			}
			if tt.subject == NameRequested {
				_, err = DecodeRequest(tt.data)
			} else {
				_, err = Decode(tt.subject, tt.data)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("decode = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestDecodeRequestDefaults(t *testing.T) {
	got, err := DecodeRequest([]byte(`{"vm":"pgtest1"}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Request{VM: "pgtest1", BackupType: TypeAuto, Repository: DefaultRepository}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("DecodeRequest = %+v, want %+v", got, want)
	}
	got, err = DecodeRequest([]byte(`{"vm":"pgtest1","backup_type":"full","repository":"nfs"}`))
	if err != nil {
		t.Fatal(err)
	}
	if got.BackupType != TypeFull || got.Repository != "nfs" {
		t.Errorf("DecodeRequest overrode given values: %+v", got)
	}
}

func TestDecodeRequestSubjectIsNotAnEvent(t *testing.T) {
	_, err := Decode(NameRequested, []byte(`{"vm":"pgtest1"}`))
	if !errors.Is(err, ErrUnknownSubject) {
		t.Fatalf("Decode(backup.requested) = %v, want ErrUnknownSubject", err)
	}
}

func TestDecodeIntegerWrittenAsFloat(t *testing.T) {
	// JSON Schema counts 1.0 as an integer; Go cannot hold it in an int.
	// Decode must say so rather than panic or invent a value.
	data := bytes.Replace(mutate(t, fullEvents()[NameFailed], nil), []byte(`"attempt":2`), []byte(`"attempt":2.0`), 1)
	if err := Validate(NameFailed, data); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if _, err := Decode(NameFailed, data); err == nil {
		t.Fatal("Decode accepted attempt 2.0")
	}
}

func TestValidateConcurrent(t *testing.T) {
	good := mutate(t, fullEvents()[NameCompleted], nil)
	bad := mutate(t, fullEvents()[NameCompleted], del("/disks/0/change_id"))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if err := Validate(NameCompleted, good); err != nil {
					t.Error(err)
				}
				if err := Validate(NameCompleted, bad); err == nil {
					t.Error("bad event validated")
				}
			}
		})
	}
	wg.Wait()
}

func TestStampAndNameOf(t *testing.T) {
	var c Completed
	Stamp(&c.Header, NameCompleted)
	if c.Schema != (SchemaRef{Name: NameCompleted, Version: Version}) {
		t.Errorf("Stamp set %+v", c.Schema)
	}
	if NameOf(&c) != NameCompleted {
		t.Errorf("NameOf(*Completed) = %q", NameOf(&c))
	}
	if NameOf(&Header{}) != "" {
		t.Errorf("NameOf(*Header) = %q, want empty", NameOf(&Header{}))
	}
}

func TestProblemOrderIsStable(t *testing.T) {
	data := []byte(`{"vm":"../x","backup_type":"x","colour":1,"repository":".."}`)
	first := Validate(NameRequested, data).Error()
	for range 20 {
		if got := Validate(NameRequested, data).Error(); got != first {
			t.Fatalf("problem order changed:\n%s\n%s", first, got)
		}
	}
}
