package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"path"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

const draft2020 = "https://json-schema.org/draft/2020-12/schema"

// Every embedded file is a valid draft 2020-12 schema with the right $id,
// a title and a description, and there is exactly one per message.
func TestSchemaFilesAreDraft2020(t *testing.T) {
	c := jsonschema.NewCompiler()
	meta, err := c.Compile(draft2020)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := fs.ReadDir(files, "json")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, e := range entries {
		name := strings.TrimSuffix(e.Name(), ".json")
		found = append(found, name)
		t.Run(name, func(t *testing.T) {
			b, err := files.ReadFile(path.Join("json", e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if err := meta.Validate(doc); err != nil {
				t.Fatalf("not a valid draft 2020-12 schema: %v", err)
			}
			m := doc.(map[string]any)
			if m["$schema"] != draft2020 {
				t.Errorf("$schema = %v, want %s", m["$schema"], draft2020)
			}
			if m["$id"] != schemaID(name) {
				t.Errorf("$id = %v, want %s", m["$id"], schemaID(name))
			}
			for _, k := range []string{"title", "description"} {
				if s, _ := m[k].(string); s == "" {
					t.Errorf("no %s", k)
				}
			}
			if name == commonFile {
				return
			}
			if m["title"] != name {
				t.Errorf("title = %v, want %s", m["title"], name)
			}
			if m["additionalProperties"] != false {
				t.Errorf("additionalProperties = %v, want false", m["additionalProperties"])
			}
			if _, ok := m["$defs"]; ok {
				t.Error("message schemas keep their definitions in common.json (Schema bundles it under $defs)")
			}
		})
	}
	want := append(Names(), commonFile)
	slices.Sort(want)
	slices.Sort(found)
	if !slices.Equal(found, want) {
		t.Errorf("schema files %v, want %v", found, want)
	}
}

// The examples in each schema validate and decode, so the documentation
// users read with `sendense schemas` is right.
func TestSchemaExamples(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			b, _ := raw(name)
			var doc struct{ Examples []json.RawMessage }
			if err := json.Unmarshal(b, &doc); err != nil {
				t.Fatal(err)
			}
			if len(doc.Examples) == 0 {
				t.Fatal("no examples")
			}
			for i, ex := range doc.Examples {
				subject := name
				if name == NameProgress {
					var h struct {
						JobID string `json:"job_id"`
					}
					_ = json.Unmarshal(ex, &h)
					subject += "." + h.JobID
				}
				if err := Validate(subject, ex); err != nil {
					t.Errorf("example %d: %v", i, err)
				}
				if name == NameRequested {
					_, err := DecodeRequest(ex)
					if err != nil {
						t.Errorf("example %d: %v", i, err)
					}
				} else if name == NameVerifyRequested {
					if _, err := DecodeVerifyRequest(ex); err != nil {
						t.Errorf("example %d: %v", i, err)
					}
				} else if name == NameForgetRequested {
					if _, err := DecodeForgetRequest(ex); err != nil {
						t.Errorf("example %d: %v", i, err)
					}
				} else if _, err := Decode(subject, ex); err != nil {
					t.Errorf("example %d: %v", i, err)
				}
			}
		})
	}
}

// Schema returns a document that stands alone: compiled with nothing else
// available, it accepts and refuses what Validate does.
func TestSchemaBundleStandsAlone(t *testing.T) {
	ev := fullEvents()
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			b, err := Schema(name)
			if err != nil {
				t.Fatal(err)
			}
			doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
			if err != nil {
				t.Fatalf("parse bundle: %v", err)
			}
			c := jsonschema.NewCompiler()
			c.AssertFormat()
			c.UseLoader(embeddedOnly{})
			if err := c.AddResource("https://sendense.dev/test/bundle.json", doc); err != nil {
				t.Fatal(err)
			}
			s, err := c.Compile("https://sendense.dev/test/bundle.json")
			if err != nil {
				t.Fatalf("compile bundle alone: %v", err)
			}
			var good, bad []byte
			switch name {
			case NameRequested:
				good, bad = []byte(`{"vm":"pgtest1"}`), []byte(`{"vm":"../x"}`)
			case NameVerifyRequested:
				good, bad = []byte(`{"all":true}`), []byte(`{"vm":"../x"}`)
			case NameForgetRequested:
				good, bad = []byte(`{"all":true,"policy":{"keep_last":1}}`), []byte(`{"vm":"../x","policy":{"keep_last":1}}`)
			default:
				good = mutate(t, ev[name], nil)
				bad = mutate(t, ev[name], set("/vm/extra", 1))
			}
			for _, tc := range []struct {
				data  []byte
				valid bool
			}{{good, true}, {bad, false}} {
				inst, _ := jsonschema.UnmarshalJSON(bytes.NewReader(tc.data))
				if err := s.Validate(inst); (err == nil) != tc.valid {
					t.Errorf("bundle on %s: err = %v, want valid=%v", tc.data, err, tc.valid)
				}
			}
		})
	}
	if _, err := Schema("backup.nope"); !errors.Is(err, ErrUnknownSubject) {
		t.Errorf("Schema(unknown) = %v, want ErrUnknownSubject", err)
	}
	if _, err := Schema(commonFile); !errors.Is(err, ErrUnknownSubject) {
		t.Errorf("Schema(common) = %v, want ErrUnknownSubject", err)
	}
}

func TestNames(t *testing.T) {
	want := []string{NameRequested, NameStarted, NameProgress, NameChangeID, NameCompleted, NameFailed, NameRejected, NamePruning, NamePruned, NameVerified, NameVerifyRequested, NameForgetRequested}
	if got := Names(); !slices.Equal(got, want) {
		t.Errorf("Names() = %v, want %v", got, want)
	}
	Names()[0] = "mutated"
	if Names()[0] != NameRequested {
		t.Error("Names returns the package's slice")
	}
}

// No schema uses propertyNames: jsonschema v6.0.3 reports its errors at a
// wrong instance location (it keeps a slice it later reuses), so the field
// could not be named. Constrain keys with patternProperties instead.
func TestNoPropertyNames(t *testing.T) {
	all, err := compiled()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range Names() {
		walkSchema(all.byName[name], func(s *jsonschema.Schema) {
			if s.PropertyNames != nil {
				t.Errorf("%s: propertyNames at %s", name, s.Location)
			}
		})
	}
}

// Every property a user can read in a schema says what it is.
func TestSchemaPropertiesDescribed(t *testing.T) {
	all, err := compiled()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range Names() {
		walkSchema(all.byName[name], func(s *jsonschema.Schema) {
			for p, sub := range s.Properties {
				if sub.Description == "" && (sub.Ref == nil || sub.Ref.Description == "") && len(sub.Properties) == 0 {
					// Subschemas of if/then/else only restate a property.
					if !strings.Contains(s.Location, "type_choice") {
						t.Errorf("%s: property %s at %s has no description", name, p, s.Location)
					}
				}
			}
		})
	}
}

// The Go types and the schemas cannot drift apart: every JSON field of a Go
// type is a property of its schema with a matching JSON type, every property
// is a Go field, and every field Go always writes (no omitempty) is required.
func TestGoTypesMatchSchemas(t *testing.T) {
	all, err := compiled()
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]reflect.Type{NameRequested: reflect.TypeFor[Request](), NameVerifyRequested: reflect.TypeFor[VerifyRequest](), NameForgetRequested: reflect.TypeFor[ForgetRequest]()}
	for name, ev := range fullEvents() {
		types[name] = reflect.TypeOf(ev).Elem()
	}
	for _, name := range Names() {
		typ, ok := types[name]
		if !ok {
			t.Errorf("%s has no Go type", name)
			continue
		}
		t.Run(name, func(t *testing.T) {
			matchStruct(t, typ.Name(), typ, all.byName[name])
		})
	}
}

type goField struct {
	name      string
	typ       reflect.Type
	omitempty bool
}

// jsonFields lists the JSON members of a struct type, flattening embedded
// structs the way encoding/json does.
func jsonFields(typ reflect.Type) []goField {
	var out []goField
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := f.Tag.Get("json")
		if f.Anonymous && tag == "" {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		if !f.IsExported() || tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		out = append(out, goField{name: name, typ: f.Type, omitempty: strings.Contains(opts, "omitempty")})
	}
	return out
}

// flat merges what s and the schemas it applies in place ($ref, allOf)
// say about an object.
func flat(s *jsonschema.Schema) (props map[string]*jsonschema.Schema, required []string) {
	props = map[string]*jsonschema.Schema{}
	var walk func(s *jsonschema.Schema)
	walk = func(s *jsonschema.Schema) {
		if s == nil {
			return
		}
		for k, v := range s.Properties {
			if _, ok := props[k]; !ok {
				props[k] = v
			}
		}
		required = append(required, s.Required...)
		walk(s.Ref)
		for _, sub := range s.AllOf {
			walk(sub)
		}
	}
	walk(s)
	return props, required
}

func matchStruct(t *testing.T, path string, typ reflect.Type, s *jsonschema.Schema) {
	t.Helper()
	props, required := flat(s)
	seen := map[string]bool{}
	for _, f := range jsonFields(typ) {
		seen[f.name] = true
		p := path + "." + f.name
		sub, ok := props[f.name]
		if !ok {
			t.Errorf("%s: Go field is not in the schema", p)
			continue
		}
		if !f.omitempty && !slices.Contains(required, f.name) {
			t.Errorf("%s: Go always writes it but the schema does not require it", p)
		}
		matchValue(t, p, f.typ, sub)
	}
	for name := range props {
		if !seen[name] {
			t.Errorf("%s.%s: schema property has no Go field", path, name)
		}
	}
}

func matchValue(t *testing.T, path string, typ reflect.Type, s *jsonschema.Schema) {
	t.Helper()
	if typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	want := map[reflect.Kind]string{
		reflect.String: "string", reflect.Bool: "boolean", reflect.Float64: "number",
		reflect.Int: "integer", reflect.Int32: "integer", reflect.Int64: "integer", reflect.Uint64: "integer",
		reflect.Struct: "object", reflect.Map: "object", reflect.Slice: "array",
	}[typ.Kind()]
	if typ == reflect.TypeFor[time.Time]() {
		want = "string"
	}
	if got := jsonTypes(s); !slices.Contains(got, want) {
		t.Errorf("%s: Go %s is JSON %s, schema allows %v", path, typ, want, got)
	}
	switch {
	case typ == reflect.TypeFor[time.Time]():
	case typ.Kind() == reflect.Struct:
		matchStruct(t, path, typ, s)
	case typ.Kind() == reflect.Slice:
		items := s
		for items != nil && items.Items2020 == nil {
			items = items.Ref
		}
		if items == nil {
			t.Errorf("%s: schema has no items", path)
			return
		}
		matchValue(t, path+"[]", typ.Elem(), items.Items2020)
	case typ.Kind() == reflect.Map:
		if _, ok := s.AdditionalProperties.(*jsonschema.Schema); !ok && len(s.PatternProperties) == 0 {
			t.Errorf("%s: map without a schema for its values", path)
		}
	}
}

// jsonTypes returns the JSON types s allows, from type, enum or const,
// following $ref.
func jsonTypes(s *jsonschema.Schema) []string {
	for ; s != nil; s = s.Ref {
		switch {
		case s.Types != nil:
			return s.Types.ToStrings()
		case s.Const != nil:
			return []string{kindOf(*s.Const)}
		case s.Enum != nil:
			var out []string
			for _, v := range s.Enum.Values {
				out = append(out, kindOf(v))
			}
			return out
		}
	}
	return nil
}

func kindOf(v any) string {
	switch n := v.(type) {
	case string:
		return "string"
	case bool:
		return "boolean"
	case json.Number:
		if _, err := n.Int64(); err == nil {
			return "integer"
		}
		return "number"
	}
	return "?"
}
