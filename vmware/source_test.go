package vmware_test

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/sendense/internal/testutil"
	"github.com/sendense/sendense/testbed"
	"github.com/sendense/sendense/vmware"
	"github.com/vmware/govmomi/vim25/types"
)

const secret = "pa55-W0rd-never-on-argv"

func vddkOptions(t testing.TB, sock string) vmware.VDDKOptions {
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return vmware.VDDKOptions{
		Server:       "vcenter.example.com",
		User:         "backup@vsphere.local",
		PasswordFile: pw,
		Thumbprint:   "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01",
		LibDir:       "/opt/vmware-vix-disklib-distrib",
		VM:           "vm-123",
		Snapshot:     "snapshot-45",
		File:         "[datastore 1] pgtest1/pgtest1-000001.vmdk",
		Socket:       sock,
	}
}

// TestSourceCommands is the behaviour both source command lines share: a
// read-only nbdkit in the foreground on the given unix socket that dies with
// its parent and carries no secret.
func TestSourceCommands(t *testing.T) {
	sock := "/tmp/sdt123/nbdkit.sock"
	builders := map[string]func(t *testing.T) []string{
		"local": func(t *testing.T) []string { return vmware.LocalCommand("/images/disk.img", sock) },
		"https": func(t *testing.T) []string {
			u, _ := url.Parse("https://vc/folder/vm/vm-flat.vmdk?dcPath=DC0&dsName=ds")
			argv, err := vmware.HTTPSCommand(vmware.HTTPSOptions{URL: u, CookieFile: "/tmp/sdt123/cookie", Socket: sock})
			if err != nil {
				t.Fatal(err)
			}
			return argv
		},
		"vddk": func(t *testing.T) []string {
			argv, err := vmware.VDDKCommand(vddkOptions(t, sock))
			if err != nil {
				t.Fatal(err)
			}
			return argv
		},
	}
	for name, build := range builders {
		t.Run(name, func(t *testing.T) {
			argv := build(t)
			if argv[0] != "nbdkit" {
				t.Errorf("argv[0] = %q, want nbdkit", argv[0])
			}
			for _, flag := range []string{"--readonly", "--foreground", "--exit-with-parent"} {
				if !slices.Contains(argv, flag) {
					t.Errorf("missing %s in %q", flag, argv)
				}
			}
			if i := slices.Index(argv, "--unix"); i < 0 || i+1 >= len(argv) || argv[i+1] != sock {
				t.Errorf("not serving on --unix %s: %q", sock, argv)
			}
			if strings.Contains(strings.Join(argv, " "), secret) {
				t.Errorf("the password is on the command line: %q", argv)
			}
		})
	}
}

func TestVDDKCommand(t *testing.T) {
	o := vddkOptions(t, "/tmp/s/nbdkit.sock")
	argv, err := vmware.VDDKCommand(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"vddk",
		"server=vcenter.example.com",
		"user=backup@vsphere.local",
		"password=+" + o.PasswordFile,
		"thumbprint=AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01",
		"libdir=/opt/vmware-vix-disklib-distrib",
		"vm=moref=vm-123",
		"snapshot=snapshot-45",
		"transports=nbdssl:nbd",
		"file=[datastore 1] pgtest1/pgtest1-000001.vmdk",
	} {
		if !slices.Contains(argv, want) {
			t.Errorf("missing %q in %q", want, argv)
		}
	}
	if slices.Index(argv, "vddk") < slices.Index(argv, "--unix") {
		t.Errorf("nbdkit options must precede the plugin name: %q", argv)
	}

	o.Transports, o.Compression, o.Filters, o.Port = "hotadd:nbdssl", "zlib", []string{"cacheextents"}, 8443
	argv, err = vmware.VDDKCommand(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"transports=hotadd:nbdssl", "compression=zlib", "--filter=cacheextents", "port=8443"} {
		if !slices.Contains(argv, want) {
			t.Errorf("missing %q in %q", want, argv)
		}
	}

	bad := []struct {
		name string
		edit func(*vmware.VDDKOptions)
	}{
		{"no password file", func(o *vmware.VDDKOptions) { o.PasswordFile = "" }},
		{"relative password file", func(o *vmware.VDDKOptions) { o.PasswordFile = "pw.txt" }},
		{"no thumbprint", func(o *vmware.VDDKOptions) { o.Thumbprint = "" }},
		{"short thumbprint", func(o *vmware.VDDKOptions) { o.Thumbprint = "AB:CD" }},
		{"sha256 thumbprint", func(o *vmware.VDDKOptions) { o.Thumbprint = strings.Repeat("AB:", 31) + "AB" }},
		{"vm name instead of moref", func(o *vmware.VDDKOptions) { o.VM = "pgtest1" }},
		{"snapshot name instead of moref", func(o *vmware.VDDKOptions) { o.Snapshot = "sendense-job1" }},
		{"file not a datastore path", func(o *vmware.VDDKOptions) { o.File = "/vmfs/volumes/x.vmdk" }},
		{"unknown transport", func(o *vmware.VDDKOptions) { o.Transports = "nbd:carrier-pigeon" }},
		{"unknown compression", func(o *vmware.VDDKOptions) { o.Compression = "lz4" }},
		{"newline smuggling a parameter", func(o *vmware.VDDKOptions) { o.User = "u\npassword=" + secret }},
		{"no socket", func(o *vmware.VDDKOptions) { o.Socket = "" }},
		{"no libdir", func(o *vmware.VDDKOptions) { o.LibDir = "" }},
		{"bad filter", func(o *vmware.VDDKOptions) { o.Filters = []string{"retry retries=5"} }},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			o := vddkOptions(t, "/tmp/s/nbdkit.sock")
			tt.edit(&o)
			argv, err := vmware.VDDKCommand(o)
			if !errors.Is(err, vmware.ErrInvalidOptions) {
				t.Fatalf("VDDKCommand error = %v (argv %q), want ErrInvalidOptions", err, argv)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error leaks the password: %v", err)
			}
		})
	}
}

var thumbprintRE = regexp.MustCompile(`^([0-9A-F]{2}:){19}[0-9A-F]{2}$`)

func TestThumbprint(t *testing.T) {
	tb, _ := startTestbed(t, testbed.Options{})
	want := vmware.Thumbprint(tb.Certificate())
	if !thumbprintRE.MatchString(want) {
		t.Fatalf("Thumbprint = %q, want AA:BB:… (20 bytes)", want)
	}
	got, err := vmware.ServerThumbprint(testCtx(t), tb.URL().Host)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("ServerThumbprint = %s, certificate's = %s", got, want)
	}
}

// TestLocalSource serves a frozen image over NBD and reads it back with
// nbdcopy; a guest write after the snapshot does not show through.
func TestLocalSource(t *testing.T) {
	nbdcopy := testutil.RequireTool(t, "nbdcopy")
	testutil.RequireTool(t, "nbdkit")
	tb, c := startTestbed(t, testbed.Options{VMs: []testbed.VMSpec{smallVM("pgtest1")}})
	vm := findVM(t, c, "pgtest1")
	ctx := testCtx(t)
	ref, disks := snap(t, c, vm, "sendense-src")
	d := disks[1] // capacity not a multiple of 1 MiB
	if err := tb.Write("pgtest1", d.Key, 0, bytes.Repeat([]byte{0xee}, 4096)); err != nil {
		t.Fatal(err)
	}

	sources := &vmware.LocalSources{Image: tb.SnapshotImage, SocketDir: testutil.SocketDir(t), Log: testLog(t)}
	src, err := sources.Open(ctx, vmware.SourceRequest{VM: vm.Ref, Snapshot: ref, Disk: d})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close(context.Background()) })
	if !strings.HasPrefix(src.URI(), "nbd+unix:///?socket=") {
		t.Errorf("URI = %q", src.URI())
	}

	out := filepath.Join(t.TempDir(), "copy.raw")
	if err := os.WriteFile(out, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, nbdcopy, src.URI(), out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v: %s", err, b)
	}
	frozen, _ := tb.SnapshotImage(ref, d.Key)
	want, _ := os.ReadFile(frozen)
	got, _ := os.ReadFile(out)
	if int64(len(got)) != d.CapacityBytes || !bytes.Equal(got, want) {
		t.Fatalf("copy of the source (%d bytes) differs from the frozen image (%d bytes)", len(got), len(want))
	}
	if bytes.Equal(got[:4096], bytes.Repeat([]byte{0xee}, 4096)) {
		t.Errorf("the source shows a write made after the snapshot")
	}

	pid := src.PID()
	if err := src.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(src.Socket())); !os.IsNotExist(err) {
		t.Errorf("socket dir left after Close: %v", err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("nbdkit pid %d still running after Close", pid)
	}
	if err := src.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestLocalSourceErrors(t *testing.T) {
	testutil.RequireTool(t, "nbdkit")
	ctx := testCtx(t)
	if _, err := vmware.LocalSource(ctx, "/nonexistent/disk.img", testutil.SocketDir(t), testLog(t)); err == nil {
		t.Error("LocalSource of a missing image: no error")
	}
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 90))
	if err := os.MkdirAll(long, 0o700); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "x.img")
	_ = os.WriteFile(img, make([]byte, 4096), 0o600)
	if _, err := vmware.LocalSource(ctx, img, long, testLog(t)); !errors.Is(err, vmware.ErrInvalidOptions) {
		t.Errorf("socket path too long: error = %v, want ErrInvalidOptions", err)
	}
	sources := &vmware.LocalSources{
		Image:     func(types.ManagedObjectReference, int32) (string, error) { return "", testbed.ErrUnknownSnapshot },
		SocketDir: testutil.SocketDir(t),
	}
	if _, err := sources.Open(ctx, vmware.SourceRequest{}); !errors.Is(err, testbed.ErrUnknownSnapshot) {
		t.Errorf("Open with an unknown snapshot: error = %v", err)
	}
	// nbdkit refusing to start is reported with what it said, quickly.
	start := time.Now()
	dir := testutil.SocketDir(t)
	notRaw := filepath.Join(dir, "dir-not-file")
	_ = os.Mkdir(notRaw, 0o700)
	_, err := vmware.LocalSource(ctx, notRaw, dir, testLog(t))
	if !errors.Is(err, vmware.ErrSourceStart) {
		t.Errorf("LocalSource of a directory: error = %v, want ErrSourceStart", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("start failure took %s", time.Since(start))
	}
}
