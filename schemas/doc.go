// Package schemas owns the contract of the backup pipeline: one JSON Schema
// (draft 2020-12) per message, embedded in the binary, the Go types that
// match them, and validation of received payloads.
//
// It must never do I/O, log, or know about NATS connections, vCenter or the
// catalog: it turns bytes into checked values and back, nothing more. It
// never loads a schema from the file system or the network.
//
// # Basics
//
// The messages are backup.requested (the request) and
// backup.verify.requested (a verification request the hub takes),
// backup.forget.requested (a retention request the hub takes), the
// events an agent publishes, backup.started, backup.progress,
// backup.changeid, backup.completed, backup.failed and backup.rejected,
// and the events the hub publishes about a completed job (HubEvents):
// backup.pruning (the intent to remove a point), backup.pruned (it is
// removed) and backup.verified (a verification's outcome). Names lists them and Schema returns
// one as a self-contained document (what `sendense schemas NAME` prints).
// The files live in json/: one per message plus common.json, which holds
// the shared definitions (header parts, vm, disk, the VMware change id
// format) that the message files reference by $id.
//
// A consumer calls Decode(subject, data) for events, DecodeRequest(data)
// for backup requests, DecodeVerifyRequest(data) for verification
// requests or DecodeForgetRequest(data) for retention requests: all validate first, then unmarshal; DecodeRequest also
// fills the defaults (backup_type auto, repository "default"). Validate
// checks without decoding. backup.progress travels on
// backup.progress.<job_id>; that subject validates as backup.progress and
// its job must equal the payload's job_id.
//
// A producer fills a Go value and calls Stamp(&ev.Header, name) (NameOf
// gives the name of an event's type); bus.Publisher.PublishEvent marshals
// it and refuses it unless it validates. A completed event without a
// change id for every disk does not validate, by design.
//
// Errors: ErrTooLarge (over MaxMessageBytes, refused before parsing),
// ErrInvalidJSON, ErrUnknownSubject, or a *ValidationError whose Problems
// name each field as a JSON pointer and the rule it broke, e.g.
// "backup.completed: /disks/0: missing property 'change_id'". An agent
// answering a bad request maps these to RejectInvalidJSON and RejectSchema
// (a Problem on "/vm" with rule "pattern" is RejectInvalidVMID).
//
// A member name that appears twice in one object, at any depth, is a
// schema violation: a Problem with Rule RuleDuplicateKey on the object,
// shown as /disks/0/disk: duplicate key "key". Names are compared as
// encoding/json reads them ("v\u006d" repeats "vm"). JSON leaves repeated
// names to the reader, and encoding/json and the schema library keep the
// last one, so {"vm":"../../etc","vm":"pgtest1"} could otherwise be
// checked with one value and read with the other by a different decoder.
//
// # Caveats
//
// Schemas are compiled once, on first use, and are safe for concurrent use.
//
// Validation has two paths with one meaning. The fast path (tree.go,
// fast.go, pattern.go, unmarshal.go) parses the payload once into a
// pooled tree, checks it against the compiled schemas (the library's own
// compiled form, re-read), and decodes the Go value from the same tree:
// about 10 µs and a handful of allocations for a typical event, against
// some 100 µs and hundreds of allocations for the library alone. It only
// ever proves a payload valid. Anything it does not prove valid, or
// cannot decode exactly as encoding/json would (repeated member names,
// deep nesting, integers written as 2.0), goes to the slow path: the
// library validates its own parse and names every problem, a scan of the
// bytes names every repeated member name, and encoding/json decodes. A
// schema using a keyword the fast path does not implement (among them
// not, allOf, anyOf, oneOf and the exclusive bounds, which no message
// schema uses) has no fast form: the library alone validates it. So
// errors, and what is accepted, are the library's; tests compare both paths on thousands of
// payloads derived from the fixtures, and fuzz targets do so on arbitrary
// input (go test -fuzz FuzzFastPath, FuzzClassSeq). A payload that breaks
// a rule costs both paths.
//
// A decoded value's strings share one copy of the payload (never the
// caller's buffer), so a value kept alive keeps that copy alive.
//
// Identifiers that end up in file names, snapshot names or subjects are
// restricted to safe characters: job ids to 1..128 letters, digits, '_'
// and '-', not starting with '-' (what both bus.ValidJobID and
// repository.ValidateID accept; no '.', so a job id is one NATS subject
// token), repositories and event ids to a similar set, VM and disk UUIDs to
// the canonical 8-4-4-4-12 form. A request's vm may be a name, UUID or
// moref but never contains '/', '\', ".." or control characters.
//
// JSON Schema counts 2.0 as an integer; Go does not. Such a payload passes
// Validate and fails Decode with a plain error.
//
// Every field of an event is required unless its Go field is omitempty;
// schema and Go type are kept in step by a test, so change both together
// and bump Version when an old consumer could no longer read a message.
package schemas
