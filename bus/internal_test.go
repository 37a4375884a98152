package bus

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestRetryable(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"no responders", nats.ErrNoResponders, true},
		{"no stream response", jetstream.ErrNoStreamResponse, true},
		{"attempt timeout", fmt.Errorf("x: %w", context.DeadlineExceeded), true},
		{"nats timeout", nats.ErrTimeout, true},
		{"reconnecting", nats.ErrConnectionReconnecting, true},
		{"duplicate in process", fmt.Errorf("nats: %w", &jetstream.APIError{Code: 409, ErrorCode: 10158}), true},
		{"jetstream unavailable", fmt.Errorf("nats: %w", &jetstream.APIError{Code: 503, ErrorCode: 10008}), true},
		{"wrong expected stream", fmt.Errorf("nats: %w", &jetstream.APIError{Code: 400, ErrorCode: 10060}), false},
		{"message too large", fmt.Errorf("nats: %w", &jetstream.APIError{Code: 400, ErrorCode: 10054}), false},
		{"connection closed", nats.ErrConnectionClosed, false},
		{"payload too big", nats.ErrMaxPayload, false},
		{"cancelled", context.Canceled, false},
		{"other", errors.New("boom"), false},
	}
	for _, tt := range tests {
		if got := retryable(tt.err); got != tt.want {
			t.Errorf("retryable(%s: %v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

func TestReconnectDelay(t *testing.T) {
	prev := time.Duration(0)
	for n := 1; n <= 20; n++ {
		d := reconnectDelay(n)
		if d < reconnectBase || d > reconnectMax+reconnectMax/4 {
			t.Errorf("reconnectDelay(%d) = %v, out of [%v, %v]", n, d, reconnectBase, reconnectMax*5/4)
		}
		if n > 1 && d+d/4 < prev/2 {
			t.Errorf("reconnectDelay(%d) = %v shrank from %v", n, d, prev)
		}
		prev = d
	}
	if d := reconnectDelay(20); d < reconnectMax {
		t.Errorf("reconnectDelay(20) = %v, want the cap %v", d, reconnectMax)
	}
}

func TestRedactURLs(t *testing.T) {
	got := redactURLs("nats://u:secret@a:4222,nats://b:4222")
	if want := "nats://[redacted]@a:4222,nats://b:4222"; got != want {
		t.Errorf("redactURLs = %q, want %q", got, want)
	}
}

func TestCheckSubject(t *testing.T) {
	for subj, ok := range map[string]bool{
		"backup.started": true, "backup.progress.job-1": true,
		"": false, "backup.>": false, "backup.*": false, "backup..x": false, ".x": false, "x.": false, "a b": false,
	} {
		if err := checkSubject(subj); (err == nil) != ok {
			t.Errorf("checkSubject(%q) = %v, want ok=%v", subj, err, ok)
		}
	}
}

func TestRestartNeeds(t *testing.T) {
	const mib, gib = int64(1) << 20, int64(1) << 30
	tests := []struct {
		name          string
		minFree, size int64
		want          int64
	}{
		{"small disk: 64 MiB", 0, 24 * mib, 64 * mib},
		{"1% under 64 MiB", 0, 6 * gib, 64 * mib},
		{"1% of 20 GiB", 0, 20 * gib, 20 * gib / 100},
		{"1% capped at 1 GiB", 0, 1 << 40, gib},
		{"set: as it is", 4 * mib, 1 << 40, 4 * mib},
		{"size unknown", 0, 0, 64 * mib},
	}
	for _, tt := range tests {
		if got := restartNeeds(tt.minFree, tt.size); got != tt.want {
			t.Errorf("%s: restartNeeds(%d, %d) = %d, want %d", tt.name, tt.minFree, tt.size, got, tt.want)
		}
	}
}
