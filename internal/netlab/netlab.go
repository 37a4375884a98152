package netlab

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// nsPrefix starts the name of every namespace a lab creates:
// "sdl<pid>x<n>-<host>", so stale ones can be told from live ones.
const nsPrefix = "sdl"

// Lab is a set of hosts and networks. Create it with New.
type Lab struct {
	tb     testing.TB
	prefix string // nsPrefix + pid + "x" + n + "-"
	sw     string // the namespace holding the bridges
	root   string // the lab's directory; Host.Dir is under it
	nets   map[string]*network
	hosts  []*Host
	// attached are the veth ends Attach put in the caller's namespace.
	attached []string
}

type network struct {
	name   string
	bridge string
	prefix netip.Prefix
	next   netip.Addr
}

// Host is one simulated machine: a network namespace with an address on
// each of its networks and a directory of its own.
type Host struct {
	lab  *Lab
	Name string
	NS   string // network namespace name, for `ip netns exec`
	Dir  string // the host's own directory (visible to its isolated processes)
	ips  map[string]string
}

var labs atomic.Int32

// New creates an empty lab and registers its removal with tb.Cleanup. It
// skips the test when namespaces cannot be made (not root, no `ip` or
// `unshare`), or fails it when CI=true.
func New(tb testing.TB) *Lab {
	tb.Helper()
	if reason := unavailable(); reason != "" {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("multi-host tests need network namespaces with CI=true: %s", reason)
		}
		tb.Skipf("multi-host test skipped: %s", reason)
	}
	reapStale(tb)
	l := &Lab{
		tb:     tb,
		prefix: fmt.Sprintf("%s%dx%d-", nsPrefix, os.Getpid(), labs.Add(1)),
		root:   tb.TempDir(),
		nets:   map[string]*network{},
	}
	l.sw = l.prefix + "switch"
	tb.Cleanup(l.remove)
	l.ip("netns", "add", l.sw)
	l.ip("-n", l.sw, "link", "set", "lo", "up")
	return l
}

// unavailable says why namespaces cannot be used here, or "".
func unavailable() string {
	if os.Geteuid() != 0 {
		return fmt.Sprintf("not root (uid %d)", os.Geteuid())
	}
	for _, tool := range []string{"ip", "unshare", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("%s not found: %v", tool, err)
		}
	}
	if fi, err := os.Stat("/mnt"); err != nil || !fi.IsDir() {
		return "/mnt is not a directory (isolated processes use it as a mount point)"
	}
	probe := fmt.Sprintf("%sprobe%d", nsPrefix, os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return fmt.Sprintf("ip netns add: %v: %s", err, bytes.TrimSpace(out))
	}
	_ = exec.Command("ip", "netns", "del", probe).Run()
	return ""
}

// reapStale deletes namespaces left by lab processes that no longer run.
func reapStale(tb testing.TB) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, nsPrefix) {
			continue
		}
		digits := strings.TrimPrefix(name, nsPrefix)
		end := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' })
		if end <= 0 {
			continue
		}
		pid, _ := strconv.Atoi(digits[:end])
		if pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Logf("netlab: remove stale namespace %s: %v: %s", name, err, bytes.TrimSpace(out))
		}
	}
}

// Net adds a network (a bridge) with the given IPv4 prefix, "10.77.1.0/24".
// Hosts get addresses .1, .2, … in the order they join.
func (l *Lab) Net(name, cidr string) {
	l.tb.Helper()
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !p.Addr().Is4() {
		l.tb.Fatalf("netlab: network %s: bad IPv4 prefix %q: %v", name, cidr, err)
	}
	if _, dup := l.nets[name]; dup {
		l.tb.Fatalf("netlab: network %s added twice", name)
	}
	n := &network{name: name, bridge: fmt.Sprintf("br%d", len(l.nets)), prefix: p.Masked(), next: p.Masked().Addr().Next()}
	l.ip("-n", l.sw, "link", "add", n.bridge, "type", "bridge")
	l.ip("-n", l.sw, "link", "set", n.bridge, "up")
	l.nets[name] = n
}

// Host adds a host joined to the named networks, with the next free address
// of each.
func (l *Lab) Host(name string, nets ...string) *Host {
	l.tb.Helper()
	return l.addHost(name, nets, func(n *network) netip.Addr {
		addr := n.next
		if !n.prefix.Contains(addr.Next()) {
			l.tb.Fatalf("netlab: network %s is full", n.name)
		}
		n.next = addr.Next()
		return addr
	})
}

// HostAt adds a host joined to the named networks with host number num on
// each: HostAt("hub", 20, "core") on 10.77.1.0/24 is 10.77.1.20. It lets a
// lab use the fixed addresses of a deployment file. Do not mix it with Host
// on one network unless the numbers cannot collide.
func (l *Lab) HostAt(name string, num int, nets ...string) *Host {
	l.tb.Helper()
	return l.addHost(name, nets, func(n *network) netip.Addr { return l.nth(n, num) })
}

// nth is the num-th address of n's prefix.
func (l *Lab) nth(n *network, num int) netip.Addr {
	l.tb.Helper()
	a := n.prefix.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(num)
	addr := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	if num <= 0 || !n.prefix.Contains(addr) {
		l.tb.Fatalf("netlab: host number %d is outside network %s (%s)", num, n.name, n.prefix)
	}
	return addr
}

func (l *Lab) addHost(name string, nets []string, pick func(*network) netip.Addr) *Host {
	l.tb.Helper()
	h := &Host{lab: l, Name: name, NS: l.prefix + name, Dir: filepath.Join(l.root, name), ips: map[string]string{}}
	if err := os.MkdirAll(h.Dir, 0o700); err != nil {
		l.tb.Fatal(err)
	}
	l.ip("netns", "add", h.NS)
	l.hosts = append(l.hosts, h)
	l.ip("-n", h.NS, "link", "set", "lo", "up")
	for i, name := range nets {
		n, ok := l.nets[name]
		if !ok {
			l.tb.Fatalf("netlab: host %s: no network %s", h.Name, name)
		}
		addr := pick(n)
		dev := fmt.Sprintf("eth%d", i)
		peer := fmt.Sprintf("h%dn%d", len(l.hosts)-1, i)
		l.ip("link", "add", dev, "netns", h.NS, "type", "veth", "peer", "name", peer, "netns", l.sw)
		l.plug(n, peer)
		l.ip("-n", h.NS, "addr", "add", fmt.Sprintf("%s/%d", addr, n.prefix.Bits()), "dev", dev)
		l.ip("-n", h.NS, "link", "set", dev, "up")
		h.ips[name] = addr.String()
	}
	return h
}

// plug attaches the switch-side end of a veth pair to n's bridge.
func (l *Lab) plug(n *network, peer string) {
	l.tb.Helper()
	l.ip("-n", l.sw, "link", "set", peer, "master", n.bridge)
	l.ip("-n", l.sw, "link", "set", peer, "up")
}

// Attach joins the calling process's own network namespace (the test's)
// to the named network with host number num, so the test reaches the lab's
// services as an operator's workstation would, and returns that address.
// The link goes away with the lab. Labs that attach at once (tests of
// different packages run in parallel) need prefixes of their own: the
// routes share the test process's namespace.
func (l *Lab) Attach(net string, num int) string {
	l.tb.Helper()
	n, ok := l.nets[net]
	if !ok {
		l.tb.Fatalf("netlab: attach: no network %s", net)
	}
	addr := l.nth(n, num)
	// Interface names are at most 15 bytes and live in the root
	// namespace, so they carry the process id and the lab number.
	dev := fmt.Sprintf("%s%s", strings.TrimPrefix(l.prefix, nsPrefix), net)
	dev = nsPrefix + strings.NewReplacer("-", "").Replace(dev)
	if len(dev) > 15 {
		dev = dev[:15]
	}
	peer := fmt.Sprintf("r%dn%s", len(l.attached), net)
	if len(peer) > 15 {
		peer = peer[:15]
	}
	l.ip("link", "add", dev, "type", "veth", "peer", "name", peer, "netns", l.sw)
	l.attached = append(l.attached, dev)
	l.plug(n, peer)
	l.ip("addr", "add", fmt.Sprintf("%s/%d", addr, n.prefix.Bits()), "dev", dev)
	l.ip("link", "set", dev, "up")
	return addr.String()
}

// IP is the host's address on the named network.
func (h *Host) IP(net string) string {
	ip, ok := h.ips[net]
	if !ok {
		h.lab.tb.Fatalf("netlab: host %s is not on network %s", h.Name, net)
	}
	return ip
}

// Command returns a command that runs argv on the host. With isolated, it
// runs in a private mount namespace too, where /tmp and the lab's root
// directory are empty except for h.Dir (at the same path). The process
// is the command's own (ip, unshare and sh exec it), so signals reach it.
func (h *Host) Command(isolated bool, argv ...string) *exec.Cmd {
	args := []string{"netns", "exec", h.NS}
	if isolated {
		args = append(args, "unshare", "--mount", "--propagation", "private", "sh", "-c", isolateScript, "netlab", h.Dir)
		args = append(args, h.lab.hidden()...)
		args = append(args, "--")
	}
	args = append(args, argv...)
	cmd := exec.Command("ip", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// isolateScript hides "$@" up to "--" behind empty tmpfs mounts, keeping $1
// (the host's directory) visible at its path, then execs the rest.
const isolateScript = `set -e
own=$1; shift
mount --rbind "$own" /mnt
while [ "$1" != -- ]; do mount -t tmpfs -o mode=1777 netlab "$1"; shift; done
shift
mkdir -p "$own"
mount --move /mnt "$own"
exec "$@"`

// hidden lists the directories an isolated process must not see: /tmp,
// the system temp dir and the lab root, minus those inside another.
func (l *Lab) hidden() []string {
	cands := []string{"/tmp", os.TempDir(), l.root}
	sort.Strings(cands)
	var out []string
	for _, c := range cands {
		c = filepath.Clean(c)
		covered := false
		for _, o := range out {
			if c == o || strings.HasPrefix(c, o+"/") {
				covered = true
			}
		}
		if !covered {
			out = append(out, c)
		}
	}
	return out
}

// Run runs argv on the host (not isolated) and returns its combined output.
func (h *Host) Run(ctx context.Context, argv ...string) (string, error) {
	cmd := h.Command(false, argv...)
	out, err := commandOutput(ctx, cmd)
	if err != nil {
		return out, fmt.Errorf("%s on %s: %w: %s", strings.Join(argv, " "), h.Name, err, strings.TrimSpace(out))
	}
	return out, nil
}

// Sees reports whether process pid (running on some host) can see path in
// its mount namespace.
func Sees(pid int, path string) (bool, error) {
	cmd := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-m", "--", "test", "-e", path)
	err := cmd.Run()
	if err == nil {
		return true, nil
	}
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 1 {
		return false, nil
	}
	return false, fmt.Errorf("look for %s in the mounts of pid %d: %w", path, pid, err)
}

func commandOutput(ctx context.Context, cmd *exec.Cmd) (string, error) {
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return buf.String(), err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return buf.String(), ctx.Err()
	}
}

// ip runs `ip args...` and fails the test on error.
func (l *Lab) ip(args ...string) {
	l.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := commandOutput(ctx, exec.Command("ip", args...)); err != nil {
		l.tb.Fatalf("netlab: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out))
	}
}

// remove deletes the hosts' namespaces and the switch (which takes the
// bridges and veth pairs with it).
func (l *Lab) remove() {
	for _, dev := range l.attached {
		// Deleting the switch takes the pair too; this only makes it
		// immediate and covers a switch that failed to go.
		_ = exec.Command("ip", "link", "del", dev).Run()
	}
	for _, ns := range append(l.namespaces(), l.sw) {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); os.IsNotExist(err) {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			l.tb.Errorf("netlab: remove namespace %s: %v: %s", ns, err, bytes.TrimSpace(out))
		}
	}
}

func (l *Lab) namespaces() []string {
	out := make([]string, 0, len(l.hosts))
	for _, h := range l.hosts {
		out = append(out, h.NS)
	}
	return out
}
