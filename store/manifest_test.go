package store

import (
	"testing"
	"time"

	"github.com/sendense/sendense/schemas"
)

// TestManifestSHA256 keeps a completed disk's manifest digest in the job
// and its chain link, and a completed event without one (made before
// manifests existed) still applies, with an empty digest.
func TestManifestSHA256(t *testing.T) {
	const sum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	old := spec{job: "j1-old", at: t0}
	j2 := spec{job: "j2-new", at: t0.Add(time.Hour), typ: schemas.TypeIncremental, backing: "j1-old"}
	done := j2.completed()
	done.Disks[0].ManifestSHA256 = sum
	c := newTestCatalog(t)
	c.mustApply(old.run()...)
	c.mustApply(j2.started(), j2.changeIDEvent(0), done)

	if d := c.job("j1-old").Disks[0]; d.ManifestSHA256 != "" {
		t.Fatalf("old job's disk has manifest %q", d.ManifestSHA256)
	}
	if d := c.job("j2-new").Disks[0]; d.ManifestSHA256 != sum {
		t.Fatalf("job disk manifest %q, want %s", d.ManifestSHA256, sum)
	}
	head, err := c.ChainHead(vm1.UUID, diskA.Key, "default")
	if err != nil || head.JobID != "j2-new" || head.ManifestSHA256 != sum {
		t.Fatalf("head %+v, %v", head, err)
	}
	links, err := c.Chain(vm1.UUID, diskA.Key, "default")
	if err != nil || len(links) != 2 || links[0].ManifestSHA256 != "" {
		t.Fatalf("chain %+v, %v", links, err)
	}
}
