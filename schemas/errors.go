package schemas

import (
	"errors"
	"strings"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrInvalidJSON: the payload is not one JSON value (syntax error,
	// trailing data, empty input). Requests answer it with RejectInvalidJSON.
	ErrInvalidJSON = errors.New("invalid json")

	// ErrUnknownSubject: the subject is not a backup.* message subject
	// (for Decode: not an event subject), or the name is not a schema.
	ErrUnknownSubject = errors.New("unknown subject")

	// ErrTooLarge: the payload is larger than MaxMessageBytes; it is refused
	// before it is parsed.
	ErrTooLarge = errors.New("message too large")
)

// Problem is one rule a message broke.
type Problem struct {
	// Field is the JSON pointer (RFC 6901) of the value that broke the rule,
	// e.g. "/disks/0"; "" is the whole message. For a missing property it
	// is the object that lacks it, and Message names the property.
	Field string `json:"field"`
	// Rule is the JSON Schema keyword that failed: required, pattern, type,
	// enum, const, additionalProperties, minItems, format, ... ("subject"
	// when the payload disagrees with its subject, RuleDuplicateKey for a
	// member name repeated in the object at Field).
	Rule string `json:"rule"`
	// Message says what is wrong, e.g. "missing property 'change_id'".
	Message string `json:"message"`
}

// String renders the problem as "/disks/0: missing property 'change_id'";
// the whole message is shown as "/".
func (p Problem) String() string {
	f := p.Field
	if f == "" {
		f = "/"
	}
	return f + ": " + p.Message
}

// ValidationError is returned by Validate, Decode and DecodeRequest when a
// well-formed JSON payload breaks its schema. Problems is never empty and is
// sorted by Field, then Rule, then Message.
type ValidationError struct {
	Schema   string // message name, e.g. backup.completed
	Problems []Problem
}

// Error lists every problem: "backup.completed: /disks/0: missing property
// 'change_id'", several joined with "; ".
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString(e.Schema)
	b.WriteString(": ")
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}
