package vmware_test

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/testbed"
	"github.com/sendense/sendense/vmware"
)

// connectCA logs in to the testbed trusting only its certificate (the
// file a user gives with --vcenter-ca), closed in cleanup.
func connectCA(t *testing.T, tb *testbed.Testbed) (*vmware.Client, string) {
	t.Helper()
	ca := filepath.Join(t.TempDir(), "sdk.pem")
	if err := os.WriteFile(ca, tb.CertificatePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := vmware.ConnectTLS(testCtx(t), tb.URL(), vmware.TLS{CAFile: ca}, testLog(t))
	if err != nil {
		t.Fatalf("connect with ca file: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, ca
}

// TestHTTPSSource reads snapshot disks the way a remote agent does:
// through vCenter's /folder interface with nbdkit's curl plugin, trusting
// the vCenter certificate through a CA file. The bytes read over NBD are
// the frozen image of that snapshot (not a later one, not the live disk),
// and the session cookie is on no command line.
func TestHTTPSSource(t *testing.T) {
	nbdcopy := testutil.RequireTool(t, "nbdcopy")
	testutil.RequireTool(t, "nbdkit")
	tb, _ := startTestbed(t, testbed.Options{VMs: []testbed.VMSpec{smallVM("pgtest1")}})
	c, _ := connectCA(t, tb)
	vm := findVM(t, c, "pgtest1")
	ctx := testCtx(t)
	s1, disks1 := snap(t, c, vm, "sendense-h1")
	if err := tb.Write("pgtest1", 2000, 0, bytes.Repeat([]byte{0xee}, 1<<20)); err != nil {
		t.Fatal(err)
	}
	s2, disks2 := snap(t, c, vm, "sendense-h2")
	if err := tb.Write("pgtest1", 2000, 1<<20, bytes.Repeat([]byte{0xdd}, 4096)); err != nil {
		t.Fatal(err)
	}

	sources := &vmware.HTTPSSources{Client: c, SocketDir: testutil.SocketDir(t), Log: testLog(t)}
	for _, tc := range []struct {
		name string
		req  vmware.SourceRequest
	}{
		{"first snapshot, disk 2000", vmware.SourceRequest{VM: vm.Ref, Snapshot: s1, Disk: disks1[0]}},
		{"second snapshot, disk 2000", vmware.SourceRequest{VM: vm.Ref, Snapshot: s2, Disk: disks2[0]}},
		{"second snapshot, disk 2001 (not whole MiB)", vmware.SourceRequest{VM: vm.Ref, Snapshot: s2, Disk: disks2[1]}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, err := sources.Open(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = src.Close(context.Background()) })

			cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(src.PID()) + "/cmdline")
			if err != nil {
				t.Fatal(err)
			}
			cookie := c.Vim25().Client.SessionCookie().Value
			if cookie == "" || bytes.Contains(cmdline, []byte(cookie)) {
				t.Errorf("the session cookie %q is on nbdkit's command line (or unknown): %q", cookie, cmdline)
			}
			args := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
			if !slices.Contains(args, "curl") || !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "cainfo=") }) ||
				slices.Contains(args, "sslverify=false") {
				t.Errorf("nbdkit args %q: want the curl plugin verifying with cainfo=", args)
			}
			cookieFile := filepath.Join(filepath.Dir(src.Socket()), "cookie")
			if fi, err := os.Stat(cookieFile); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("cookie file %s: %v, mode %v, want 0600", cookieFile, err, fi.Mode())
			}

			out := filepath.Join(t.TempDir(), "copy.raw")
			if err := os.WriteFile(out, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if b, err := exec.CommandContext(ctx, nbdcopy, src.URI(), out).CombinedOutput(); err != nil {
				t.Fatalf("nbdcopy: %v: %s", err, b)
			}
			frozen, err := tb.SnapshotImage(tc.req.Snapshot, tc.req.Disk.Key)
			if err != nil {
				t.Fatal(err)
			}
			if b, err := exec.CommandContext(ctx, "qemu-img", "compare", "-f", "raw", "-F", "raw", frozen, out).CombinedOutput(); err != nil {
				t.Errorf("read over https differs from the frozen image of disk %d at %s: %v %s", tc.req.Disk.Key, tc.req.Snapshot.Value, err, b)
			}
			if fi, _ := os.Stat(out); fi.Size() != tc.req.Disk.CapacityBytes {
				t.Errorf("read %d bytes, disk has %d", fi.Size(), tc.req.Disk.CapacityBytes)
			}

			pid := src.PID()
			if err := src.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(cookieFile); !os.IsNotExist(err) {
				t.Errorf("cookie file left after Close: %v", err)
			}
			if err := syscall.Kill(pid, 0); err == nil {
				t.Errorf("nbdkit pid %d still running after Close", pid)
			}
		})
	}
}

// TestHTTPSSourceErrors: what cannot be read over /folder is refused
// before nbdkit starts, with the reason.
func TestHTTPSSourceErrors(t *testing.T) {
	testutil.RequireTool(t, "nbdkit")
	tb, c := startTestbed(t, testbed.Options{VMs: []testbed.VMSpec{smallVM("pgtest1")}})
	vm := findVM(t, c, "pgtest1")
	ctx := testCtx(t)
	ref, disks := snap(t, c, vm, "sendense-e1")
	sources := &vmware.HTTPSSources{Client: c, SocketDir: testutil.SocketDir(t), Log: testLog(t)}
	edit := func(f func(*vmware.Disk)) vmware.SourceRequest {
		d := disks[0]
		f(&d)
		return vmware.SourceRequest{VM: vm.Ref, Snapshot: ref, Disk: d}
	}
	for _, tt := range []struct {
		name    string
		req     vmware.SourceRequest
		wantErr error
	}{
		{"sparse backing", edit(func(d *vmware.Disk) { d.Backing = vmware.BackingSeSparse }), vmware.ErrUnsupportedDisk},
		{"not a datastore path", edit(func(d *vmware.Disk) { d.FileName = "pgtest1.vmdk" }), vmware.ErrUnsupportedDisk},
		{"no such file", edit(func(d *vmware.Disk) { d.FileName = "[LocalDS_0] pgtest1/none.vmdk" }), vmware.ErrDatastoreAccess},
		{"not a descriptor", edit(func(d *vmware.Disk) {
			d.FileName = strings.TrimSuffix(d.FileName, ".vmdk") + "-flat.vmdk"
		}), vmware.ErrBadDescriptor},
		{"size differs from the disk", edit(func(d *vmware.Disk) { d.CapacityBytes += 1 << 20 }), vmware.ErrBadDescriptor},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src, err := sources.Open(ctx, tt.req)
			if err == nil {
				_ = src.Close(ctx)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Open: %v, want %v", err, tt.wantErr)
			}
		})
	}
	_ = tb
}

func TestHTTPSCommand(t *testing.T) {
	u, _ := url.Parse("https://vc.example.com/folder/vm/vm-flat.vmdk?dcPath=DC0&dsName=ds1")
	base := vmware.HTTPSOptions{URL: u, CookieFile: "/run/x/cookie", Socket: "/run/x/nbdkit.sock"}
	argv, err := vmware.HTTPSCommand(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"curl", "url=" + u.String(), "cookie=+/run/x/cookie", "protocols=https"} {
		if !slices.Contains(argv, want) {
			t.Errorf("missing %q in %q", want, argv)
		}
	}
	if slices.ContainsFunc(argv, func(a string) bool { return strings.HasPrefix(a, "sslverify") || strings.HasPrefix(a, "cainfo") }) {
		t.Errorf("default TLS must verify with the system CAs: %q", argv)
	}
	o := base
	o.TLS = vmware.TLS{Insecure: true}
	if argv, _ := vmware.HTTPSCommand(o); !slices.Contains(argv, "sslverify=false") {
		t.Errorf("insecure: %q lacks sslverify=false", argv)
	}
	o.TLS = vmware.TLS{CAFile: "/etc/vc.pem"}
	if argv, _ := vmware.HTTPSCommand(o); !slices.Contains(argv, "cainfo=/etc/vc.pem") {
		t.Errorf("ca file: %q lacks cainfo=", argv)
	}
	withUser, _ := url.Parse("https://u:p@vc/folder/x")
	ftp, _ := url.Parse("ftp://vc/folder/x")
	for name, o := range map[string]vmware.HTTPSOptions{
		"no url":             {CookieFile: "/c", Socket: "/s"},
		"credentials in url": {URL: withUser, CookieFile: "/c", Socket: "/s"},
		"not https":          {URL: ftp, CookieFile: "/c", Socket: "/s"},
		"relative cookie":    {URL: u, CookieFile: "cookie", Socket: "/s"},
		"no socket":          {URL: u, CookieFile: "/c"},
		"relative ca":        {URL: u, CookieFile: "/c", Socket: "/s", TLS: vmware.TLS{CAFile: "ca.pem"}},
	} {
		if _, err := vmware.HTTPSCommand(o); !errors.Is(err, vmware.ErrInvalidOptions) {
			t.Errorf("%s: error = %v, want ErrInvalidOptions", name, err)
		}
	}
}
