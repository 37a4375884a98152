package catalog

import (
	"errors"
	"fmt"

	"github.com/sendense/sendense/store"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrCatalogInUse is returned by Rebuild and CheckIdle when another
	// process (a running `sendense serve` or `sendense catalog`) holds the
	// live catalog file. It wraps nothing; the error text says what to stop.
	ErrCatalogInUse = errors.New("catalog file is in use by a running process")

	// ErrBadRequest is matched by a *ServiceError with code 400: the
	// request was not valid JSON or lacked a required field.
	ErrBadRequest = errors.New("bad request")

	// ErrUnavailable is returned by the Client when no catalog service
	// answers on the subject (no `sendense serve` or `sendense catalog`
	// connected to this NATS).
	ErrUnavailable = errors.New("catalog service not available")
)

// Service error codes, as in the Nats-Service-Error-Code header.
const (
	CodeBadRequest = "400"
	CodeNotFound   = "404"
	CodeTooLarge   = "413"
	CodeInternal   = "500"
)

// ServiceError is an error answer of the catalog service. It matches
// store.ErrNotFound (code 404) and ErrBadRequest (code 400) with errors.Is.
type ServiceError struct {
	Subject     string
	Code        string
	Description string
}

func (e *ServiceError) Error() string {
	return fmt.Sprintf("catalog service %s: %s %s", e.Subject, e.Code, e.Description)
}

// Is maps the code to the sentinel errors.
func (e *ServiceError) Is(target error) bool {
	switch e.Code {
	case CodeNotFound:
		return target == store.ErrNotFound
	case CodeBadRequest:
		return target == ErrBadRequest
	}
	return false
}
