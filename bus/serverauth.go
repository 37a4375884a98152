package bus

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// serverPermissions maps p to nats-server's form. An empty allow list is
// "deny everything" (an absent one would allow everything).
func serverPermissions(p Permissions) *server.Permissions {
	sp := &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: p.Publish},
		Subscribe: &server.SubjectPermission{Allow: p.Subscribe},
	}
	if len(p.Publish) == 0 {
		sp.Publish = &server.SubjectPermission{Deny: []string{">"}}
	}
	if len(p.Subscribe) == 0 {
		sp.Subscribe = &server.SubjectPermission{Deny: []string{">"}}
	}
	return sp
}

// serverUsers returns the embedded server's nkey users for users, each
// with the permissions of its role.
func serverUsers(users []User) []*server.NkeyUser {
	out := make([]*server.NkeyUser, 0, len(users))
	for _, u := range users {
		out = append(out, &server.NkeyUser{Nkey: u.PublicKey, Permissions: serverPermissions(PermissionsOf(u.Identity))})
	}
	return out
}

// ServerConfig returns the authorization block of a nats-server
// configuration file that admits users with the permissions of their
// roles: what an external server or cluster needs to run Sendense with
// the same rules as the embedded one. Paste it into each server's
// configuration (`sendense nats-config` prints it).
func ServerConfig(users []User) string {
	var b strings.Builder
	b.WriteString("# Sendense users: one nkey per role and per agent (see sendense's docs/design.md).\n")
	b.WriteString("authorization {\n  users = [\n")
	for _, u := range users {
		p := serverPermissions(PermissionsOf(u.Identity))
		fmt.Fprintf(&b, "    # %s\n    {\n      nkey: %s\n      permissions: {\n", u.Name(), strconv.Quote(u.PublicKey))
		writeSubjectPerm(&b, "publish", p.Publish)
		writeSubjectPerm(&b, "subscribe", p.Subscribe)
		if p.Response != nil {
			fmt.Fprintf(&b, "        allow_responses: { max: %d, expires: %q }\n", p.Response.MaxMsgs, p.Response.Expires.String())
		}
		b.WriteString("      }\n    }\n")
	}
	b.WriteString("  ]\n}\n")
	return b.String()
}

func writeSubjectPerm(b *strings.Builder, name string, sp *server.SubjectPermission) {
	fmt.Fprintf(b, "        %s: {", name)
	if len(sp.Allow) > 0 {
		b.WriteString(" allow: " + quoteList(sp.Allow))
	}
	if len(sp.Deny) > 0 {
		b.WriteString(" deny: " + quoteList(sp.Deny))
	}
	b.WriteString(" }\n")
}

func quoteList(subjects []string) string {
	q := make([]string, len(subjects))
	for i, s := range subjects {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// ServerNode is one nats-server of an external deployment, for
// NodeConfig. Every field is optional: an empty one leaves its block out.
type ServerNode struct {
	// Name is the server_name, unique within a cluster.
	Name string
	// Listen is the client address, host:port.
	Listen string
	// Advertise is the client address the server gives clients of its
	// cluster (client_advertise), host:port: one its certificate names,
	// rather than every address of a server listening on 0.0.0.0.
	Advertise string
	// Monitor is the HTTP monitoring address (/healthz, /jsz), host:port.
	Monitor string
	// TLS makes the server require TLS from clients and, in a cluster, on
	// its routes (mutual: each server presents its certificate, verified
	// against the CA). The files of TLSDir.IssueServer.
	TLS *TLSFiles
	// ClusterName, ClusterListen (host:port) and Routes
	// (nats-route://host:port of every member) make a cluster.
	ClusterName   string
	ClusterListen string
	Routes        []string
	// ClusterAdvertise is the route address the server gives the other
	// members, host:port (cluster advertise).
	ClusterAdvertise string
	// StoreDir turns JetStream on with its files there, every write
	// synced before it is acknowledged, like the embedded server.
	StoreDir string
}

// NodeConfig returns a whole nats-server configuration file: node's
// blocks followed by ServerConfig(users). `sendense creds server-config`
// prints it; bustest starts real clusters from it.
func NodeConfig(users []User, node ServerNode) string {
	var b strings.Builder
	if node.Name != "" {
		fmt.Fprintf(&b, "server_name: %q\n", node.Name)
	}
	if node.Listen != "" {
		fmt.Fprintf(&b, "listen: %q\n", node.Listen)
	}
	if node.Advertise != "" {
		fmt.Fprintf(&b, "client_advertise: %q\n", node.Advertise)
	}
	if node.Monitor != "" {
		fmt.Fprintf(&b, "http: %q\n", node.Monitor)
	}
	if node.TLS != nil {
		b.WriteString("# Clients must use TLS; they verify this certificate against the CA (sendense --nats-ca).\n")
		writeTLSBlock(&b, "", *node.TLS, false)
	}
	if node.StoreDir != "" {
		fmt.Fprintf(&b, "jetstream {\n  store_dir: %q\n  sync_interval: always\n}\n", node.StoreDir)
	}
	if node.ClusterName != "" || node.ClusterListen != "" || len(node.Routes) > 0 {
		b.WriteString("cluster {\n")
		if node.ClusterName != "" {
			fmt.Fprintf(&b, "  name: %q\n", node.ClusterName)
		}
		if node.ClusterListen != "" {
			fmt.Fprintf(&b, "  listen: %q\n", node.ClusterListen)
		}
		if node.ClusterAdvertise != "" {
			fmt.Fprintf(&b, "  advertise: %q\n", node.ClusterAdvertise)
		}
		if len(node.Routes) > 0 {
			fmt.Fprintf(&b, "  routes: %s\n", quoteList(node.Routes))
		}
		if node.TLS != nil {
			b.WriteString("  # Routes are mutual TLS: every server's certificate is signed by the same CA.\n")
			writeTLSBlock(&b, "  ", *node.TLS, true)
		}
		b.WriteString("}\n")
	}
	b.WriteString(ServerConfig(users))
	return b.String()
}

func writeTLSBlock(b *strings.Builder, indent string, f TLSFiles, verify bool) {
	fmt.Fprintf(b, "%stls {\n", indent)
	fmt.Fprintf(b, "%s  cert_file: %q\n%s  key_file: %q\n%s  ca_file: %q\n", indent, f.Cert, indent, f.Key, indent, f.CA)
	if verify {
		fmt.Fprintf(b, "%s  verify: true\n", indent)
	}
	fmt.Fprintf(b, "%s  timeout: %d\n%s}\n", indent, tlsHandshakeTimeout, indent)
}
