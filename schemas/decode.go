package schemas

import (
	"fmt"
)

// DefaultRepository is the repository a request without one writes to.
const DefaultRepository = "default"

// Decode validates an event received on subject (see Validate) and decodes
// it into its Go type: *Started, *Progress, *ChangeID, *Completed, *Failed
// *Rejected, *Pruning, *Pruned or *Verified. It returns the errors of Validate; backup.requested is not
// an event and gives ErrUnknownSubject (use DecodeRequest).
func Decode(subject string, data []byte) (Event, error) {
	name, job, err := subjectName(subject)
	if err != nil {
		return nil, err
	}
	ev := newEvent(name)
	if ev == nil {
		return nil, fmt.Errorf("decode %s: not an event, use DecodeRequest: %w", subject, ErrUnknownSubject)
	}
	if err := check(name, job, data, ev); err != nil {
		return nil, err
	}
	return ev, nil
}

// DecodeRequest validates a backup.requested payload (see Validate),
// decodes it and fills the defaults (see Request.SetDefaults).
func DecodeRequest(data []byte) (Request, error) {
	var r Request
	if err := check(NameRequested, "", data, &r); err != nil {
		return Request{}, err
	}
	r.SetDefaults()
	return r, nil
}

// DecodeVerifyRequest validates a backup.verify.requested payload and
// decodes it.
func DecodeVerifyRequest(data []byte) (VerifyRequest, error) {
	var r VerifyRequest
	if err := check(NameVerifyRequested, "", data, &r); err != nil {
		return VerifyRequest{}, err
	}
	return r, nil
}

// DecodeForgetRequest validates a backup.forget.requested payload and
// decodes it.
func DecodeForgetRequest(data []byte) (ForgetRequest, error) {
	var r ForgetRequest
	if err := check(NameForgetRequested, "", data, &r); err != nil {
		return ForgetRequest{}, err
	}
	return r, nil
}

// SetDefaults fills what a request may leave out: BackupType auto and
// Repository DefaultRepository.
func (r *Request) SetDefaults() {
	if r.BackupType == "" {
		r.BackupType = TypeAuto
	}
	if r.Repository == "" {
		r.Repository = DefaultRepository
	}
}

// Stamp sets the header's schema reference to name at this build's Version.
// Producers call it before publishing, e.g. Stamp(&ev.Header, NameCompleted).
func Stamp(h *Header, name string) {
	h.Schema = SchemaRef{Name: name, Version: Version}
}

// NameOf returns the message name of an event's Go type (NameStarted for
// *Started, ...), or "" for a type that is not a backup.* event.
func NameOf(e Event) string {
	switch e.(type) {
	case *Started:
		return NameStarted
	case *Progress:
		return NameProgress
	case *ChangeID:
		return NameChangeID
	case *Completed:
		return NameCompleted
	case *Failed:
		return NameFailed
	case *Rejected:
		return NameRejected
	case *Pruning:
		return NamePruning
	case *Pruned:
		return NamePruned
	case *Verified:
		return NameVerified
	}
	return ""
}

// newEvent returns a new zero event of the named type, or nil when name
// is not an event.
func newEvent(name string) Event {
	switch name {
	case NameStarted:
		return new(Started)
	case NameProgress:
		return new(Progress)
	case NameChangeID:
		return new(ChangeID)
	case NameCompleted:
		return new(Completed)
	case NameFailed:
		return new(Failed)
	case NameRejected:
		return new(Rejected)
	case NamePruning:
		return new(Pruning)
	case NamePruned:
		return new(Pruned)
	case NameVerified:
		return new(Verified)
	}
	return nil
}
