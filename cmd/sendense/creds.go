package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
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
commands are for an external NATS and for agents on other hosts.`,
	}
	cmd.AddCommand(newCredsInitCmd(a), newCredsListCmd(a), newCredsServerConfigCmd(a), newCredsContextCmd(a))
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
			return listCreds(a)
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
	return &cobra.Command{
		Use:   "server-config",
		Short: "Print the nats-server authorization block that admits DATA/creds' identities with their roles' permissions",
		Long: `Print the authorization block of a nats-server configuration file for the
identities in DATA/creds: what an external server or each member of a cluster
needs to enforce the same roles as the embedded server. Add JetStream to the
same file, for example:

  sendense creds init --agent node1 > /dev/null
  sendense creds server-config > nats-server.conf
  printf 'jetstream { store_dir: /var/lib/nats, sync_interval: always }\n' >> nats-server.conf
  nats-server -c nats-server.conf`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			users, err := a.creds().Users()
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(a.stdout, bus.ServerConfig(users))
			return err
		},
	}
}

func newCredsContextCmd(a *app) *cobra.Command {
	var url string
	cmd := &cobra.Command{
		Use:   "nats-context",
		Short: "Write nats CLI contexts for the requester (sendense), the monitor (sendense-monitor) and admin (sendense-admin)",
		Long: `Write nats CLI contexts that use DATA/creds' seeds, so the nats CLI acts as
a role: nats --context sendense pub backup.requested '{"vm":"pgtest1"}' asks
for a backup, nats --context sendense-monitor sub 'backup.>' follows every
event. sendense serve writes them at every start.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			paths, err := writeNATSContexts(a.creds(), url)
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
// seed goes into a context, never the seed.
func writeNATSContexts(c bus.Creds, url string) ([]string, error) {
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
		data, err := json.MarshalIndent(map[string]string{
			"description": nc.desc, "url": url, "nkey": seed, "inbox_prefix": id.InboxPrefix(),
		}, "", "  ")
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
