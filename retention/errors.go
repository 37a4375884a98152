package retention

import "errors"

// Sentinel errors. Match them with errors.Is.
var (
	// ErrEmptyPolicy is returned for a policy that keeps nothing by count:
	// every count 0 (protected points alone do not make a policy).
	ErrEmptyPolicy = errors.New("empty retention policy: give at least one keep count")

	// ErrInvalidPolicy is returned for a count below -1 or an empty
	// protected id.
	ErrInvalidPolicy = errors.New("invalid retention policy")

	// ErrInvalidPoint is returned by Apply for a point with an empty id or
	// an id given twice.
	ErrInvalidPoint = errors.New("invalid point")
)
