package vmware

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// HTTPSSources reads a disk of a snapshot through vCenter's datastore
// interface, /folder/<path>?dcPath=<datacenter>&dsName=<datastore>, with
// the session cookie of Client, and serves it read-only over NBD with
// nbdkit's curl plugin (which Debian's nbdkit has; it has no VDDK plugin).
//
// For each disk it GETs the descriptor the snapshot's backing names ("[ds]
// vm/vm.vmdk"), finds its flat extent (FlatExtent: a sparse or seSparse
// delta, an RDM or a split disk is refused with ErrUnsupportedDisk) and
// points nbdkit at the flat file's /folder URL. The cookie reaches nbdkit
// only as cookie=+FILE, a 0600 file in the source's private directory,
// never on its command line. TLS follows Client's: cainfo= with its CA
// file, sslverify=false only when it is insecure, else the system's CAs.
//
// Safe for concurrent use. What a vSphere host exposes this way is the
// base disk while the snapshot exists: with an older snapshot still there
// the new snapshot's disk is a delta and cannot be read here.
type HTTPSSources struct {
	Client    *Client
	SocketDir string // parent of the private socket directories; default os.TempDir()
	Log       zerolog.Logger
}

// Open implements Sources.
func (h *HTTPSSources) Open(ctx context.Context, req SourceRequest) (*Source, error) {
	wrap := func(err error) error {
		return fmt.Errorf("open https source for disk %d of vm %s at snapshot %s: %w", req.Disk.Key, req.VM.Value, req.Snapshot.Value, err)
	}
	flat, err := h.Client.FlatFileURL(ctx, req.VM, req.Disk)
	if err != nil {
		return nil, wrap(err)
	}
	cookie, err := h.Client.sessionCookie()
	if err != nil {
		return nil, wrap(err)
	}
	src, err := startSource(ctx, h.SocketDir, h.Log, func(sock string) ([]string, error) {
		file := filepath.Join(filepath.Dir(sock), "cookie")
		if err := os.WriteFile(file, []byte(cookie), 0o600); err != nil {
			return nil, fmt.Errorf("write session cookie file: %w", err)
		}
		return HTTPSCommand(HTTPSOptions{URL: flat, CookieFile: file, TLS: h.Client.tls, Socket: sock})
	})
	if err != nil {
		return nil, wrap(err)
	}
	h.Log.Debug().Int32("disk_key", req.Disk.Key).Str("url", flat.Redacted()).Int("pid", src.PID()).Msg("https source started")
	return src, nil
}

// httpsRequestTimeout bounds one HTTP request of nbdkit's curl plugin (one
// NBD read).
const httpsRequestTimeout = 5 * time.Minute

// HTTPSOptions configures nbdkit's curl plugin for one datastore file.
type HTTPSOptions struct {
	URL        *url.URL // the flat file's /folder URL; required
	CookieFile string   // absolute path of the file holding the Cookie header; required
	TLS        TLS      // cainfo= or sslverify=false
	Socket     string   // unix socket to serve on; required
}

// HTTPSCommand builds the nbdkit command line (argv, starting with
// "nbdkit") that serves one datastore file read-only through the curl
// plugin. The cookie is only named (cookie=+FILE).
func HTTPSCommand(o HTTPSOptions) ([]string, error) {
	bad := func(format string, a ...any) ([]string, error) {
		return nil, fmt.Errorf("build https command: %w: %s", ErrInvalidOptions, fmt.Sprintf(format, a...))
	}
	switch {
	case o.URL == nil || o.URL.Host == "":
		return bad("url is required")
	case o.URL.Scheme != "https" && o.URL.Scheme != "http":
		return bad("url scheme %q is not https", o.URL.Scheme)
	case o.URL.User != nil:
		return bad("url must not carry credentials")
	case o.Socket == "":
		return bad("socket is required")
	case !filepath.IsAbs(o.CookieFile):
		return bad("cookie file %q must be an absolute path", o.CookieFile)
	case o.TLS.CAFile != "" && !filepath.IsAbs(o.TLS.CAFile):
		return bad("ca file %q must be an absolute path", o.TLS.CAFile)
	}
	for _, v := range []string{o.URL.String(), o.CookieFile, o.TLS.CAFile, o.Socket} {
		if strings.ContainsAny(v, "\x00\n\r") {
			return bad("option values must not contain NUL or newlines")
		}
	}
	// A read that hangs (vCenter gone mid-copy) fails after
	// httpsRequestTimeout instead of stalling the copy for ever.
	argv := append(baseArgs(o.Socket), "curl", "url="+o.URL.String(), "cookie=+"+o.CookieFile, "protocols="+o.URL.Scheme,
		"tcp-keepalive=true", "timeout="+strconv.Itoa(int(httpsRequestTimeout/time.Second)))
	switch {
	case o.TLS.Insecure:
		argv = append(argv, "sslverify=false")
	case o.TLS.CAFile != "":
		argv = append(argv, "cainfo="+o.TLS.CAFile)
	}
	return argv, nil
}

// FlatFileURL returns the /folder URL of the flat file that holds disk
// (from SnapshotDisks) of vm: it reads the descriptor its backing names
// and checks that the flat extent is the disk's size.
func (c *Client) FlatFileURL(ctx context.Context, vm types.ManagedObjectReference, disk Disk) (*url.URL, error) {
	ctx, cancel := withDefaultTimeout(ctx, DefaultCallTimeout)
	defer cancel()
	var p object.DatastorePath
	if !p.FromString(disk.FileName) || p.Datastore == "" || p.Path == "" {
		return nil, fmt.Errorf("read disk %d: %w: backing %q is not a datastore path", disk.Key, ErrUnsupportedDisk, disk.FileName)
	}
	if disk.Backing != "" && disk.Backing != BackingFlat {
		return nil, fmt.Errorf("read disk %d over https: %w: %s backing %s", disk.Key, ErrUnsupportedDisk, disk.Backing, disk.FileName)
	}
	dc, err := c.datacenterPath(ctx, vm)
	if err != nil {
		return nil, err
	}
	descURL := c.folderURL(dc, p.Datastore, p.Path)
	data, err := c.getSmall(ctx, descURL, MaxDescriptorSize)
	if err != nil {
		return nil, fmt.Errorf("read descriptor %s of disk %d: %w", disk.FileName, disk.Key, err)
	}
	d, err := ParseDescriptor(data)
	if err != nil {
		return nil, fmt.Errorf("descriptor %s of disk %d: %w", disk.FileName, disk.Key, err)
	}
	e, err := d.FlatExtent()
	if err != nil {
		return nil, fmt.Errorf("descriptor %s of disk %d: %w", disk.FileName, disk.Key, err)
	}
	if disk.CapacityBytes > 0 && e.Sectors*512 != disk.CapacityBytes {
		return nil, fmt.Errorf("descriptor %s of disk %d: %w: extent %q holds %d bytes, the disk %d", disk.FileName, disk.Key, ErrBadDescriptor, e.File, e.Sectors*512, disk.CapacityBytes)
	}
	return c.folderURL(dc, p.Datastore, path.Join(path.Dir(p.Path), e.File)), nil
}

// folderURL is vCenter's URL of a datastore file.
func (c *Client) folderURL(dcPath, ds, file string) *url.URL {
	u := c.gc.Client.URL()
	return &url.URL{
		Scheme:   u.Scheme,
		Host:     u.Host,
		Path:     "/folder/" + file,
		RawQuery: url.Values{"dcPath": {dcPath}, "dsName": {ds}}.Encode(),
	}
}

// getSmall GETs u with the session cookie and returns at most limit bytes;
// a longer body is returned cut at limit+1 bytes so the caller sees it is
// too long. A status other than 200 wraps ErrDatastoreAccess.
func (c *Client) getSmall(ctx context.Context, u *url.URL, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	// The embedded http.Client: its jar holds the session cookie and its
	// transport the TLS settings of the SOAP connection.
	res, err := c.gc.Client.Client.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 4096))
		err := fmt.Errorf("%w: GET %s: %s", ErrDatastoreAccess, u.Path, res.Status)
		if res.StatusCode >= 500 {
			err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(res.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: GET %s: %w", ErrUnavailable, u.Path, err)
	}
	return data, nil
}

// sessionCookie is the Cookie header that carries this session
// ("vmware_soap_session=…").
func (c *Client) sessionCookie() (string, error) {
	sc := c.gc.Client.Client
	u := sc.URL()
	for _, p := range []string{u.Path, "/"} {
		u.Path = p
		for _, ck := range sc.Jar.Cookies(u) {
			if ck.Name == soap.SessionCookieName {
				return (&http.Cookie{Name: ck.Name, Value: ck.Value, Quoted: ck.Quoted}).String(), nil
			}
		}
	}
	return "", fmt.Errorf("read session cookie of vcenter %s: %w: no %s cookie (not logged in?)", c.host, ErrInvalidOptions, soap.SessionCookieName)
}

// datacenterPath is the inventory path of vm's datacenter below the root
// folder ("DC0", "folder/DC0"): the dcPath of /folder URLs.
func (c *Client) datacenterPath(ctx context.Context, vm types.ManagedObjectReference) (string, error) {
	var names []string
	inDC := false
	for ref := vm; ; {
		var me mo.ManagedEntity
		if err := c.gc.RetrieveOne(ctx, ref, []string{"name", "parent"}, &me); err != nil {
			if isNotFound(err) {
				return "", fmt.Errorf("find datacenter of vm %s: %w", vm.Value, ErrVMNotFound)
			}
			return "", fmt.Errorf("find datacenter of vm %s: %w", vm.Value, classify(err))
		}
		if ref.Type == "Datacenter" {
			inDC = true
		}
		if me.Parent == nil {
			break // the root folder: not part of the path
		}
		if inDC {
			names = append([]string{me.Name}, names...)
		}
		ref = *me.Parent
	}
	if !inDC {
		return "", fmt.Errorf("find datacenter of vm %s: %w: not inside a datacenter", vm.Value, errors.ErrUnsupported)
	}
	return strings.Join(names, "/"), nil
}
