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
