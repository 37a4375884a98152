package testbed

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// The datastore as vSphere's /folder interface shows it
//
// vCenter serves datastore files at
// /folder/<path>?dcPath=<datacenter>&dsName=<datastore> to a client with a
// valid session cookie (vmware_soap_session), with Range reads. A
// snapshot's disk backing names a descriptor ("[ds] vm/vm.vmdk"), a small
// text file whose extent line names the flat file that holds the bytes.
//
// The testbed shows each frozen image that way: freeze names the frozen
// layer of disk d at the n-th freeze "<base>-00000n.vmdk" next to the
// disk's original descriptor, stamps that name on the disk's backing (so
// the snapshot, which copies the backing, names it), and publishes two
// datastore files: the descriptor (made in memory) and
// "<base>-00000n-flat.vmdk", which is the frozen image itself, served from
// its file (no copy: O(1) per snapshot). Every other /folder path is the
// simulator's own datastore directory. Every /folder request, any method,
// needs a session cookie the simulated vCenter knows.

// folderPrefix is where vCenter serves datastore files.
const folderPrefix = "/folder/"

// sessionCacheTTL is how long a session cookie that was found active is
// trusted without asking the session manager again. nbdkit's curl plugin
// sends one HTTP request per NBD read: without the cache each would cost a
// SOAP call.
const sessionCacheTTL = 2 * time.Second

// dsFile is one datastore file the testbed publishes: a descriptor held in
// memory, or a frozen image served from its file.
type dsFile struct {
	descriptor []byte
	image      string
	modTime    time.Time
}

// sessions remembers the session cookies recently found active.
type sessions struct {
	mu   sync.Mutex
	seen map[string]time.Time // cookie → when it was found active
}

// frozenLayer returns the datastore path of the n-th frozen layer of a disk
// whose original backing is fileName ("[ds] vm/vm.vmdk" → "[ds]
// vm/vm-00000n.vmdk"), as vSphere names its delta disks.
func frozenLayer(fileName string, n int) (object.DatastorePath, bool) {
	var p object.DatastorePath
	if !p.FromString(fileName) || !strings.HasSuffix(p.Path, ".vmdk") {
		return p, false
	}
	p.Path = fmt.Sprintf("%s-%06d.vmdk", strings.TrimSuffix(p.Path, ".vmdk"), n)
	return p, true
}

// flatName is the flat extent file of descriptor name ("x.vmdk" → "x-flat.vmdk").
func flatName(name string) string { return strings.TrimSuffix(name, ".vmdk") + "-flat.vmdk" }

// descriptorFor writes a monolithic-flat vmfs descriptor of capacity bytes
// whose one extent is flat (a file name in the descriptor's directory), as
// ESXi writes them.
func descriptorFor(flat string, capacity int64, uuid string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\n")
	fmt.Fprintf(&b, "# Extent description\nRW %d VMFS \"%s\"\n\n", capacity/512, flat)
	fmt.Fprintf(&b, "# The Disk Data Base\n#DDB\n\nddb.adapterType = \"pvscsi\"\nddb.thinProvisioned = \"1\"\nddb.uuid = \"%s\"\nddb.virtualHWVersion = \"19\"\n", uuid)
	return b.Bytes()
}

// publishLayer makes the frozen image at imagePath readable over /folder
// as the descriptor layer (and its flat file). The descriptor is also
// written to the simulator's datastore directory, where its disk
// operations (a ReconfigVM that grows the disk) look for it. Caller holds
// tb.mu.
func (tb *Testbed) publishLayer(layer object.DatastorePath, imagePath string, capacity int64, uuid string) error {
	now := time.Now()
	flat := flatName(path.Base(layer.Path))
	desc := descriptorFor(flat, capacity, uuid)
	dir, ok := tb.dsDirs[layer.Datastore]
	if !ok {
		return fmt.Errorf("publish %s: unknown datastore %q", layer, layer.Datastore)
	}
	if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(layer.Path)), desc, 0o644); err != nil {
		return fmt.Errorf("publish %s: %w", layer, err)
	}
	tb.dsFiles[layer.Datastore+"/"+layer.Path] = dsFile{descriptor: desc, modTime: now}
	tb.dsFiles[layer.Datastore+"/"+path.Join(path.Dir(layer.Path), flat)] = dsFile{image: imagePath, modTime: now}
	return nil
}

// findDatastores learns the directory of every datastore.
func (tb *Testbed) findDatastores(ctx context.Context) error {
	m := view.NewManager(tb.client.Client)
	v, err := m.CreateContainerView(ctx, tb.client.ServiceContent.RootFolder, []string{"Datastore"}, true)
	if err != nil {
		return fmt.Errorf("list datastores: %w", err)
	}
	defer func() { _ = v.Destroy(context.Background()) }()
	var dss []mo.Datastore
	if err := v.Retrieve(ctx, []string{"Datastore"}, []string{"summary"}, &dss); err != nil {
		return fmt.Errorf("list datastores: %w", err)
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.dsDirs = map[string]string{}
	for _, ds := range dss {
		tb.dsDirs[ds.Summary.Name] = ds.Summary.Url
	}
	return nil
}

// folderHandler wraps the simulator's HTTP handler: /folder requests need
// an active session cookie, and GET/HEAD of a published layer is served
// here; everything else goes on to the simulator.
func (tb *Testbed) folderHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, folderPrefix) {
			next.ServeHTTP(w, r)
			return
		}
		c, err := r.Cookie(soap.SessionCookieName)
		if err != nil || !tb.sessionActive(r.Context(), c.Value) {
			tb.log.Warn().Str("path", r.URL.Path).Str("remote", r.RemoteAddr).Msg("datastore request without a valid session refused")
			w.Header().Set("WWW-Authenticate", `Basic realm="VMware HTTP server"`)
			http.Error(w, "401 Unauthorized: a valid vmware_soap_session cookie is required", http.StatusUnauthorized)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			next.ServeHTTP(w, r)
			return
		}
		ds := r.URL.Query().Get("dsName")
		rel := strings.TrimPrefix(r.URL.Path, folderPrefix)
		tb.mu.Lock()
		f, ok := tb.dsFiles[ds+"/"+rel]
		tb.mu.Unlock()
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		if f.image == "" {
			http.ServeContent(w, r, path.Base(rel), f.modTime, bytes.NewReader(f.descriptor))
			return
		}
		img, err := os.Open(f.image)
		if err != nil {
			tb.log.Error().Err(err).Str("image", f.image).Msg("open frozen image for /folder")
			http.Error(w, "500 cannot open the file", http.StatusInternalServerError)
			return
		}
		defer img.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, path.Base(rel), f.modTime, img)
	})
}

// sessionActive reports whether cookie is the key of a session the
// simulated vCenter has open (asked with SessionIsActive as the testbed's
// own session, cached for sessionCacheTTL). Only the testbed's user can
// log in, so that is the user name asked for.
func (tb *Testbed) sessionActive(ctx context.Context, cookie string) bool {
	if cookie == "" {
		return false
	}
	now := time.Now()
	tb.sess.mu.Lock()
	at, ok := tb.sess.seen[cookie]
	tb.sess.mu.Unlock()
	if ok && now.Sub(at) < sessionCacheTTL {
		return true
	}
	tb.mu.Lock()
	c := tb.client
	tb.mu.Unlock()
	if c == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := methods.SessionIsActive(ctx, c.Client, &types.SessionIsActive{
		This: *c.Client.ServiceContent.SessionManager, SessionID: cookie, UserName: tb.opts.User,
	})
	if err != nil {
		tb.log.Warn().Err(err).Msg("ask whether a datastore request's session is active")
		return false
	}
	if !res.Returnval {
		return false
	}
	tb.sess.mu.Lock()
	if tb.sess.seen == nil {
		tb.sess.seen = map[string]time.Time{}
	}
	for k, t := range tb.sess.seen { // keep the map small
		if now.Sub(t) >= sessionCacheTTL {
			delete(tb.sess.seen, k)
		}
	}
	tb.sess.seen[cookie] = now
	tb.sess.mu.Unlock()
	return true
}

// serverCertificate makes a self-signed certificate for the SDK server,
// valid for the listen host, localhost and the loopback addresses, plus
// every address of this machine when the listen host is unspecified
// (0.0.0.0 or ::), and extra (names or addresses).
func serverCertificate(listen string, extra []string) (tls.Certificate, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("listen address %q: %w", listen, err)
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "sendense simulated vcenter", Organization: []string{"sendense testbed"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // self-signed: the certificate is its own CA (--vcenter-ca)
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	add := func(h string) {
		if h == "" {
			return
		}
		if ip := net.ParseIP(h); ip != nil {
			if ip.IsUnspecified() {
				addrs, _ := net.InterfaceAddrs()
				for _, a := range addrs {
					if n, ok := a.(*net.IPNet); ok {
						tmpl.IPAddresses = append(tmpl.IPAddresses, n.IP)
					}
				}
				return
			}
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			return
		}
		tmpl.DNSNames = append(tmpl.DNSNames, h)
	}
	add(host)
	for _, h := range extra {
		add(h)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl.SerialNumber = serial
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("make sdk certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// CertificatePEM is the SDK server's certificate in PEM: the file a client
// trusts it with (--vcenter-ca).
func (tb *Testbed) CertificatePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tb.Certificate().Raw})
}
