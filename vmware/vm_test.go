package vmware_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sendense/sendense/testbed"
	"github.com/sendense/sendense/vmware"
)

func TestFindVM(t *testing.T) {
	tb, c := startTestbed(t, testbed.Options{VMs: []testbed.VMSpec{smallVM("pgtest1"), smallVM("web-2")}})
	ctx := testCtx(t)
	want := tb.VMs()[0]

	tests := []struct {
		name    string
		id      string
		wantErr error
	}{
		{"by name", "pgtest1", nil},
		{"by instance uuid", want.UUID, nil},
		{"by moref", want.Moref, nil},
		{"unknown name", "nosuchvm", vmware.ErrVMNotFound},
		{"unknown uuid", "4212c2a0-0000-0000-0000-000000000000", vmware.ErrVMNotFound},
		{"unknown moref", "vm-99999", vmware.ErrVMNotFound},
		{"glob is not a pattern", "pg*", vmware.ErrVMNotFound},
		{"empty", "", vmware.ErrVMNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm, err := c.FindVM(ctx, tt.id)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("FindVM(%q) error = %v, want %v", tt.id, err, tt.wantErr)
			}
			if tt.wantErr != nil {
				return
			}
			if vm.Name != want.Name || vm.InstanceUUID != want.UUID || vm.Moref() != want.Moref {
				t.Fatalf("FindVM(%q) = %s/%s/%s, want %s/%s/%s", tt.id, vm.Name, vm.InstanceUUID, vm.Moref(), want.Name, want.UUID, want.Moref)
			}
			if !vm.CBTEnabled {
				t.Errorf("CBT not enabled on %s", vm.Name)
			}
			if len(vm.Disks) != len(want.Disks) {
				t.Fatalf("got %d disks, want %d", len(vm.Disks), len(want.Disks))
			}
			for i, d := range vm.Disks {
				w := want.Disks[i]
				if d.Key != w.Key || d.UUID != w.UUID || d.CapacityBytes != w.CapacityBytes || d.FileName != w.FileName || d.Backing != vmware.BackingFlat {
					t.Errorf("disk %d = %+v, want key %d uuid %s capacity %d file %s flat", i, d, w.Key, w.UUID, w.CapacityBytes, w.FileName)
				}
			}
		})
	}
}

func TestConnectErrors(t *testing.T) {
	tb, _ := startTestbed(t, testbed.Options{})
	ctx := testCtx(t)

	bad := tb.URL()
	bad.User = url.UserPassword(testbed.DefaultUser, "Wr0ng-Pa55")
	_, err := vmware.Connect(ctx, bad, true, testLog(t))
	if !errors.Is(err, vmware.ErrLoginRejected) {
		t.Errorf("Connect with a wrong password: error = %v, want ErrLoginRejected", err)
	}
	if err != nil && strings.Contains(err.Error(), "Wr0ng-Pa55") {
		t.Errorf("error leaks the password: %v", err)
	}

	down := tb.URL()
	down.Host = "127.0.0.1:1" // nothing listens on port 1
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = vmware.Connect(cctx, down, true, testLog(t))
	if !errors.Is(err, vmware.ErrUnavailable) {
		t.Errorf("Connect to a closed port: error = %v, want ErrUnavailable", err)
	}
	if err != nil && strings.Contains(err.Error(), testbed.DefaultPassword) {
		t.Errorf("error leaks the password: %v", err)
	}

	if _, err := vmware.Connect(ctx, tb.URL(), false, testLog(t)); !errors.Is(err, vmware.ErrUnavailable) {
		t.Errorf("Connect verifying a self-signed certificate: error = %v, want ErrUnavailable (TLS)", err)
	}
}
