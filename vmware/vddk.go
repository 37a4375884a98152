package vmware

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/rs/zerolog"
)

// VDDKOptions configures nbdkit's VDDK plugin for one disk at one snapshot.
// There is deliberately no password field: the password reaches nbdkit only
// through PasswordFile (password=+FILE), so it never appears on a command
// line or in a process listing.
type VDDKOptions struct {
	Server       string // vCenter (or ESXi) host name or address; required
	Port         int    // vCenter port; 0 = VDDK default (443)
	User         string // required
	PasswordFile string // absolute path of a file holding the password; required
	Thumbprint   string // SHA-1 of the server certificate, "AA:BB:…" (see Thumbprint); required
	LibDir       string // VDDK distribution directory (libdir=); required
	ConfigFile   string // optional VDDK config file (config=)

	VM       string // VM moref, "vm-123"; required
	Snapshot string // snapshot moref, "snapshot-45"; required
	File     string // the disk's backing file at that snapshot, "[ds] vm/vm.vmdk"; required

	// Transports is the VDDK transport order; default "nbdssl:nbd". Valid
	// modes: file, san, hotadd, nbdssl, nbd.
	Transports string
	// Compression for NBD transports: "", "none", "zlib", "fastlz", "skipz".
	// Empty leaves the VDDK default (none).
	Compression string
	// Filters are extra nbdkit filters (--filter=NAME), for example
	// "cacheextents" or "retry".
	Filters []string

	Socket string // unix socket to serve on; required
}

// DefaultTransports is the VDDK transport order used when none is set.
const DefaultTransports = "nbdssl:nbd"

var (
	validTransports  = map[string]bool{"file": true, "san": true, "hotadd": true, "nbdssl": true, "nbd": true}
	validCompression = map[string]bool{"none": true, "zlib": true, "fastlz": true, "skipz": true}
)

// VDDKCommand builds the nbdkit command line (argv, starting with "nbdkit")
// that serves one disk read-only through the VDDK plugin. It validates the
// options and returns ErrInvalidOptions naming the first problem.
func VDDKCommand(o VDDKOptions) ([]string, error) {
	bad := func(format string, a ...any) ([]string, error) {
		return nil, fmt.Errorf("build vddk command: %w: %s", ErrInvalidOptions, fmt.Sprintf(format, a...))
	}
	required := []struct{ name, val string }{
		{"server", o.Server}, {"user", o.User}, {"password file", o.PasswordFile},
		{"thumbprint", o.Thumbprint}, {"libdir", o.LibDir}, {"vm", o.VM},
		{"snapshot", o.Snapshot}, {"file", o.File}, {"socket", o.Socket},
	}
	for _, r := range required {
		if strings.TrimSpace(r.val) == "" {
			return bad("%s is required", r.name)
		}
	}
	all := []string{o.Server, o.User, o.PasswordFile, o.Thumbprint, o.LibDir, o.ConfigFile, o.VM, o.Snapshot, o.File, o.Transports, o.Compression, o.Socket}
	all = append(all, o.Filters...)
	for _, v := range all {
		if strings.ContainsAny(v, "\x00\n\r") {
			return bad("option values must not contain NUL or newlines")
		}
	}
	if !filepath.IsAbs(o.PasswordFile) {
		return bad("password file %q must be an absolute path", o.PasswordFile)
	}
	if !filepath.IsAbs(o.LibDir) {
		return bad("libdir %q must be an absolute path", o.LibDir)
	}
	if !validThumbprint(o.Thumbprint) {
		return bad("thumbprint %q is not a SHA-1 fingerprint AA:BB:…", o.Thumbprint)
	}
	if !strings.HasPrefix(o.VM, "vm-") {
		return bad("vm %q is not a VM moref (vm-N)", o.VM)
	}
	if !strings.HasPrefix(o.Snapshot, "snapshot-") {
		return bad("snapshot %q is not a snapshot moref (snapshot-N)", o.Snapshot)
	}
	if !strings.HasPrefix(o.File, "[") {
		return bad("file %q is not a datastore path ([ds] path.vmdk)", o.File)
	}
	if o.Port < 0 || o.Port > 65535 {
		return bad("port %d out of range", o.Port)
	}
	transports := o.Transports
	if transports == "" {
		transports = DefaultTransports
	}
	for _, t := range strings.Split(transports, ":") {
		if !validTransports[t] {
			return bad("unknown transport %q in %q", t, transports)
		}
	}
	if o.Compression != "" && !validCompression[o.Compression] {
		return bad("unknown compression %q", o.Compression)
	}

	argv := baseArgs(o.Socket)
	for _, f := range o.Filters {
		if f == "" || strings.ContainsAny(f, " =") {
			return bad("bad filter name %q", f)
		}
		argv = append(argv, "--filter="+f)
	}
	argv = append(argv, "vddk",
		"libdir="+o.LibDir,
		"server="+o.Server,
		"user="+o.User,
		"password=+"+o.PasswordFile,
		"thumbprint="+strings.ToUpper(o.Thumbprint),
		"vm=moref="+o.VM,
		"snapshot="+o.Snapshot,
		"transports="+transports,
	)
	if o.Port != 0 {
		argv = append(argv, "port="+strconv.Itoa(o.Port))
	}
	if o.ConfigFile != "" {
		argv = append(argv, "config="+o.ConfigFile)
	}
	if o.Compression != "" {
		argv = append(argv, "compression="+o.Compression)
	}
	// file= last: it is the disk, and its value may contain spaces (it is
	// one argv element, never passed through a shell).
	argv = append(argv, "file="+o.File)
	return argv, nil
}

// Thumbprint is the SHA-1 fingerprint of a certificate in the form VDDK
// expects: upper-case hex bytes separated by colons.
func Thumbprint(cert *x509.Certificate) string {
	sum := sha1.Sum(cert.Raw)
	var b strings.Builder
	for i, x := range sum {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02X", x)
	}
	return b.String()
}

// ServerThumbprint connects to host (host:port, port 443 when absent), reads
// the leaf certificate without verifying it, and returns its Thumbprint.
// Pin the result in configuration rather than trusting it blindly on every
// connection.
func ServerThumbprint(ctx context.Context, host string) (string, error) {
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(host, "443")
	}
	ctx, cancel := withDefaultTimeout(ctx, DefaultCallTimeout)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}} // #nosec G402 -- only reads the certificate to fingerprint it
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return "", fmt.Errorf("read certificate of %s: %w: %w", host, ErrUnavailable, err)
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return "", fmt.Errorf("read certificate of %s: no certificate presented", host)
	}
	return Thumbprint(certs[0]), nil
}

func validThumbprint(s string) bool {
	parts := strings.Split(s, ":")
	if len(parts) != sha1.Size {
		return false
	}
	for _, p := range parts {
		p = strings.ToLower(p)
		if len(p) != 2 || !isHex(p[0]) || !isHex(p[1]) {
			return false
		}
	}
	return true
}

// VDDKSources opens disks through nbdkit's VDDK plugin. Base carries the
// connection settings (server, user, password file, thumbprint, libdir,
// transports, compression, filters); Open fills in the VM, snapshot, file and
// socket of each request.
type VDDKSources struct {
	Base      VDDKOptions
	SocketDir string // parent of the private socket directories; default os.TempDir()
	Log       zerolog.Logger
}

// Open implements Sources.
func (v *VDDKSources) Open(ctx context.Context, req SourceRequest) (*Source, error) {
	o := v.Base
	o.VM, o.Snapshot, o.File = req.VM.Value, req.Snapshot.Value, req.Disk.FileName
	src, err := startSource(ctx, v.SocketDir, v.Log, func(sock string) ([]string, error) {
		o.Socket = sock
		return VDDKCommand(o)
	})
	if err != nil {
		return nil, fmt.Errorf("open vddk source for disk %d of vm %s at snapshot %s: %w", req.Disk.Key, req.VM.Value, req.Snapshot.Value, err)
	}
	return src, nil
}
