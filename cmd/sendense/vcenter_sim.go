package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	stdlog "log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/sendense/sendense/agents/simctl"
	"github.com/sendense/sendense/agents/system"
	"github.com/sendense/sendense/bus"
	"github.com/sendense/sendense/testbed"
)

func init() { extraCommands = append(extraCommands, newVCenterSimCmd) }

// vcenterSimCmd runs the simulated vCenter as a process of its own.
type vcenterSimCmd struct {
	listen       string
	inventory    string
	tlsHosts     []string
	tlsCert      string
	tlsKey       string
	startup      time.Duration
	user         string
	passwordFile string
}

func newVCenterSimCmd(a *app) *cobra.Command {
	c := &vcenterSimCmd{}
	cmd := &cobra.Command{
		Use:   "vcenter-sim",
		Short: "Run a simulated vCenter (SDK, /folder datastore access, CBT) and its control service sendense.testbed",
		Long: `Run a simulated vCenter with CBT as a process of its own until SIGINT or
SIGTERM, for agents on other hosts: its SDK listens on --listen over HTTPS
with a self-signed certificate written to DATA/vcenter/sdk.pem (give it to
agents with --vcenter-ca), or with --tls-cert and --tls-key (agents then
trust the CA that issued them), and serves each snapshot's frozen disk through
vCenter's /folder interface to logged-in sessions (the agents' https
transport). The VMs of --inventory have their images under DATA/vcenter,
with the simulator's state (VMs, CBT epochs and sequences, snapshots,
frozen layers) in DATA/vcenter/testbed-state.json: a restart on the same
data dir, after a clean stop or a kill -9, comes back with the same VMs,
change ids and snapshots, and creates only the --inventory VMs it lacks.

The control service (sendense.testbed: guest writes, CBT resets, frozen
images) connects to --nats-url as the testbed identity, with
DATA/creds/testbed.nk (sendense creds init makes it) unless --nats-nkey or
--nats-creds say otherwise.

It accepts one user: --user with the password in --password-file, or
when none is given the testbed's default password, written to
DATA/vcenter/password. When ready it prints sdk_url=, user=,
password_file= and ca_file= lines on stdout.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return c.run(cmd.Context(), a) },
	}
	fs := cmd.Flags()
	fs.StringVar(&c.listen, "listen", "127.0.0.1:8989", "SDK address, HOST:PORT (0.0.0.0 for every address)")
	fs.StringVar(&c.inventory, "inventory", "sample", "simulated VMs at the first start on a data dir: "+system.InventorySyntax+" (later starts restore the state kept under DATA/vcenter)")
	fs.StringSliceVar(&c.tlsHosts, "tls-host", nil, "another name or address the SDK certificate is valid for (repeatable); the --listen host, localhost and loopback always are")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "PEM certificate for the SDK, say one `sendense creds tls` issued (default: a self-signed one); with --tls-key")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM key of --tls-cert")
	fs.DurationVar(&c.startup, "startup-timeout", system.DefaultStartupTimeout, "how long to wait at start for NATS before giving up")
	fs.StringVar(&c.user, "user", testbed.DefaultUser, "the user the simulated vCenter accepts")
	fs.StringVar(&c.passwordFile, "password-file", "", "file holding the password it accepts (default: the testbed's, written to DATA/vcenter/password)")
	return cmd
}

func (c *vcenterSimCmd) run(ctx context.Context, a *app) error {
	vms, err := system.Inventory(c.inventory)
	if err != nil {
		return err
	}
	dir := filepath.Join(a.dataDir, "vcenter")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	password := testbed.DefaultPassword
	pwFile := c.passwordFile
	if pwFile != "" {
		b, err := os.ReadFile(pwFile)
		if err != nil {
			return fmt.Errorf("read --password-file: %w", err)
		}
		if password = strings.TrimRight(string(b), "\r\n"); password == "" {
			return fmt.Errorf("--password-file %s is empty", pwFile)
		}
	} else {
		pwFile = filepath.Join(dir, "password")
		if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", pwFile, err)
		}
	}
	var cert *tls.Certificate
	switch {
	case (c.tlsCert == "") != (c.tlsKey == ""):
		return fmt.Errorf("--tls-cert and --tls-key go together")
	case c.tlsCert != "":
		kp, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			return fmt.Errorf("load --tls-cert %s and --tls-key %s: %w", c.tlsCert, c.tlsKey, err)
		}
		cert = &kp
	}
	if a.log.GetLevel() > zerolog.DebugLevel { // vcsim's own faults are expected, not news
		stdlog.SetOutput(io.Discard)
	}

	// NATS first: a sim that cannot be controlled is no use to a test. Like
	// every role it waits for the cluster, until --startup-timeout.
	sctx, cancel := context.WithTimeoutCause(ctx, c.startup, fmt.Errorf("start-up timeout (%s) reached", c.startup))
	var nc *nats.Conn
	err = bus.Await(sctx, "nats "+strings.Join(a.nats.urls, ",")+" as testbed", func(ctx context.Context) (err error) {
		nc, err = a.connectDaemon(ctx, bus.RoleTestbed)
		return err
	}, bus.AwaitOptions{Log: a.log})
	cancel()
	if err != nil {
		return err
	}
	defer func() { _ = nc.Drain() }()

	tb, err := testbed.New(ctx, testbed.Options{
		Dir: dir, VMs: vms, KeepImages: true, Listen: c.listen, TLSHosts: c.tlsHosts, Certificate: cert,
		User: c.user, Password: password, Log: a.log,
	})
	if err != nil {
		return fmt.Errorf("start simulated vcenter: %w", err)
	}
	defer tb.Close()
	caFile := filepath.Join(dir, "sdk.pem")
	if err := os.WriteFile(caFile, tb.CertificatePEM(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", caFile, err)
	}
	svc, err := simctl.Serve(nc, tb, a.log, system.Inventory)
	if err != nil {
		return err
	}
	defer func() { _ = svc.Stop() }()

	u := tb.URL()
	u.User = nil
	if abs, err := filepath.Abs(pwFile); err == nil {
		pwFile = abs
	}
	if abs, err := filepath.Abs(caFile); err == nil {
		caFile = abs
	}
	a.log.Info().Str("sdk_url", u.String()).Str("user", c.user).Str("password_file", pwFile).Str("ca_file", caFile).
		Str("nats_url", nc.ConnectedUrlRedacted()).Int("vms", len(vms)).Msg("simulated vcenter ready")
	fmt.Fprintf(a.stdout, "sdk_url=%s\nuser=%s\npassword_file=%s\nca_file=%s\n", u, c.user, pwFile, caFile)
	<-ctx.Done()
	a.log.Info().Msg("stopping")
	return nil
}
