package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/sendense/agents/simctl"
)

// TestRestoreOverTLS: `serve --repo-listen` exports over TCP with TLS-PSK,
// and `restore --verify` reads the nbds:// export with the key of its
// reply, identical to what the snapshot froze.
func TestRestoreOverTLS(t *testing.T) {
	s := startServe(t, "small", "--repo-listen", "127.0.0.1", "--repo-ports", "22809-22909")
	s.must(t, "backup", "--vm", "pgtest1", "--wait", "--job-id", "tls-full")
	dir := t.TempDir()
	out := s.must(t, "restore", "--job", "tls-full", "--to", dir, "--verify")
	if strings.Count(out, "identical") != 2 {
		t.Errorf("restore --verify over tls:\n%s", out)
	}
	sim := simctl.NewClient(s.nc)
	for _, key := range []int32{2000, 2001} {
		fr, err := sim.Frozen(context.Background(), "pgtest1", "sendense-tls-full", key)
		if err != nil {
			t.Fatal(err)
		}
		restored := filepath.Join(dir, fmt.Sprintf("%d.raw", key))
		if o, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", fr.Path, restored).CombinedOutput(); err != nil {
			t.Errorf("restored %s differs from the frozen image: %v %s", restored, err, o)
		}
	}
	if logs := s.p.out.String(); !strings.Contains(logs, `"uri":"nbds://127.0.0.1:`) {
		t.Error("serve's log shows no nbds:// export")
	}
	if code := s.p.stop(t); code != 0 {
		t.Errorf("serve exited with %d after SIGTERM", code)
	}
}

// TestRepoFlagsInvalid: export settings that cannot work stop the hub at
// once with the flag named.
func TestRepoFlagsInvalid(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--repo-listen", "127.0.0.1", "--repo-ports", "2000-1000"}, "--repo-ports"},
		{[]string{"--repo-listen", "127.0.0.1", "--repo-ports", "many"}, "--repo-ports"},
		{[]string{"--repo-listen", "0.0.0.0"}, "advertised address"},
		{[]string{"--repo-advertise", "hub.example"}, "without a listen address"},
	} {
		_, err := cli(t, append([]string{"hub", "--data", t.TempDir(), "--nats-url", "nats://127.0.0.1:1", "--api-listen", "none"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("hub %v: %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
}
