package schemas

import (
	"errors"
	"fmt"
)

// The one definition of a job id's syntax. common.json's $defs.job_id
// pattern is JobIDPattern (a test holds them equal); bus.ValidJobID and
// repository.ValidateJobID call ValidJobID, so a producer, the schema, the
// catalog and the repository accept exactly the same ids.
const (
	// MaxJobIDLen is the longest job id.
	MaxJobIDLen = 128
	// JobIDPattern is a job id as a regular expression: 1 to MaxJobIDLen
	// letters, digits, '_' or '-', not starting with '-'. So a job id is
	// one NATS subject token (backup.progress.<job_id>), one path element
	// that never looks like an option (<job_id>.qcow2), and part of event
	// ids, KV keys and the snapshot name sendense-<job_id>.
	JobIDPattern = "^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$"
)

// ErrInvalidJobID is wrapped by ValidJobID's errors.
var ErrInvalidJobID = errors.New("invalid job id")

// ValidJobID reports whether id matches JobIDPattern; the error says why
// not and wraps ErrInvalidJobID.
func ValidJobID(id string) error {
	if id == "" || len(id) > MaxJobIDLen {
		return fmt.Errorf("job id %q: length %d not in 1..%d: %w", id, len(id), MaxJobIDLen, ErrInvalidJobID)
	}
	if id[0] == '-' {
		return fmt.Errorf("job id %q starts with '-': %w", id, ErrInvalidJobID)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("job id %q: character %q at %d not allowed (letters, digits, '_', '-'): %w", id, c, i, ErrInvalidJobID)
		}
	}
	return nil
}
