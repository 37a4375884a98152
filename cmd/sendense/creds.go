package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sendense/sendense/bus"
)

func init() { extraCommands = append(extraCommands, newCredsCmd) }

func newCredsCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "creds",
		Short: "NATS credentials of the roles (DATA/creds): make them, list them, print an external server's configuration",
		Long: `Every process connects to NATS as one role (admin, hub, catalog, agent-NAME,
requester, monitor, testbed), with its own nkey seed under DATA/creds (mode 0600), and
the server lets each role do only what it needs: only agents publish backup
events, each on its own subject; only agents write leases; only admin deletes
streams. sendense serve makes the missing seeds at every start; these
commands are for an external NATS and for agents on other hosts.

Across hosts NATS runs over TLS. DATA/tls holds a CA (ca.pem, ca-key.pem)
that signs every NATS server's certificate: the embedded server makes it
and its own certificate at its first start off loopback, creds tls issues
certificates for external nats-server hosts, and every client verifies the
servers against ca.pem (--nats-ca on other hosts).`,
	}
	cmd.AddCommand(newCredsInitCmd(a), newCredsListCmd(a), newCredsServerConfigCmd(a), newCredsContextCmd(a),
		newCredsTLSCmd(a), newCredsExportCmd(a))
	return cmd
}

func newCredsInitCmd(a *app) *cobra.Command {
	var agents []string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Make the seed of every role, and of each --agent, that DATA/creds lacks; keep existing ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ids := []bus.Identity{}
			for _, r := range bus.Roles() {
				ids = append(ids, bus.Identity{Role: r})
			}
			for _, name := range agents {
				ids = append(ids, bus.AgentIdentity(name))
			}
			if err := a.creds().Ensure(ids...); err != nil {
				return err
			}
			ca, err := a.tlsDir().EnsureCA()
			if err != nil {
				return err
			}
			if err := listCreds(a); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "\nTLS CA: %s (clients on other hosts: --nats-ca; sendense creds export --agent NAME --out DIR puts it next to the agent's seed)\n", ca)
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&agents, "agent", nil, "also make the seed of this agent (repeatable): agent-NAME.nk, to copy to the agent's host")
	return cmd
}

func newCredsListCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the identities in DATA/creds with their public keys and seed files",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return listCreds(a) },
	}
}

func listCreds(a *app) error {
	users, err := a.creds().Users()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IDENTITY\tPUBLIC KEY\tSEED FILE")
	for _, u := range users {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", u.Name(), u.PublicKey, a.creds().File(u.Identity))
	}
	return tw.Flush()
}

func newCredsServerConfigCmd(a *app) *cobra.Command {
	var (
		node   bus.ServerNode
		useTLS bool
		tlsDir string
	)
	cmd := &cobra.Command{
		Use:   "server-config",
		Short: "Print a nats-server configuration that admits DATA/creds' identities with their roles' permissions (with --tls, clients and routes over TLS)",
		Long: `Print a nats-server configuration file for the identities in DATA/creds:
the authorization block an external server or each member of a cluster needs
to enforce the same roles as the embedded server, preceded by the blocks the
flags ask for. For one server:

  sendense creds init --agent node1 > /dev/null
  sendense creds server-config --store-dir /var/lib/nats > nats-server.conf
  nats-server -c nats-server.conf

For each member of a cluster over TLS (its files from sendense creds tls):

  sendense creds tls --host nats1.example --ip 10.0.0.1 --out /etc/nats/tls
  sendense creds server-config --tls --tls-dir /etc/nats/tls --name nats1 \
    --listen 0.0.0.0:4222 --store-dir /var/lib/nats --cluster-listen 0.0.0.0:6222 \
    --routes nats-route://nats1.example:6222,nats-route://nats2.example:6222,nats-route://nats3.example:6222 \
    > nats-server.conf`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			users, err := a.creds().Users()
			if err != nil {
				return err
			}
			if useTLS {
				node.TLS = &bus.TLSFiles{
					CA: filepath.Join(tlsDir, bus.TLSCAFile), Cert: filepath.Join(tlsDir, bus.TLSCertFile), Key: filepath.Join(tlsDir, bus.TLSCertKeyFile),
				}
			}
			if len(node.Routes) > 0 && node.ClusterListen == "" {
				return fmt.Errorf("--routes needs --cluster-listen")
			}
			if node.ClusterListen != "" && node.ClusterName == "" {
				node.ClusterName = "sendense"
			}
			_, err = fmt.Fprint(a.stdout, bus.NodeConfig(users, node))
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVar(&useTLS, "tls", false, "require TLS from clients and on cluster routes, with the files of --tls-dir")
	f.StringVar(&tlsDir, "tls-dir", "/etc/nats/tls", "where the server's server.pem, server-key.pem and ca.pem are (sendense creds tls --out); a relative path is from nats-server's working directory")
	f.StringVar(&node.Name, "name", "", "server_name, unique in the cluster")
	f.StringVar(&node.Listen, "listen", "", "client listen address, host:port (default: the server's, 0.0.0.0:4222)")
	f.StringVar(&node.Advertise, "advertise", "", "client address given to clients of the cluster, host:port (one the certificate names)")
	f.StringVar(&node.ClusterAdvertise, "cluster-advertise", "", "route address given to the other members, host:port")
	f.StringVar(&node.Monitor, "monitor", "", "HTTP monitoring address, host:port (/healthz)")
	f.StringVar(&node.StoreDir, "store-dir", "", "turn on JetStream with its files there, every write synced (relative: from nats-server's working directory)")
	f.StringVar(&node.ClusterName, "cluster-name", "", "cluster name (default sendense with --cluster-listen)")
	f.StringVar(&node.ClusterListen, "cluster-listen", "", "route listen address, host:port")
	f.StringSliceVar(&node.Routes, "routes", nil, "nats-route://host:port of every member, comma-separated")
	return cmd
}

func newCredsTLSCmd(a *app) *cobra.Command {
	var hosts, ips []string
	var out string
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Issue a certificate for an external nats-server host from DATA/tls's CA (made when missing)",
		Long: `Issue a server certificate for an external nats-server host, signed by the CA
in DATA/tls (made when missing), and write server.pem, server-key.pem (0600)
and a copy of ca.pem to --out: every server of a cluster and every client
then trusts one CA. The certificate is valid for --host names and --ip
addresses (the names clients and the other servers dial), localhost and
127.0.0.1. Copy --out to that host and point its nats-server configuration
at it (sendense creds server-config --tls --tls-dir DIR).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("--out is required: the directory to write the host's files to")
			}
			for _, ip := range ips {
				if net.ParseIP(ip) == nil {
					return fmt.Errorf("--ip %q is not an IP address", ip)
				}
			}
			if len(hosts)+len(ips) == 0 {
				return fmt.Errorf("give --host or --ip: the names clients and routes reach the server by")
			}
			files, err := a.tlsDir().IssueServer(out, append(hosts, ips...))
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "certificate %s\nkey         %s\nca          %s\n", files.Cert, files.Key, files.CA)
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&hosts, "host", nil, "DNS name of the server (repeatable, comma-separated)")
	cmd.Flags().StringSliceVar(&ips, "ip", nil, "IP address of the server (repeatable, comma-separated)")
	cmd.Flags().StringVar(&out, "out", "", "directory for server.pem, server-key.pem and ca.pem")
	return cmd
}

func newCredsExportCmd(a *app) *cobra.Command {
	var agent, role, out string
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write what a role on another host needs into a new data directory: its seed and the TLS CA",
		Long: `Write the seed of one identity (--agent NAME, or --role) and the TLS CA into
--out as OUT/creds/<identity>.nk (0600) and OUT/tls/ca.pem: copy OUT to the
other host and use it as that process's --data, for example

  sendense creds export --agent node1 --out node1-data
  scp -r node1-data node1:/srv/sendense
  # on node1:
  sendense agent --data /srv/sendense --agent-id node1 --nats-url tls://hub.example:4222 ...

The process finds its seed and the CA there (or give --nats-ca OUT/tls/ca.pem).
The CA is made when DATA/tls has none.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("--out is required")
			}
			if (agent == "") == (role == "") {
				return fmt.Errorf("give one of --agent NAME and --role ROLE")
			}
			id := bus.AgentIdentity(agent)
			if role != "" {
				id = bus.Identity{Role: bus.Role(role)}
			}
			if err := id.Validate(); err != nil {
				return err
			}
			seed, err := os.ReadFile(a.creds().File(id))
			if err != nil {
				return fmt.Errorf("export %s: %w (make it with sendense creds init --agent NAME)", id, err)
			}
			ca, err := a.tlsDir().EnsureCA()
			if err != nil {
				return err
			}
			caPEM, err := os.ReadFile(ca)
			if err != nil {
				return fmt.Errorf("export %s: %w", id, err)
			}
			dst := bus.Creds{Dir: filepath.Join(out, "creds")}
			dstTLS := bus.TLSDir{Dir: filepath.Join(out, "tls")}
			for _, d := range []string{dst.Dir, dstTLS.Dir} {
				if err := os.MkdirAll(d, 0o700); err != nil {
					return fmt.Errorf("export %s: %w", id, err)
				}
			}
			if err := os.WriteFile(dst.File(id), seed, 0o600); err != nil {
				return fmt.Errorf("export %s: %w", id, err)
			}
			clear(seed)
			if err := os.WriteFile(dstTLS.CAFile(), caPEM, 0o644); err != nil {
				return fmt.Errorf("export %s: %w", id, err)
			}
			fmt.Fprintf(a.stdout, "seed %s\nca   %s\ncopy %s to the other host and give it as --data\n", dst.File(id), dstTLS.CAFile(), out)
			return nil
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "the agent's name (agent-NAME.nk)")
	cmd.Flags().StringVar(&role, "role", "", "a role instead: hub, catalog, requester, monitor, admin")
	cmd.Flags().StringVar(&out, "out", "", "the new data directory to write")
	return cmd
}

func newCredsContextCmd(a *app) *cobra.Command {
	var url, ca string
	cmd := &cobra.Command{
		Use:   "nats-context",
		Short: "Write nats CLI contexts for the requester (sendense), the monitor (sendense-monitor) and admin (sendense-admin)",
		Long: `Write nats CLI contexts that use DATA/creds' seeds, so the nats CLI acts as
a role: nats --context sendense pub backup.requested '{"vm":"pgtest1"}' asks
for a backup, nats --context sendense-monitor sub 'backup.>' follows every
event. sendense serve writes them at every start.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ca == "" && strings.HasPrefix(url, "tls://") {
				ca = a.tlsDir().CAFile()
			}
			paths, err := writeNATSContexts(a.creds(), url, ca)
			if err != nil {
				return err
			}
			for _, p := range paths {
				fmt.Fprintln(a.stdout, p)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&url, "url", defaultClientURL, "server URL the contexts connect to")
	cmd.Flags().StringVar(&ca, "ca", "", "CA file the contexts verify the server against (default with a tls:// URL: DATA/tls/ca.pem)")
	return cmd
}

// natsContexts are the nats CLI contexts sendense writes, by role.
var natsContexts = []struct {
	name string
	role bus.Role
	desc string
}{
	{"sendense", bus.RoleRequester, "Sendense requester: nats pub backup.requested"},
	{"sendense-monitor", bus.RoleMonitor, "Sendense monitor: nats sub 'backup.>'"},
	{"sendense-admin", bus.RoleAdmin, "Sendense admin: every operation"},
}

// natsContextDir is where the nats CLI reads contexts:
// $XDG_CONFIG_HOME/nats/context, or ~/.config/nats/context.
func natsContextDir() (string, error) {
	base := os.Getenv("XDG_CONFIG_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("nats context directory: %w", err)
		}
		base = filepath.Join(home, ".config")
	}
	return filepath.Join(base, "nats", "context"), nil
}

// writeNATSContexts writes the contexts of natsContexts whose seed exists
// in c, pointing at url, and returns their paths. Only the path of each
// seed goes into a context, never the seed. ca, if not "", is the CA the
// nats CLI verifies the server against (it then insists on TLS).
func writeNATSContexts(c bus.Creds, url, ca string) ([]string, error) {
	dir, err := natsContextDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create nats context directory %s: %w", dir, err)
	}
	var paths []string
	for _, nc := range natsContexts {
		id := bus.Identity{Role: nc.role}
		seed, err := filepath.Abs(c.File(id))
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(seed); err != nil {
			continue
		}
		ctx := map[string]string{"description": nc.desc, "url": url, "nkey": seed, "inbox_prefix": id.InboxPrefix()}
		if ca != "" {
			if ctx["ca"], err = filepath.Abs(ca); err != nil {
				return nil, err
			}
		}
		data, err := json.MarshalIndent(ctx, "", "  ")
		if err != nil {
			return nil, err
		}
		path := filepath.Join(dir, nc.name+".json")
		if err := os.WriteFile(path, append(data, '\n'), 0o600); err != nil {
			return nil, fmt.Errorf("write nats context %s: %w", path, err)
		}
		paths = append(paths, path)
	}
	return paths, nil
}
