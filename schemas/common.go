package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// CommonName is the name of the shared definitions' schema (common.json):
// not a message, but the document every message schema's
// "common/v1.json#/$defs/..." references point at.
const CommonName = commonFile

// Common returns the shared definitions' schema as written (indented), for
// `sendense schemas common`. Schema bundles the same document into every
// message's schema under $defs.common.
func Common() ([]byte, error) {
	b, err := raw(commonFile)
	if err != nil {
		return nil, fmt.Errorf("read schema %s: %w", commonFile, err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, bytes.TrimSpace(b), "", "  "); err != nil {
		return nil, fmt.Errorf("read schema %s: %w", commonFile, err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// ID returns the $id of the schema called name (a message's, or
// CommonName's), e.g. https://sendense.dev/schemas/backup.completed/v1.json:
// what a CloudEvents ce-dataschema names.
func ID(name string) string { return schemaID(name) }
