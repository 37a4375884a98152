package system

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestDemo runs the demo's script against a pipeline with the small VMs:
// every check of `make demo` must pass.
func TestDemo(t *testing.T) {
	t.Parallel()
	h := startHarness(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	rep, err := RunDemo(ctx, h.sys.NC, DemoOptions{VM: "pgtest1", Dir: t.TempDir()}, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || !strings.Contains(out.String(), "all checks passed") || len(rep.Disks) != 2 {
		t.Errorf("demo checks failed: %+v", rep)
	}
}
