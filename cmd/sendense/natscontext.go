package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// natsContext is a nats CLI context: the JSON file the nats CLI keeps as
// $XDG_CONFIG_HOME/nats/context/NAME.json (else ~/.config/nats/context),
// in the format of github.com/nats-io/jsm.go/natscontext. The selected
// context's name is in nats/context.txt (`nats context select NAME`).
// Only the fields sendense can use are read; a context that needs one it
// cannot (a token, nsc lookup, a socks proxy, an inline JWT or seed) is refused by name rather
// than half applied.
type natsContext struct {
	Name        string `json:"-"`
	Path        string `json:"-"`
	URL         string `json:"url"`
	User        string `json:"user"`
	Password    string `json:"password"`
	Creds       string `json:"creds"`
	NKey        string `json:"nkey"`
	Cert        string `json:"cert"`
	Key         string `json:"key"`
	CA          string `json:"ca"`
	InboxPrefix string `json:"inbox_prefix"`
	Token       string `json:"token"`
	NSC         string `json:"nsc"`
	SocksProxy  string `json:"socks_proxy"`
	UserJWT     string `json:"user_jwt"`
	UserSeed    string `json:"user_seed"`
}

// hasAuth reports whether the context names credentials.
func (c *natsContext) hasAuth() bool { return c.Creds != "" || c.NKey != "" || c.User != "" }

// natsSelectedContextFile is where `nats context select` records the
// selected context's name.
func natsSelectedContextFile() (string, error) {
	dir, err := natsContextDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(dir), "context.txt"), nil
}

// loadNATSContext reads the context called name; with name "" the one
// `nats context select` chose, or nil when none is selected.
func loadNATSContext(name string) (*natsContext, error) {
	how := "--context"
	if name == "" {
		sel, err := natsSelectedContextFile()
		if err != nil {
			return nil, err
		}
		b, err := os.ReadFile(sel)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read the selected nats context: %w", err)
		}
		if name = strings.TrimSpace(string(b)); name == "" {
			return nil, nil
		}
		how = "selected in " + sel
	}
	if name == "" || strings.Contains(name, "..") || strings.ContainsRune(name, os.PathSeparator) {
		return nil, fmt.Errorf("nats context %q (%s): invalid name", name, how)
	}
	dir, err := natsContextDir()
	if err != nil {
		return nil, err
	}
	c := &natsContext{Name: name, Path: filepath.Join(dir, name+".json")}
	b, err := os.ReadFile(c.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("nats context %q (%s): no file %s (nats context ls lists the known ones)", name, how, c.Path)
	}
	if err != nil {
		return nil, fmt.Errorf("read nats context %q: %w", name, err)
	}
	if err := json.Unmarshal(b, c); err != nil {
		return nil, fmt.Errorf("read nats context %q from %s: %w", name, c.Path, err)
	}
	for field, v := range map[string]string{"token": c.Token, "nsc": c.NSC, "socks_proxy": c.SocksProxy, "user_jwt": c.UserJWT, "user_seed": c.UserSeed} {
		if v != "" {
			return nil, fmt.Errorf("nats context %q (%s) uses %s, which sendense does not support: give --nats-url and credentials instead", name, c.Path, field)
		}
	}
	return c, nil
}
