package catalog

import (
	"errors"

	"github.com/sendense/sendense/store"
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
)

// Service error codes, as in the Nats-Service-Error-Code header.
const (
	CodeBadRequest = "400"
	CodeNotFound   = "404"
	CodeTooLarge   = "413"
	CodeInternal   = "500"
)

// sentinels are the errors the service's codes stand for: a
// *bus.ServiceError with code 404 matches store.ErrNotFound, with code 400
// ErrBadRequest.
var sentinels = map[string]error{CodeNotFound: store.ErrNotFound, CodeBadRequest: ErrBadRequest}
