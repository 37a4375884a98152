package schemas

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// MaxMessageBytes is the largest payload Validate, Decode and DecodeRequest
// accept (256 KiB). Larger payloads are refused with ErrTooLarge before they
// are parsed.
const MaxMessageBytes = 256 << 10

// compiled holds every message schema, compiled once on first use.
var compiled = sync.OnceValues(compileAll)

// registry is the compiled schemas, their fast forms (see fastSchema) and,
// by schema location, the descriptions that explain a pattern in words.
type registry struct {
	byName map[string]*jsonschema.Schema
	fast   map[string]*fastSchema // nil for a schema the fast path cannot run
	noFast map[string]error       // why a schema has no fast form
	desc   map[string]string
}

var printer = message.NewPrinter(language.English)

// embeddedOnly refuses to load anything: every schema the messages reference
// is embedded, and validation must never touch the file system or network.
type embeddedOnly struct{}

func (embeddedOnly) Load(url string) (any, error) {
	return nil, fmt.Errorf("schema %s is not embedded", url)
}

// newCompiler returns a compiler that knows every embedded schema file by
// its $id, asserts formats (date-time) and loads nothing else.
func newCompiler() (*jsonschema.Compiler, error) {
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	c.UseLoader(embeddedOnly{})
	for _, name := range append(Names(), commonFile) {
		b, err := raw(name)
		if err != nil {
			return nil, fmt.Errorf("read schema %s: %w", name, err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("parse schema %s: %w", name, err)
		}
		if err := c.AddResource(schemaID(name), doc); err != nil {
			return nil, fmt.Errorf("add schema %s: %w", name, err)
		}
	}
	return c, nil
}

func compileAll() (*registry, error) {
	c, err := newCompiler()
	if err != nil {
		return nil, err
	}
	out := &registry{
		byName: make(map[string]*jsonschema.Schema, len(names)),
		fast:   make(map[string]*fastSchema, len(names)),
		noFast: map[string]error{},
		desc:   map[string]string{},
	}
	for _, name := range names {
		s, err := c.Compile(schemaID(name))
		if err != nil {
			return nil, fmt.Errorf("compile schema %s: %w", name, err)
		}
		out.add(name, s)
	}
	return out, nil
}

// add registers the compiled schema s as name, with its fast form when
// buildFast can make one (else the reason in noFast: the library alone
// validates name).
func (r *registry) add(name string, s *jsonschema.Schema) {
	r.byName[name] = s
	fs, err := buildFast(s)
	if err != nil {
		r.noFast[name] = err
	} else {
		r.fast[name] = fs
	}
	walkSchema(s, func(s *jsonschema.Schema) {
		if s.Pattern != nil && s.Description != "" {
			r.desc[s.Location] = s.Description
		}
	})
}

// walkSchema calls fn once for s and every subschema reachable from it.
func walkSchema(s *jsonschema.Schema, fn func(*jsonschema.Schema)) {
	seen := map[*jsonschema.Schema]bool{}
	var walk func(s *jsonschema.Schema)
	walk = func(s *jsonschema.Schema) {
		if s == nil || seen[s] {
			return
		}
		seen[s] = true
		fn(s)
		for _, sub := range []*jsonschema.Schema{s.Ref, s.Not, s.If, s.Then, s.Else,
			s.PropertyNames, s.Items2020, s.Contains, s.UnevaluatedProperties, s.UnevaluatedItems} {
			walk(sub)
		}
		for _, l := range [][]*jsonschema.Schema{s.AllOf, s.AnyOf, s.OneOf, s.PrefixItems} {
			for _, sub := range l {
				walk(sub)
			}
		}
		for _, sub := range s.Properties {
			walk(sub)
		}
		for _, sub := range s.PatternProperties {
			walk(sub)
		}
		for _, sub := range s.DependentSchemas {
			walk(sub)
		}
		if sub, ok := s.AdditionalProperties.(*jsonschema.Schema); ok {
			walk(sub)
		}
	}
	walk(s)
}

// Validate checks a payload received on subject against its schema.
// backup.progress.<job_id> is validated as backup.progress, and its job_id
// must equal the subject's last token.
//
// It returns nil, or: ErrUnknownSubject for a subject that carries no
// backup.* message, ErrTooLarge for a payload over MaxMessageBytes (not
// parsed), ErrInvalidJSON for a payload that is not one JSON value, or a
// *ValidationError naming each field and the rule it broke, e.g.
// "backup.completed: /disks/0: missing property 'change_id'".
// It is safe for concurrent use.
func Validate(subject string, data []byte) error {
	name, job, err := subjectName(subject)
	if err != nil {
		return err
	}
	return check(name, job, data, nil)
}

// check validates data against the schema called name; job, when not
// empty, must equal the payload's job_id. When out is not nil (a pointer
// to a zero value) a valid payload is also decoded into it, with the
// result of encoding/json.Unmarshal.
//
// The fast path parses once into a tree, proves the tree valid with the
// schema's fastSchema and decodes the tree. Whatever it cannot prove
// valid, or decode exactly as encoding/json would, takes the slow path:
// the library validates its own parse and names every problem, and
// encoding/json decodes.
func check(name, job string, data []byte, out any) error {
	if len(data) > MaxMessageBytes {
		return fmt.Errorf("%s: payload of %d bytes over the limit of %d: %w", name, len(data), MaxMessageBytes, ErrTooLarge)
	}
	all, err := compiled()
	if err != nil {
		return err
	}
	return all.check(name, job, data, out)
}

// check is check with the schemas of r.
func (r *registry) check(name, job string, data []byte, out any) error {
	if fs := r.fast[name]; fs != nil {
		if done, err := checkFast(fs, name, job, data, out); done {
			return err
		}
	}
	return checkSlow(r, name, job, data, out)
}

// checkFast is check's fast path; done is false when the slow path must
// decide.
func checkFast(fs *fastSchema, name, job string, data []byte, out any) (done bool, err error) {
	t := getTree()
	defer t.release()
	if !t.parse(data) || !fs.accepts(t, 0) {
		return false, nil
	}
	if job != "" {
		// The schema made the payload an object with a string job_id.
		got := ""
		if c := t.member(0, "job_id"); c >= 0 && t.nodes[c].kind == kindString {
			got = t.str(c)
		}
		if err := checkJob(name, job, got); err != nil {
			return true, err
		}
	}
	if out == nil || decodeTree(t, out) {
		return true, nil
	}
	reflect.ValueOf(out).Elem().SetZero()
	return true, unmarshal(name, data, out)
}

// checkSlow is check with the library, plus the one rule the library
// cannot see: a member name repeated in one object (see RuleDuplicateKey),
// which its parse, like encoding/json's, silently drops.
func checkSlow(all *registry, name, job string, data []byte, out any) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s: %w: %w", name, ErrInvalidJSON, err)
	}
	probs := duplicateKeys(data)
	if err := all.byName[name].Validate(inst); err != nil {
		var ve *jsonschema.ValidationError
		if !errors.As(err, &ve) {
			return fmt.Errorf("validate %s: %w", name, err)
		}
		probs = append(probs, all.problems(ve)...)
	}
	if len(probs) > 0 {
		return &ValidationError{Schema: name, Problems: sortProblems(probs)}
	}
	if job != "" {
		// The schema made the payload an object with a string job_id.
		got, _ := inst.(map[string]any)["job_id"].(string)
		if err := checkJob(name, job, got); err != nil {
			return err
		}
	}
	if out == nil {
		return nil
	}
	return unmarshal(name, data, out)
}

// checkJob compares the payload's job_id with the subject's job.
func checkJob(name, job, got string) error {
	if got == job {
		return nil
	}
	return &ValidationError{Schema: name, Problems: []Problem{{
		Field:   "/job_id",
		Rule:    "subject",
		Message: fmt.Sprintf("job_id %q differs from the subject's job %q", got, job),
	}}}
}

// unmarshal decodes a payload that validated.
func unmarshal(name string, data []byte, out any) error {
	if err := json.Unmarshal(data, out); err != nil {
		// Only reachable for JSON the schema accepts but Go cannot hold,
		// such as an integer written as 1.0.
		return fmt.Errorf("decode %s: %w", name, err)
	}
	return nil
}

// problems flattens the library's error tree into its leaves: one Problem
// per broken rule (see sortProblems for the order). A pattern is explained
// by its schema's description rather than shown as a regular expression.
func (r *registry) problems(root *jsonschema.ValidationError) []Problem {
	var out []Problem
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) > 0 {
			for _, c := range e.Causes {
				walk(c)
			}
			return
		}
		p := Problem{Field: pointer(e.InstanceLocation), Message: e.ErrorKind.LocalizedString(printer)}
		if kw := e.ErrorKind.KeywordPath(); len(kw) > 0 {
			p.Rule = kw[0]
		}
		switch k := e.ErrorKind.(type) {
		case *kind.FalseSchema:
			p.Rule, p.Message = "false", "not allowed here"
		case *kind.Pattern:
			if d, ok := r.desc[e.SchemaURL]; ok {
				p.Message = fmt.Sprintf("%q does not match pattern: %s", k.Got, d)
			}
		}
		out = append(out, p)
	}
	walk(root)
	return out
}

// sortProblems sorts problems by Field, Rule and Message, as
// ValidationError promises, and drops repeats.
func sortProblems(probs []Problem) []Problem {
	slices.SortFunc(probs, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.Field, b.Field), cmp.Compare(a.Rule, b.Rule), cmp.Compare(a.Message, b.Message))
	})
	return slices.Compact(probs)
}

// pointer renders an instance location as a JSON pointer (RFC 6901).
func pointer(tokens []string) string {
	var b strings.Builder
	for _, t := range tokens {
		b.WriteByte('/')
		t = strings.ReplaceAll(t, "~", "~0")
		b.WriteString(strings.ReplaceAll(t, "/", "~1"))
	}
	return b.String()
}
