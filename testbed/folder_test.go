package testbed_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"testing"

	"github.com/sendense/sendense/testbed"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// folderURL is vSphere's /folder URL of a datastore path "[ds] dir/file".
func folderURL(t *testing.T, tb *testbed.Testbed, dsPath string) string {
	t.Helper()
	var p object.DatastorePath
	if !p.FromString(dsPath) {
		t.Fatalf("not a datastore path: %q", dsPath)
	}
	u := tb.URL()
	u.User = nil
	u.Path = "/folder/" + p.Path
	u.RawQuery = url.Values{"dcPath": {"DC0"}, "dsName": {p.Datastore}}.Encode()
	return u.String()
}

// httpsClient trusts the testbed's certificate (CertificatePEM) and nothing else.
func httpsClient(t *testing.T, tb *testbed.Testbed) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(tb.CertificatePEM()) {
		t.Fatal("CertificatePEM is not a PEM certificate")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func get(t *testing.T, hc *http.Client, u, cookie, rng string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cookie != "" {
		req.AddCookie(&http.Cookie{Name: soap.SessionCookieName, Value: cookie})
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	res, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, body
}

func snapshotDiskFile(t *testing.T, c *govmomi.Client, snap types.ManagedObjectReference, key int32) string {
	t.Helper()
	var s mo.VirtualMachineSnapshot
	if err := c.RetrieveOne(testCtx(t), snap, []string{"config.hardware.device"}, &s); err != nil {
		t.Fatal(err)
	}
	for _, d := range s.Config.Hardware.Device {
		if vd, ok := d.(*types.VirtualDisk); ok && vd.Key == key {
			return vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo).FileName
		}
	}
	t.Fatalf("snapshot %s has no disk %d", snap.Value, key)
	return ""
}

// TestFolderServesFrozenLayers: a snapshot's disk names a descriptor that
// vCenter's /folder interface serves, whose one flat extent is the frozen
// image of that snapshot (whole and by Range), for a client with a
// session cookie; each snapshot names its own layer. Without a valid
// cookie every /folder request is refused, as vSphere refuses it.
func TestFolderServesFrozenLayers(t *testing.T) {
	tb, c := start(t, testbed.Options{VMs: []testbed.VMSpec{oneVM("vm1",
		testbed.DiskSpec{CapacityBytes: 4 * mib, FillBytes: mib}, testbed.DiskSpec{CapacityBytes: 2 * mib, FillBytes: mib})}})
	ref := vmRef(t, tb, "vm1")
	s1 := snapshot(t, c, ref, "s1")
	if err := tb.Write("vm1", 2000, 0, bytes.Repeat([]byte{0xab}, 4096)); err != nil {
		t.Fatal(err)
	}
	s2 := snapshot(t, c, ref, "s2")
	hc := httpsClient(t, tb)
	cookie := c.Client.Client.SessionCookie().Value

	seen := map[string]bool{}
	for _, snap := range []types.ManagedObjectReference{s1, s2} {
		for _, key := range []int32{2000, 2001} {
			file := snapshotDiskFile(t, c, snap, key)
			if seen[file] {
				t.Errorf("disk %d of snapshot %s names %s, which another snapshot named", key, snap.Value, file)
			}
			seen[file] = true
			frozen, err := tb.SnapshotImage(snap, key)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(frozen)
			if err != nil {
				t.Fatal(err)
			}
			code, desc := get(t, hc, folderURL(t, tb, file), cookie, "")
			if code != http.StatusOK {
				t.Fatalf("GET descriptor %s: %d %s", file, code, desc)
			}
			var flat string
			for _, line := range strings.Split(string(desc), "\n") {
				if strings.HasPrefix(line, "RW ") {
					var sectors int64
					if _, err := fmt.Sscanf(line, "RW %d VMFS %q", &sectors, &flat); err != nil || sectors*512 != int64(len(want)) {
						t.Errorf("extent line %q: %v, want %d sectors", line, err, len(want)/512)
					}
				}
			}
			var p object.DatastorePath
			p.FromString(file)
			p.Path = path.Join(path.Dir(p.Path), flat)
			code, got := get(t, hc, folderURL(t, tb, p.String()), cookie, "")
			if code != http.StatusOK || sha256.Sum256(got) != sha256.Sum256(want) {
				t.Errorf("GET %s: %d, %d bytes, not the frozen image of disk %d at %s (%d bytes)", p, code, len(got), key, snap.Value, len(want))
			}
			code, got = get(t, hc, folderURL(t, tb, p.String()), cookie, "bytes=4000-8191")
			if code != http.StatusPartialContent || !bytes.Equal(got, want[4000:8192]) {
				t.Errorf("Range GET %s: %d, %d bytes, want 206 and bytes [4000, 8192) of the frozen image", p, code, len(got))
			}
			// Refused without a session, or with one vCenter does not know.
			for _, bad := range []string{"", "52a01262-bf93-ccce-d379-8dabb3e55560"} {
				if code, _ := get(t, hc, folderURL(t, tb, p.String()), bad, ""); code != http.StatusUnauthorized {
					t.Errorf("GET %s with cookie %q: %d, want 401", p, bad, code)
				}
			}
		}
	}
	// The simulator's own datastore files are behind the same check.
	if code, _ := get(t, hc, folderURL(t, tb, "[LocalDS_0] vm1/vm1.vmx"), "", ""); code != http.StatusUnauthorized {
		t.Errorf("GET vm1.vmx without a cookie: %d, want 401", code)
	}
	if code, _ := get(t, hc, folderURL(t, tb, "[LocalDS_0] vm1/vm1.vmx"), cookie, ""); code != http.StatusOK {
		t.Errorf("GET vm1.vmx with the session cookie: %d, want 200", code)
	}
}

// TestCertificateHosts: the SDK certificate verifies, through
// CertificatePEM as the only trusted CA, for the listen address, the
// loopback names and each Options.TLSHosts entry, and for nothing else.
func TestCertificateHosts(t *testing.T) {
	tb, _ := start(t, testbed.Options{TLSHosts: []string{"vcenter.lab.test", "10.99.0.5"}})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(tb.CertificatePEM())
	cert := tb.Certificate()
	for _, host := range []string{tb.URL().Hostname(), "localhost", "127.0.0.1", "vcenter.lab.test", "10.99.0.5"} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: host, Roots: pool}); err != nil {
			t.Errorf("certificate for %s: %v", host, err)
		}
	}
	for _, host := range []string{"other.lab.test", "10.99.0.6"} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: host, Roots: pool}); err == nil {
			t.Errorf("certificate verifies for %s, which it was not made for", host)
		}
	}
}
