package node

import (
	"time"

	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/schemas"
)

func progressSubject(jobID string) string { return bus.ProgressSubject(jobID) }

func newTicker(d time.Duration) *time.Ticker { return time.NewTicker(d) }

// rate is the job's mean copy rate since its first progress event.
func (p *progress) rate(ev *schemas.Progress) float64 {
	now := time.Now().UnixNano()
	if p.first == 0 {
		p.first = now
		return 0
	}
	secs := float64(now-p.first) / 1e9
	if secs <= 0 {
		return 0
	}
	return float64(ev.BytesDone) / secs
}
