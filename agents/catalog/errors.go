package catalog

import (
	"errors"
	"fmt"
	"strings"

	"github.com/sendense/sendense/backup"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrCatalogInUse is returned by Rebuild and CheckIdle when another
	// process (a running `sendense serve` or `sendense catalog`) holds the
	// live catalog file. It wraps nothing; the error text says what to stop.
	ErrCatalogInUse = errors.New("catalog file is in use by a running process")

	// ErrBadRequest is matched by a *bus.ServiceError with code 400: the
	// request was not valid JSON or lacked a required field.
	ErrBadRequest = errors.New("bad request")

	// ErrUnavailable is returned by the Client when no catalog service
	// answers on the subject (no `sendense serve` or `sendense catalog`
	// connected to this NATS).
	ErrUnavailable = errors.New("catalog service not available")

	// ErrAmbiguous is matched by an *AmbiguousError: a short job id that
	// starts more than one job's id.
	ErrAmbiguous = errors.New("ambiguous short job id")
)

// AmbiguousError is ResolveJob's error for a prefix of several job ids:
// Candidates are the newest of them (More: there are others).
type AmbiguousError struct {
	Prefix     string
	Candidates []backup.Job
	More       bool
}

func (e *AmbiguousError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "job id %s is ambiguous: it starts", e.Prefix)
	for i, j := range e.Candidates {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, " %s (%s, %s)", j.ID, j.VM.Name, j.Status)
	}
	if e.More {
		b.WriteString(" and more")
	}
	b.WriteString("; give more characters")
	return b.String()
}

func (e *AmbiguousError) Is(target error) bool { return target == ErrAmbiguous }

// Service error codes, as in the Nats-Service-Error-Code header.
const (
	CodeBadRequest = "400"
	CodeNotFound   = "404"
	CodeTooLarge   = "413"
	CodeInternal   = "500"
)

// sentinels are the errors the service's codes stand for: a
// *bus.ServiceError with code 404 matches backup.ErrNotFound, with code 400
// ErrBadRequest.
var sentinels = map[string]error{CodeNotFound: backup.ErrNotFound, CodeBadRequest: ErrBadRequest}
