package schemas

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"strings"
)

//go:embed json/*.json
var files embed.FS

// commonFile holds the definitions the message schemas reference.
const commonFile = "common"

// baseURL prefixes every schema's $id: <baseURL><name>/v<Version>.json.
const baseURL = "https://sendense.dev/schemas/"

// names lists the messages in the order of a job's life.
var names = []string{
	NameRequested,
	NameStarted,
	NameProgress,
	NameChangeID,
	NameCompleted,
	NameFailed,
	NameRejected,
	NamePruning,
	NamePruned,
	NameVerified,
	NameVerifyRequested,
	NameForgetRequested,
}

// Names returns the message names that have a schema, in the order of a
// job's life, starting with backup.requested.
func Names() []string { return append([]string(nil), names...) }

// schemaID is the $id of a schema file, e.g.
// https://sendense.dev/schemas/backup.completed/v1.json.
func schemaID(name string) string { return fmt.Sprintf("%s%s/v%d.json", baseURL, name, Version) }

// raw returns an embedded schema file as written.
func raw(name string) ([]byte, error) {
	return files.ReadFile("json/" + name + ".json")
}

// Schema returns the JSON Schema (draft 2020-12) of one message, bundled
// with the shared definitions it references (under $defs.common, which keeps
// its own $id), so the document stands alone in any validator. It returns
// ErrUnknownSubject for a name that is not in Names.
func Schema(name string) ([]byte, error) {
	if !isName(name) {
		return nil, fmt.Errorf("schema %q: %w", name, ErrUnknownSubject)
	}
	msg, err := raw(name)
	if err != nil {
		return nil, fmt.Errorf("read schema %s: %w", name, err)
	}
	common, err := raw(commonFile)
	if err != nil {
		return nil, fmt.Errorf("read schema %s: %w", commonFile, err)
	}
	// Splice the common document in before the message's closing brace.
	// Message files have no top-level $defs (a test guards this).
	msg = bytes.TrimSpace(msg)
	end := bytes.LastIndexByte(msg, '}')
	var b bytes.Buffer
	b.Write(msg[:end])
	b.WriteString(`,"$defs":{"` + commonFile + `":`)
	b.Write(common)
	b.WriteString("}}")
	var out bytes.Buffer
	if err := json.Indent(&out, b.Bytes(), "", "  "); err != nil {
		return nil, fmt.Errorf("bundle schema %s: %w", name, err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

func isName(name string) bool {
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// subjectName maps a NATS subject to its message name. For
// backup.progress.<job_id> it also returns the job token. Events other
// than progress travel on <name>.<agent> (the publishing agent's name, one
// token; the bus checks it), or on <name> alone in streams written before
// agents had identities.
func subjectName(subject string) (name, job string, err error) {
	if isName(subject) {
		return subject, "", nil
	}
	if job, ok := strings.CutPrefix(subject, NameProgress+"."); ok && job != "" && !strings.Contains(job, ".") {
		return NameProgress, job, nil
	}
	if i := strings.LastIndexByte(subject, '.'); i > 0 && i < len(subject)-1 {
		if name := subject[:i]; isName(name) && name != NameRequested && name != NameVerifyRequested && name != NameForgetRequested && name != NameProgress {
			return name, "", nil
		}
	}
	return "", "", fmt.Errorf("subject %q: %w", subject, ErrUnknownSubject)
}
