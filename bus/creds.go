package bus

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nats-io/nkeys"
)

// credsExt ends the name of every seed file in a Creds directory.
const credsExt = ".nk"

// Creds is a directory of NATS credentials: one nkey user seed per
// identity, DIR/<identity name>.nk (for example hub.nk, agent-node1.nk),
// each readable by its owner only (0600) in a directory of mode 0700.
//
// The seed is the secret; the server needs only the public key (Users).
// `sendense serve` keeps its Creds under DATA/creds and makes the missing
// ones at every start (Ensure), so a new data directory is secured from
// its first start. A process of one role on another host needs only its
// own seed file.
type Creds struct {
	Dir string
}

// File returns the seed file of id (it may not exist).
func (c Creds) File(id Identity) string { return filepath.Join(c.Dir, id.Name()+credsExt) }

// Ensure creates the seed of every id that has none (and the directory),
// and keeps existing seeds. It refuses an invalid identity.
func (c Creds) Ensure(ids ...Identity) error {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return fmt.Errorf("create credentials directory %s: %w", c.Dir, err)
	}
	if err := os.Chmod(c.Dir, 0o700); err != nil {
		return fmt.Errorf("restrict credentials directory %s: %w", c.Dir, err)
	}
	for _, id := range ids {
		if err := id.Validate(); err != nil {
			return fmt.Errorf("credentials in %s: %w", c.Dir, err)
		}
		path := c.File(id)
		if _, err := os.Stat(path); err == nil {
			continue
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("credentials of %s: %w", id, err)
		}
		if err := writeSeed(path); err != nil {
			return fmt.Errorf("create credentials of %s: %w", id, err)
		}
	}
	return nil
}

// writeSeed writes a new user seed to path (0600) atomically: under a
// temporary name, synced, then linked, so a crash leaves no half seed and
// an existing file is never replaced.
func writeSeed(path string) error {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return err
	}
	defer kp.Wipe()
	seed, err := kp.Seed()
	if err != nil {
		return err
	}
	return writeSynced(path, append(seed, '\n'), 0o600, os.Link)
}

// User is one identity as the server knows it: its public nkey.
type User struct {
	Identity
	PublicKey string
}

// Users reads the public key of every identity with a seed in the
// directory (the roles and each agent-<name>.nk), ordered by name.
// Files that are not seeds of an identity are ignored; an unreadable or
// malformed seed is an error.
func (c Creds) Users() ([]User, error) {
	entries, err := os.ReadDir(c.Dir)
	if err != nil {
		return nil, fmt.Errorf("read credentials directory %s: %w", c.Dir, err)
	}
	var users []User
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), credsExt)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		id, ok := identityOf(name)
		if !ok {
			continue
		}
		pub, err := c.PublicKey(id)
		if err != nil {
			return nil, err
		}
		users = append(users, User{Identity: id, PublicKey: pub})
	}
	slices.SortFunc(users, func(a, b User) int { return strings.Compare(a.Name(), b.Name()) })
	return users, nil
}

// PublicKey returns the public nkey of id's seed.
func (c Creds) PublicKey(id Identity) (string, error) {
	data, err := os.ReadFile(c.File(id))
	if err != nil {
		return "", fmt.Errorf("read credentials of %s: %w", id, err)
	}
	kp, err := nkeys.ParseDecoratedUserNKey(data)
	clear(data)
	if err != nil {
		return "", fmt.Errorf("credentials of %s in %s: %w", id, c.File(id), err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return "", fmt.Errorf("credentials of %s: %w", id, err)
	}
	return pub, nil
}

// identityOf maps a user name back to its identity.
func identityOf(name string) (Identity, bool) {
	if agent, ok := strings.CutPrefix(name, string(RoleAgent)+"-"); ok {
		id := AgentIdentity(agent)
		return id, id.Validate() == nil
	}
	id := Identity{Role: Role(name)}
	return id, id.Validate() == nil
}

// Options returns the client options of id: its seed file, its inbox
// prefix and a connection name. URLs and TLS are the caller's.
func (c Creds) Options(id Identity) Options {
	return Options{NKeyFile: c.File(id), InboxPrefix: id.InboxPrefix(), Name: "sendense-" + id.Name()}
}
