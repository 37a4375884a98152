package catalog

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/sendense/sendense/agents/catalog/catalogtest"
	"github.com/sendense/sendense/backup"
	"github.com/sendense/sendense/bus/bustest"
	"github.com/sendense/sendense/schemas"
)

// TestResolveJobAndVMs: a full id or a unique prefix of >= 4 characters
// names a job; a shorter or unknown one is not found; a prefix of several
// names them all. VMs lists one row per VM over the service.
func TestResolveJobAndVMs(t *testing.T) {
	e := newEnv(t, bustest.Embedded)
	var evs []schemas.Event
	for _, id := range []string{"abcd1111", "abcd2222", "abce3333"} {
		evs = append(evs, catalogtest.Job{ID: id, VM: catalogtest.VM(1), Disks: []schemas.DiskRef{catalogtest.Disk(1, 0)}}.Run()...)
	}
	if _, err := e.cat.Apply(catalogtest.FromAgent(evs...)...); err != nil {
		t.Fatal(err)
	}
	svc, err := Serve(e.srv.Conn, e.cat, e.log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	c := NewClient(e.srv.Conn)
	ctx := testCtx(t)

	for _, tt := range []struct {
		arg, want string
		wantErr   error
	}{
		{"abcd1111", "abcd1111", nil},
		{"abce", "abce3333", nil},
		{"abcd2", "abcd2222", nil},
		{"abcd", "", ErrAmbiguous},
		{"abc", "", backup.ErrNotFound}, // too short for a prefix
		{"zzzz", "", backup.ErrNotFound},
	} {
		j, err := c.ResolveJob(ctx, tt.arg)
		if !errors.Is(err, tt.wantErr) || j.ID != tt.want {
			t.Errorf("ResolveJob(%q) = %q, %v; want %q, %v", tt.arg, j.ID, err, tt.want, tt.wantErr)
		}
	}
	_, err = c.ResolveJob(ctx, "abcd")
	var ae *AmbiguousError
	if !errors.As(err, &ae) || len(ae.Candidates) != 2 || !strings.Contains(err.Error(), "abcd1111") || !strings.Contains(err.Error(), "abcd2222") {
		t.Errorf("ambiguous prefix: %v, want both candidates named", err)
	}

	vms, err := c.VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 1 || vms[0].UUID != catalogtest.VM(1).UUID || vms[0].Points != 3 || !slices.Contains([]string{"abcd1111", "abcd2222", "abce3333"}, vms[0].LastJobID) {
		t.Errorf("VMs = %+v, want one VM with 3 points", vms)
	}
}
