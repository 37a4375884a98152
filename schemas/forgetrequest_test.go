package schemas

import (
	"errors"
	"testing"
)

func TestDecodeForgetRequest(t *testing.T) {
	r, err := DecodeForgetRequest([]byte(`{"vm":"pgtest1","policy":{"keep_daily":7,"keep_monthly":-1,"protect":["job-1"]},"requested_by":"schedule:f"}`))
	if err != nil || r.VM != "pgtest1" || r.Policy.Daily != 7 || r.Policy.Monthly != -1 || len(r.Policy.Protect) != 1 || r.RequestedBy != "schedule:f" {
		t.Fatalf("decode: %+v, %v", r, err)
	}
	for _, bad := range []string{
		`{}`, `{"vm":"pgtest1"}`, `{"vm":"pgtest1","policy":{}}`, `{"vm":"../x","policy":{"keep_last":1}}`,
		`{"all":true,"policy":{"keep_last":-2}}`, `{"all":true,"policy":{"keep_last":1.5}}`, `{"all":true,"policy":{"keep_fortnightly":1}}`,
		`{"all":true,"policy":{"keep_last":1,"protect":["a.b"]}}`, `{"all":true,"policy":{"keep_last":1},"extra":1}`, `not json`,
	} {
		_, err := DecodeForgetRequest([]byte(bad))
		var ve *ValidationError
		if err == nil || !errors.As(err, &ve) && !errors.Is(err, ErrInvalidJSON) {
			t.Errorf("%s: %v, want a validation error", bad, err)
		}
	}
}
