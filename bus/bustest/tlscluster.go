package bustest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sendense/sendense/bus"
)

// NodeAddr is where one nats-server of a cluster listens and is reached:
// Host is both its listen address and the name clients and the other
// servers dial (it goes into the node's certificate), so give each node
// its own routable address (a network namespace's) or, on one host,
// 127.0.0.1 with distinct ports.
type NodeAddr struct {
	Name        string // server_name, unique in the cluster
	Host        string // IP address or DNS name
	ClientPort  int
	ClusterPort int
	// MonitorPort serves /healthz and /jsz; 0: none.
	MonitorPort int
}

// ClientURL is the node's tls:// client URL.
func (n NodeAddr) ClientURL() string {
	return "tls://" + net.JoinHostPort(n.Host, strconv.Itoa(n.ClientPort))
}

// NodeFiles are the files WriteClusterConfig wrote for one node.
type NodeFiles struct {
	NodeAddr
	// Config is the nats-server configuration file (nats-server -c).
	Config string
	// StoreDir is the node's JetStream directory.
	StoreDir string
	// TLS are the node's certificate, key and the CA.
	TLS bus.TLSFiles
}

// ClusterConfig is a cluster's configuration on disk.
type ClusterConfig struct {
	// Dir holds everything: Dir/ca (the CA), Dir/<node name>/ per node.
	Dir string
	// CA is the CA certificate clients are given (bus.Options.TLSCA).
	CA    string
	Nodes []NodeFiles
}

// URLs are the nodes' client URLs.
func (c *ClusterConfig) URLs() []string {
	var urls []string
	for _, n := range c.Nodes {
		urls = append(urls, n.ClientURL())
	}
	return urls
}

// ClusterName is the name WriteClusterConfig gives its clusters.
const ClusterName = "sendense"

// WriteClusterConfig writes the configuration of a JetStream cluster of
// nodes with TLS on client and route ports and users (each with its
// role's permissions), as `sendense creds tls` and `sendense creds
// server-config --tls` do for an operator: a CA in dir/ca, and for each
// node dir/<name>/nats-server.conf, its certificate in dir/<name>/tls
// (valid for its Host) and its store dir/<name>/store. It starts
// nothing: run `nats-server -c Config` for each node where it belongs
// (StartTLSCluster does on this host; a test may do it in network
// namespaces).
func WriteClusterConfig(dir string, nodes []NodeAddr, users []bus.User) (*ClusterConfig, error) {
	if len(nodes) == 0 {
		return nil, errors.New("write cluster config: no nodes")
	}
	caDir := bus.TLSDir{Dir: filepath.Join(dir, "ca")}
	ca, err := caDir.EnsureCA()
	if err != nil {
		return nil, fmt.Errorf("write cluster config in %s: %w", dir, err)
	}
	var routes []string
	for _, n := range nodes {
		if n.Name == "" || n.Host == "" || n.ClientPort <= 0 || n.ClusterPort <= 0 {
			return nil, fmt.Errorf("write cluster config: node %+v needs a name, a host, a client and a cluster port", n)
		}
		routes = append(routes, "nats-route://"+net.JoinHostPort(n.Host, strconv.Itoa(n.ClusterPort)))
	}
	cc := &ClusterConfig{Dir: dir, CA: ca}
	for _, n := range nodes {
		nodeDir := filepath.Join(dir, n.Name)
		files, err := caDir.IssueServer(filepath.Join(nodeDir, "tls"), []string{n.Host})
		if err != nil {
			return nil, fmt.Errorf("write cluster config of node %s: %w", n.Name, err)
		}
		store := filepath.Join(nodeDir, "store")
		if err := os.MkdirAll(store, 0o700); err != nil {
			return nil, fmt.Errorf("write cluster config of node %s: %w", n.Name, err)
		}
		node := bus.ServerNode{
			Name:          n.Name,
			Listen:        net.JoinHostPort(n.Host, strconv.Itoa(n.ClientPort)),
			Advertise:     net.JoinHostPort(n.Host, strconv.Itoa(n.ClientPort)),
			TLS:           &files,
			ClusterName:   ClusterName,
			ClusterListen: net.JoinHostPort(n.Host, strconv.Itoa(n.ClusterPort)),
			Routes:        routes,
			StoreDir:      store,
		}
		if n.MonitorPort > 0 {
			node.Monitor = net.JoinHostPort(n.Host, strconv.Itoa(n.MonitorPort))
		}
		conf := filepath.Join(nodeDir, "nats-server.conf")
		if err := os.WriteFile(conf, []byte(bus.NodeConfig(users, node)), 0o600); err != nil {
			return nil, fmt.Errorf("write cluster config of node %s: %w", n.Name, err)
		}
		cc.Nodes = append(cc.Nodes, NodeFiles{NodeAddr: n, Config: conf, StoreDir: store, TLS: files})
	}
	return cc, nil
}

// TLSCluster is a JetStream cluster of real nats-server processes on
// this host (127.0.0.1, random ports) from WriteClusterConfig: TLS on
// client and route ports, the roles' users. Every process is stopped in
// cleanup.
type TLSCluster struct {
	Config *ClusterConfig
	// Creds holds a seed for every role and for each agent named at start.
	Creds bus.Creds

	bin   string
	wrap  func(i int) []string
	procs []*externalProc
}

// StartTLSCluster starts a cluster of n nodes (sendense-1..n) admitting
// the roles and agents, and returns once every node is healthy (its
// JetStream meta group current).
func StartTLSCluster(tb testing.TB, n int, agents ...string) *TLSCluster {
	tb.Helper()
	creds, users := secureCreds(tb, agents)
	var nodes []NodeAddr
	for i := range n {
		nodes = append(nodes, NodeAddr{Name: fmt.Sprintf("sendense-%d", i+1), Host: "127.0.0.1",
			ClientPort: freePort(tb), ClusterPort: freePort(tb), MonitorPort: freePort(tb)})
	}
	cc, err := WriteClusterConfig(tb.TempDir(), nodes, users)
	if err != nil {
		tb.Fatal(err)
	}
	c := NewTLSCluster(tb, cc, creds, nil)
	for i := range n {
		c.Start(tb, i)
	}
	for i := range n {
		c.WaitHealthy(tb, i)
	}
	return c
}

// NewTLSCluster returns the cluster of cc, admitting creds' identities
// (cc must have been written with their users), without starting it:
// Start each node, then WaitHealthy. wrap, if not nil, gives the command
// that runs node i's nats-server in place (for example
// []string{"ip", "netns", "exec", "ns1"}: it must exec the server, not
// fork it, so Stop and Kill reach it).
func NewTLSCluster(tb testing.TB, cc *ClusterConfig, creds bus.Creds, wrap func(i int) []string) *TLSCluster {
	tb.Helper()
	return &TLSCluster{Config: cc, Creds: creds, bin: NatsServerBinary(tb), wrap: wrap, procs: make([]*externalProc, len(cc.Nodes))}
}

// URLs are the nodes' tls:// client URLs.
func (c *TLSCluster) URLs() []string { return c.Config.URLs() }

// Start starts node i (again) on its configuration and store; it returns
// once the process listens (see WaitHealthy).
func (c *TLSCluster) Start(tb testing.TB, i int) {
	tb.Helper()
	n := c.Config.Nodes[i]
	var prefix []string
	if c.wrap != nil {
		prefix = c.wrap(i)
	}
	c.procs[i] = runNatsServer(tb, prefix, c.bin, tb.TempDir(), "nats-server-"+n.Name,
		Logger(tb).With().Str("node", n.Name).Logger(), "-c", n.Config)
}

// Stop shuts node i down (SIGTERM, SIGKILL after 10 s) and waits.
func (c *TLSCluster) Stop(i int) { c.procs[i].stop() }

// Kill crashes node i (SIGKILL) and waits.
func (c *TLSCluster) Kill(i int) { c.procs[i].kill() }

// WaitHealthy waits until node i's /healthz answers 200: it runs and its
// JetStream is current with the cluster.
func (c *TLSCluster) WaitHealthy(tb testing.TB, i int) {
	tb.Helper()
	n := c.Config.Nodes[i]
	u := "http://" + net.JoinHostPort(n.Host, strconv.Itoa(n.MonitorPort)) + "/healthz"
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := client.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			tb.Fatalf("node %s not healthy after 60s: %v", n.Name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Options are id's client options for the cluster: its seed, every
// node's URL and the CA.
func (c *TLSCluster) Options(id bus.Identity) bus.Options {
	opts := c.Creds.Options(id)
	opts.URLs, opts.TLSCA = c.URLs(), c.Config.CA
	return opts
}

// Connect connects as id over TLS (Options), closed in cleanup.
func (c *TLSCluster) Connect(tb testing.TB, id bus.Identity) *Conn {
	tb.Helper()
	return connectOpts(tb, c.Options(id))
}

// StreamLeader returns the index of the node that leads stream, asking
// through js.
func (c *TLSCluster) StreamLeader(ctx context.Context, js jetstream.JetStream, stream string) (int, error) {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return -1, fmt.Errorf("stream leader of %s: %w", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return -1, fmt.Errorf("stream leader of %s: %w", stream, err)
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return -1, fmt.Errorf("stream leader of %s: none now", stream)
	}
	for i, n := range c.Config.Nodes {
		if n.Name == info.Cluster.Leader {
			return i, nil
		}
	}
	return -1, fmt.Errorf("stream leader of %s: %s is not a node of this cluster", stream, info.Cluster.Leader)
}

// ConnectPlain speaks the NATS protocol in clear text to node i's client
// port, as a client without TLS would: it reads INFO, sends CONNECT and
// PING, and returns nil only if the node answers PONG (it let the client
// in); otherwise the error says what happened.
func (c *TLSCluster) ConnectPlain(i int) error {
	n := c.Config.Nodes[i]
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(n.Host, strconv.Itoa(n.ClientPort)), 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	info, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read info: %w", err)
	}
	if _, err := conn.Write([]byte("CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false}\r\nPING\r\n")); err != nil {
		return fmt.Errorf("send connect: %w", err)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("after %q: %w", strings.TrimSpace(info), err)
		}
		if strings.HasPrefix(line, "PONG") {
			return nil
		}
		if strings.HasPrefix(line, "-ERR") {
			return fmt.Errorf("server: %s", strings.TrimSpace(line))
		}
	}
}
