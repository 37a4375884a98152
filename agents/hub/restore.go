package hub

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"github.com/rs/zerolog"

	"github.com/sendense/sendense/agents/hub/repoapi"
	"github.com/sendense/sendense/nbd"
	"github.com/sendense/sendense/repository"
	"github.com/sendense/sendense/vmware"
)

// LocalURI is an NBD URI by which this host's tools (nbdcopy, qemu-img) read the
// restore export by: for a unix socket export, its URI.
// Over TCP with TLS, the unix socket of a local read-only relay (nbdkit's
// nbd plugin, vmware.RelaySource) that reads the export with libnbd and the
// key from a private file, after one handshake that checks the export and
// the key (an error matching nbd.ErrTLS for a wrong key). QEMU 7.2's own
// NBD client stalls on TLS (docs/design.md "Restore over TLS"), and the
// key never appears in any argv. The relay's socket and the
// key file live under sockDir (default os.TempDir()). Call cleanup once
// the reader is done, also after an error: it stops the relay and removes
// the key.
func LocalURI(ctx context.Context, r repoapi.RestoreOpenReply, sockDir string, log zerolog.Logger) (src string, cleanup func(), err error) {
	if r.TLS == nil {
		return r.URI, func() {}, nil
	}
	u, err := url.Parse(r.URI)
	if err != nil || u.Scheme != "nbds" || u.Hostname() == "" || u.Port() == "" {
		return "", nil, fmt.Errorf("restore export %s: uri %q: want nbds://host:port/ with a tls key", r.ExportID, r.URI)
	}
	dir, err := r.TLS.WriteDir(sockDir)
	if err != nil {
		return "", nil, fmt.Errorf("restore export %s: %w", r.ExportID, err)
	}
	pskFile := filepath.Join(dir, repository.PSKFileName)
	// The relay connects only when qemu-img does, and qemu-img would tell a
	// wrong key or a dead export as a failed handshake with the relay: one
	// handshake first says what is wrong.
	probe, err := nbd.Open(ctx, r.URI, nbd.Options{TLS: &nbd.TLS{PSKFile: pskFile, Username: r.TLS.Identity}})
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("restore export %s: connect %s: %w", r.ExportID, r.URI, err)
	}
	probe.Close()
	relay, err := vmware.RelaySource(ctx, r.URI, pskFile, r.TLS.Identity, sockDir, log)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("restore export %s: relay %s: %w", r.ExportID, r.URI, err)
	}
	return relay.URI(), func() {
		_ = relay.Close(context.WithoutCancel(ctx))
		os.RemoveAll(dir)
	}, nil
}
