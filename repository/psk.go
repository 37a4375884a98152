package repository

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
)

// PSKIdentity is the TLS-PSK identity (user name) NewPSK gives every key.
const PSKIdentity = "sendense"

// PSKFileName is the name of the key file inside a PSK directory: the name
// qemu's tls-creds-psk object reads (dir=DIR), in GnuTLS's psk file format
// ("identity:hexkey"), which libnbd's psk file takes too.
const PSKFileName = "keys.psk"

// pskBytes is the size of a key NewPSK makes (256 bits).
const pskBytes = 32

var (
	pskIdentityRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	pskKeyRE      = regexp.MustCompile(`^([0-9a-f]{2}){16,64}$`)
)

// PSK is a TLS pre-shared key: an identity and a key in lowercase hex. The
// key is a secret: PSK formats as "identity:<redacted>" with %v, %s and
// %+v, so logging one by mistake does not leak the key. It travels as JSON
// (identity, key) only in the repository service's reply to the requester.
type PSK struct {
	Identity string `json:"identity"`
	Key      string `json:"key"`
}

// NewPSK makes a fresh random 256-bit key with identity PSKIdentity.
func NewPSK() (PSK, error) {
	b := make([]byte, pskBytes)
	if _, err := rand.Read(b); err != nil {
		return PSK{}, fmt.Errorf("make tls psk: %w", err)
	}
	return PSK{Identity: PSKIdentity, Key: hex.EncodeToString(b)}, nil
}

// String redacts the key.
func (p PSK) String() string { return p.Identity + ":<redacted>" }

// GoString redacts the key (%#v).
func (p PSK) GoString() string { return "repository.PSK{" + p.String() + "}" }

// Validate checks the identity ([A-Za-z0-9._-], 1 to 64 characters) and the
// key (16 to 64 bytes in lowercase hex). Errors match ErrInvalidPSK and
// never hold the key.
func (p PSK) Validate() error {
	if !pskIdentityRE.MatchString(p.Identity) {
		return fmt.Errorf("tls psk identity %q: %w", p.Identity, ErrInvalidPSK)
	}
	if !pskKeyRE.MatchString(p.Key) {
		return fmt.Errorf("tls psk key of identity %s (%d characters): not 32 to 128 lowercase hex digits: %w", p.Identity, len(p.Key), ErrInvalidPSK)
	}
	return nil
}

// WriteDir makes a private (0700) directory under parent (default
// os.TempDir()) holding the key in PSKFileName (0600), and returns the
// directory. The caller removes it (os.RemoveAll) once the key is no
// longer needed. It serves both ends: qemu-nbd's and qemu-img's
// tls-creds-psk (dir=DIR), and libnbd (DIR/keys.psk).
func (p PSK) WriteDir(parent string) (string, error) {
	if err := p.Validate(); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(parent, "sdpsk-")
	if err != nil {
		return "", fmt.Errorf("make tls psk directory: %w", err)
	}
	// MkdirTemp makes 0700 and OpenFile's 0600 is narrowed further by the
	// umask only: nobody else can read the key at any time.
	f, err := os.OpenFile(filepath.Join(dir, PSKFileName), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		_, err = f.WriteString(p.Identity + ":" + p.Key + "\n")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("write tls psk file in %s: %w", dir, err)
	}
	return dir, nil
}
