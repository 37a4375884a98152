package backup_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestWireTypesAreLeaves: the packages that carry wire types, and the
// agent that only calls services, do not pull in servers: no bbolt (the
// catalog's store), no hub server, no NATS where only the schemas are
// needed. A move of a wire type back into a server package fails here.
func TestWireTypesAreLeaves(t *testing.T) {
	const mod = "github.com/sendense/sendense/"
	for _, tc := range []struct {
		pkg    string
		banned []string
	}{
		{"backup", []string{"go.etcd.io/bbolt", mod + "store", "github.com/nats-io/nats.go"}},
		{"agents/hub/repoapi", []string{"go.etcd.io/bbolt", mod + "store", mod + "agents/hub", mod + "nbd"}},
		{"agents/node/agentapi", []string{"go.etcd.io/bbolt", mod + "store", mod + "agents/node", mod + "copier", mod + "nbd"}},
		{"agents/node", []string{"go.etcd.io/bbolt", mod + "store", mod + "agents/hub", mod + "agents/catalog"}},
	} {
		out, err := exec.Command("go", "list", "-deps", mod+tc.pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", tc.pkg, err, out)
		}
		deps := strings.Fields(string(out))
		for _, b := range tc.banned {
			if slices.Contains(deps, b) {
				t.Errorf("%s imports %s (directly or not); wire types belong in leaf packages", tc.pkg, b)
			}
		}
	}
}
