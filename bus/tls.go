package bus

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// The files of a TLS directory (DATA/tls): the CA that signs every NATS
// server's certificate, and this host's server certificate.
const (
	TLSCAFile      = "ca.pem"
	TLSCAKeyFile   = "ca-key.pem"
	TLSCertFile    = "server.pem"
	TLSCertKeyFile = "server-key.pem"
)

// Certificate lifetimes. The CA lives long: every client trusts it and
// replacing it means copying it to every host again. A server certificate
// is reissued from the CA when it ends within certRenewBefore.
const (
	caValidity      = 20 * 365 * 24 * time.Hour
	certValidity    = 5 * 365 * 24 * time.Hour
	certRenewBefore = 30 * 24 * time.Hour
)

// TLSFiles are the PEM files of a NATS server with TLS: its certificate
// and key, and the CA that signs the certificates of every server of the
// cluster (clients and routes verify against it).
type TLSFiles struct {
	CA, Cert, Key string
}

// TLSDir is a directory holding a CA (ca.pem, ca-key.pem) and a server
// certificate signed by it (server.pem, server-key.pem); keys are 0600
// in a directory of mode 0700. `sendense serve` keeps one under DATA/tls
// and makes it at the first start that listens off loopback.
type TLSDir struct {
	Dir string
}

// CAFile is the CA certificate clients are given (--nats-ca).
func (d TLSDir) CAFile() string { return filepath.Join(d.Dir, TLSCAFile) }

// Files returns the directory's server files (they may not exist).
func (d TLSDir) Files() TLSFiles {
	return TLSFiles{CA: d.CAFile(), Cert: filepath.Join(d.Dir, TLSCertFile), Key: filepath.Join(d.Dir, TLSCertKeyFile)}
}

// EnsureCA makes the CA (an ECDSA P-256 key and a self-signed
// certificate valid for 20 years) unless the directory has one, and
// returns its certificate file. A CA certificate without its key is an
// error: nothing could be signed with it, and replacing it would break
// every host that trusts it.
func (d TLSDir) EnsureCA() (string, error) {
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return "", fmt.Errorf("create tls directory %s: %w", d.Dir, err)
	}
	certPath, keyPath := d.CAFile(), filepath.Join(d.Dir, TLSCAKeyFile)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		return certPath, nil
	case certErr == nil || keyErr == nil:
		return "", fmt.Errorf("tls directory %s: %s and %s must both exist or both be absent: %w", d.Dir, TLSCAFile, TLSCAKeyFile, ErrTLSFiles)
	case !errors.Is(certErr, fs.ErrNotExist):
		return "", fmt.Errorf("tls directory %s: %w", d.Dir, certErr)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", fmt.Errorf("generate ca key in %s: %w", d.Dir, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"Sendense"}, CommonName: "Sendense NATS CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", fmt.Errorf("create ca certificate in %s: %w", d.Dir, err)
	}
	// The key first: a crash in between leaves a key without a
	// certificate, which the next start reports instead of silently
	// replacing a CA that hosts may already trust.
	if err := writeKey(keyPath, key); err != nil {
		return "", fmt.Errorf("write ca key: %w", err)
	}
	if err := writePEMFile(certPath, "CERTIFICATE", der, 0o644); err != nil {
		return "", fmt.Errorf("write ca certificate: %w", err)
	}
	return certPath, nil
}

// EnsureServer makes the CA when missing and this directory's server
// certificate, valid for hosts plus localhost and 127.0.0.1, and returns
// the server's files. An existing certificate is kept when the CA signed
// it, it names every host and it is valid for more than 30 days; else a
// new one is issued from the CA (a server asked to advertise a new name
// gets it at its next start).
func (d TLSDir) EnsureServer(hosts []string) (TLSFiles, error) {
	files := d.Files()
	names := serverNames(hosts)
	if _, err := os.Stat(d.CAFile()); err != nil || !fileExists(files.Cert) || !fileExists(files.Key) {
		if _, err := d.EnsureCA(); err != nil {
			return TLSFiles{}, err
		}
	} else if ok, err := certCovers(files, names); err != nil {
		return TLSFiles{}, err
	} else if ok {
		return files, nil
	}
	if err := d.issue(files.Cert, files.Key, names); err != nil {
		return TLSFiles{}, err
	}
	return files, nil
}

// IssueServer issues a server certificate for another host from this
// directory's CA (made when missing), valid for hosts plus localhost and
// 127.0.0.1, and writes it to outDir as server.pem and server-key.pem
// with a copy of ca.pem: the files of an external nats-server, so that
// every server of a cluster and every client trusts one CA. Existing
// files in outDir are replaced.
func (d TLSDir) IssueServer(outDir string, hosts []string) (TLSFiles, error) {
	if filepath.Clean(outDir) == filepath.Clean(d.Dir) {
		return TLSFiles{}, fmt.Errorf("issue server certificate: %s holds the CA; write another host's files elsewhere: %w", outDir, ErrTLSFiles)
	}
	if len(hosts) == 0 {
		return TLSFiles{}, fmt.Errorf("issue server certificate into %s: give the host names or addresses clients and routes reach it by: %w", outDir, ErrTLSFiles)
	}
	caPath, err := d.EnsureCA()
	if err != nil {
		return TLSFiles{}, err
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return TLSFiles{}, fmt.Errorf("create %s: %w", outDir, err)
	}
	out := TLSFiles{CA: filepath.Join(outDir, TLSCAFile), Cert: filepath.Join(outDir, TLSCertFile), Key: filepath.Join(outDir, TLSCertKeyFile)}
	if err := d.issue(out.Cert, out.Key, serverNames(hosts)); err != nil {
		return TLSFiles{}, err
	}
	ca, err := os.ReadFile(caPath)
	if err != nil {
		return TLSFiles{}, fmt.Errorf("read ca certificate: %w", err)
	}
	if err := writeFileAtomic(out.CA, ca, 0o644); err != nil {
		return TLSFiles{}, fmt.Errorf("copy ca certificate to %s: %w", out.CA, err)
	}
	return out, nil
}

// issue writes a new server key and certificate signed by the CA, valid
// for names (DNS names and IP addresses), for server and client use (a
// route's TLS is mutual).
func (d TLSDir) issue(certPath, keyPath string, names []string) error {
	caCert, caKey, err := d.loadCA()
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate server key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{Organization: []string{"Sendense"}, CommonName: names[0]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("sign server certificate for %v: %w", names, err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return fmt.Errorf("write server key: %w", err)
	}
	if err := writePEMFile(certPath, "CERTIFICATE", der, 0o644); err != nil {
		return fmt.Errorf("write server certificate: %w", err)
	}
	return nil
}

func (d TLSDir) loadCA() (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.LoadX509KeyPair(d.CAFile(), filepath.Join(d.Dir, TLSCAKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("load ca of %s: %w", d.Dir, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("load ca of %s: key is not ecdsa: %w", d.Dir, ErrTLSFiles)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("load ca of %s: %w", d.Dir, err)
	}
	return cert, key, nil
}

// certCovers reports whether files' certificate is signed by its CA, names
// every one of names and stays valid for more than certRenewBefore. A
// certificate that does not match its key is an error.
func certCovers(files TLSFiles, names []string) (bool, error) {
	pair, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		return false, fmt.Errorf("load server certificate %s: %w", files.Cert, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return false, fmt.Errorf("parse server certificate %s: %w", files.Cert, err)
	}
	pool, err := loadPool(files.CA)
	if err != nil {
		return false, err
	}
	if time.Until(cert.NotAfter) < certRenewBefore {
		return false, nil
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return false, nil
	}
	for _, n := range names {
		if cert.VerifyHostname(n) != nil {
			return false, nil
		}
	}
	return true, nil
}

// serverNames are the names a server certificate holds: hosts (empty and
// unspecified addresses left out, this machine's host name instead of
// the latter) plus localhost and 127.0.0.1, without duplicates.
func serverNames(hosts []string) []string {
	var names []string
	add := func(n string) {
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
			if hn, err := os.Hostname(); err == nil {
				add(hn)
			}
			continue
		}
		add(h)
	}
	add("localhost")
	add("127.0.0.1")
	return names
}

// loadPool reads a PEM file of CA certificates.
func loadPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read ca %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("ca %s holds no pem certificate: %w", path, ErrTLSFiles)
	}
	return pool, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEMFile(path, "PRIVATE KEY", der, 0o600)
}

func writePEMFile(path, typ string, der []byte, mode os.FileMode) error {
	var b bytes.Buffer
	if err := pem.Encode(&b, &pem.Block{Type: typ, Bytes: der}); err != nil {
		return err
	}
	return writeFileAtomic(path, b.Bytes(), mode)
}

// writeFileAtomic writes data to path with mode through a synced
// temporary file and a rename, so a reader never sees half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	return writeSynced(path, data, mode, os.Rename)
}

// writeSynced writes data with mode to a temporary file beside path,
// syncs it, and hands it to publish (os.Rename replaces path, os.Link
// never does); the temporary name is removed either way.
func writeSynced(path string, data []byte, mode os.FileMode, publish func(tmp, path string) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return publish(tmp, path)
}

// serverTLSConfig is the TLS configuration of a server's client port:
// its certificate, no client certificates (clients authenticate with
// their nkeys), TLS 1.2 at least.
func serverTLSConfig(files TLSFiles) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		return nil, fmt.Errorf("load server certificate %s: %w", files.Cert, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// routeTLSConfig is the TLS configuration of a cluster's routes: mutual,
// each server verifying the other's certificate against the CA.
func routeTLSConfig(files TLSFiles) (*tls.Config, error) {
	c, err := serverTLSConfig(files)
	if err != nil {
		return nil, err
	}
	pool, err := loadPool(files.CA)
	if err != nil {
		return nil, err
	}
	c.RootCAs, c.ClientCAs, c.ClientAuth = pool, pool, tls.RequireAndVerifyClientCert
	return c, nil
}
