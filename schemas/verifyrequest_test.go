package schemas

import (
	"errors"
	"testing"
)

func TestDecodeVerifyRequest(t *testing.T) {
	r, err := DecodeVerifyRequest([]byte(`{"vm":"pgtest1","requested_by":"schedule:v"}`))
	if err != nil || r.VM != "pgtest1" || r.RequestedBy != "schedule:v" {
		t.Fatalf("decode: %+v, %v", r, err)
	}
	for _, bad := range []string{`{}`, `{"vm":"../x"}`, `{"all":true,"extra":1}`, `{"all":"yes"}`, `{"job_id":"a.b"}`, `not json`} {
		_, err := DecodeVerifyRequest([]byte(bad))
		var ve *ValidationError
		if err == nil || !errors.As(err, &ve) && !errors.Is(err, ErrInvalidJSON) {
			t.Errorf("%s: %v, want a validation error", bad, err)
		}
	}
}
