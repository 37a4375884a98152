package main

import (
	"fmt"
	"strings"
)

// topology is the deployment that TestMultiHost runs in network namespaces
// and docker-compose.yml describes for Docker: the same services at the same
// addresses with the same commands, listening on the same ports.
// TestComposeMatchesTopology keeps the two in step.
//
// Arguments may hold {data} (the service's data directory: its volume in
// compose, its host's directory in the test) and {export:NAME} (service
// NAME's data directory, as the init service sees it).
var topology = struct {
	Nets     map[string]string // name → IPv4 prefix
	Services []service
	// Init are the steps of the one-shot init service, run in the hub's
	// data directory before every other service starts: the roles' seeds
	// and the CA (which stay with the hub), the catalog's seed, each NATS server's certificate
	// and configuration, each other role's seed and the CA for its host,
	// the simulated vCenter's certificate, and its password for it and the
	// agents.
	Init []initStep
}{
	Nets: map[string]string{"core": "10.77.1.0/24", "vc": "10.77.2.0/24"},
	Services: []service{
		natsNode(1), natsNode(2), natsNode(3),
		{
			Name: "hub", Num: 20, Nets: []string{"core"},
			Args: sendenseArgs("hub", "--stream-replicas", "3",
				"--api-listen", "10.77.1.20:8080", "--metrics-listen", "10.77.1.20:9090",
				"--repo-listen", "10.77.1.20", "--repo-ports", "10809-10828"),
			Ports: []string{"8080", "9090", "10809-10828"}, Ready: "9090",
		},
		{
			// The catalog shares the hub's host (network namespace; in
			// compose, network_mode service:hub) with a data dir of its own.
			Name: "catalog", Host: "hub",
			Args:  sendenseArgs("catalog", "--stream-replicas", "3", "--metrics-listen", "10.77.1.20:9091"),
			Ports: []string{"9091"}, Ready: "9091",
		},
		{
			Name: "vcenter", Num: 40, Nets: []string{"core", "vc"},
			Args: sendenseArgs("vcenter-sim", "--listen", "10.77.2.40:8989", "--inventory", "pair",
				"--password-file", "{data}/vcenter-password", "--user", "sendense",
				"--tls-cert", "{data}/tls/server.pem", "--tls-key", "{data}/tls/server-key.pem"),
			Ports: []string{"8989"},
		},
		agentNode(1), agentNode(2),
	},
	Init: initSteps(),
}

// initStep is a sendense command (Args), its standard output saved to
// Stdout when set; or, with Secret set, a fresh random secret written to
// each of those files.
type initStep struct {
	Args   []string
	Stdout string
	Secret []string
}

func initSteps() []initStep {
	steps := []initStep{{Args: []string{"creds", "init", "--agent", "agent1", "--agent", "agent2"}}}
	var routes []string
	for i := 1; i <= 3; i++ {
		routes = append(routes, fmt.Sprintf("nats-route://10.77.1.1%d:6222", i))
	}
	for i := 1; i <= 3; i++ {
		name, ip := fmt.Sprintf("nats%d", i), fmt.Sprintf("10.77.1.1%d", i)
		steps = append(steps,
			initStep{Args: []string{"creds", "tls", "--host", name, "--ip", ip, "--out", "{export:" + name + "}/tls"}},
			initStep{Args: []string{"creds", "server-config", "--tls", "--tls-dir", "tls", "--name", name,
				"--listen", "0.0.0.0:4222", "--advertise", ip + ":4222", "--monitor", "0.0.0.0:8222", "--store-dir", "js",
				"--cluster-listen", "0.0.0.0:6222", "--cluster-advertise", ip + ":6222", "--routes", strings.Join(routes, ",")},
				Stdout: "{export:" + name + "}/nats-server.conf"},
		)
	}
	steps = append(steps,
		initStep{Args: []string{"creds", "export", "--role", "catalog", "--out", "{export:catalog}"}},
		initStep{Args: []string{"creds", "export", "--role", "testbed", "--out", "{export:vcenter}"}},
		initStep{Args: []string{"creds", "tls", "--host", "vcenter", "--ip", "10.77.2.40", "--out", "{export:vcenter}/tls"}},
		initStep{Args: []string{"creds", "export", "--agent", "agent1", "--out", "{export:agent1}"}},
		initStep{Args: []string{"creds", "export", "--agent", "agent2", "--out", "{export:agent2}"}},
		initStep{Secret: []string{"{export:vcenter}/vcenter-password", "{export:agent1}/vcenter-password", "{export:agent2}/vcenter-password"}},
	)
	return steps
}

// service is one process of the topology.
type service struct {
	Name string
	// Host is the service whose host (network namespace) it shares, or ""
	// for a host of its own with Num and Nets.
	Host string
	Num  int      // host number on each of its networks: 10.77.1.Num
	Nets []string // networks it is on
	// Image is "nats" for a nats-server, else the sendense image.
	Image string
	// Args are the arguments after the program (nats-server or sendense).
	Args []string
	// Ports it listens on (compose publishes none; they are documentation
	// and checked against the command).
	Ports []string
	// Ready is the port of its /readyz (nats-server: /healthz), or "".
	Ready string
}

// natsURLs is how every role reaches the cluster. The CA each role trusts
// is in its data directory (tls/ca.pem, from the init service).
const natsURLs = "tls://10.77.1.11:4222,tls://10.77.1.12:4222,tls://10.77.1.13:4222"

// natsNode is a nats-server. It runs in its data directory, where the
// init service put its configuration, certificate and CA (relative paths),
// and keeps its JetStream store there.
func natsNode(i int) service {
	return service{
		Name: fmt.Sprintf("nats%d", i), Num: 10 + i, Nets: []string{"core"}, Image: "nats",
		Args:  []string{"-c", "nats-server.conf"},
		Ports: []string{"4222", "6222", "8222"}, Ready: "8222",
	}
}

func agentNode(i int) service {
	name := fmt.Sprintf("agent%d", i)
	return service{
		Name: name, Num: 30 + i, Nets: []string{"core", "vc"},
		Args: sendenseArgs("agent", "--agent-id", name, "--max-jobs", "1",
			"--vcenter-url", "https://10.77.2.40:8989/sdk", "--vcenter-user", "sendense",
			"--vcenter-password-file", "{data}/vcenter-password", "--vcenter-ca", "{data}/tls/ca.pem",
			"--transport", "https", "--metrics-listen", fmt.Sprintf("10.77.1.%d:9090", 30+i)),
		Ports: []string{"9090"}, Ready: "9090",
	}
}

// sendenseArgs are a role's global flags (its data directory and the
// cluster) followed by args.
func sendenseArgs(args ...string) []string {
	return append([]string{"--data", "{data}", "--log-format", "json", "--nats-url", natsURLs}, args...)
}

// expand replaces {data} with data and {export:NAME} with export(NAME).
func expand(args []string, data string, export func(string) string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = expandOne(a, data, export)
	}
	return out
}

func expandOne(a, data string, export func(string) string) string {
	a = strings.ReplaceAll(a, "{data}", data)
	for {
		i := strings.Index(a, "{export:")
		if i < 0 {
			return a
		}
		j := strings.Index(a[i:], "}")
		a = a[:i] + export(a[i+len("{export:"):i+j]) + a[i+j+1:]
	}
}

// byName is the topology's service called name.
func byName(name string) service {
	for _, s := range topology.Services {
		if s.Name == name {
			return s
		}
	}
	panic("topology has no service " + name)
}
