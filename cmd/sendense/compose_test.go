package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// compose is the part of a compose file the test reads.
type compose struct {
	Networks map[string]struct {
		Internal bool `yaml:"internal"`
		IPAM     struct {
			Config []struct {
				Subnet string `yaml:"subnet"`
			} `yaml:"config"`
		} `yaml:"ipam"`
	} `yaml:"networks"`
	Volumes  map[string]any            `yaml:"volumes"`
	Services map[string]composeService `yaml:"services"`
}

type composeService struct {
	Image       string   `yaml:"image"`
	Build       any      `yaml:"build"`
	Entrypoint  []string `yaml:"entrypoint"`
	Command     []string `yaml:"command"`
	WorkingDir  string   `yaml:"working_dir"`
	NetworkMode string   `yaml:"network_mode"`
	Restart     string   `yaml:"restart"`
	Volumes     []string `yaml:"volumes"`
	Networks    map[string]struct {
		IPv4 string `yaml:"ipv4_address"`
	} `yaml:"networks"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	Ports []string `yaml:"ports"`
}

// Paths inside the containers.
const (
	composeData     = "/var/lib/sendense" // a sendense service's volume (the image's VOLUME)
	composeNATSData = "/data"             // a nats-server's volume, its working directory
	composeExport   = "/export"           // where init mounts the other services' volumes
)

// TestComposeMatchesTopology: docker-compose.yml runs what TestMultiHost
// runs — the same services at the same addresses with the same commands,
// the init service's steps, a readiness healthcheck on each service that
// has one, restart policies, and the nats-server version this module embeds.
// No Docker engine runs it here; this keeps it from drifting from the
// tested topology.
func TestComposeMatchesTopology(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join("..", "..", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("parse docker-compose.yml: %v", err)
	}

	for name, cidr := range topology.Nets {
		n, ok := c.Networks[name]
		if !ok || len(n.IPAM.Config) != 1 || n.IPAM.Config[0].Subnet != cidr {
			t.Errorf("network %s: want one subnet %s, got %+v", name, cidr, n)
		}
		if name == "vc" && !n.Internal {
			t.Errorf("network vc must be internal: only agents and the vCenter are on it")
		}
	}

	want := []string{"init"}
	for _, s := range topology.Services {
		want = append(want, s.Name)
	}
	var got []string
	for name := range c.Services {
		got = append(got, name)
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("compose services %v, topology %v", got, want)
	}

	natsImage := "nats:" + strings.TrimPrefix(natsServerVersion(t), "v") + "-alpine"
	for _, s := range topology.Services {
		cs := c.Services[s.Name]
		data, program := composeData, []string{"sendense"}
		if s.Image == "nats" {
			data, program = composeNATSData, []string{"nats-server"}
			if cs.Image != natsImage {
				t.Errorf("%s: image %q, want %q (the nats-server this module embeds)", s.Name, cs.Image, natsImage)
			}
			if cs.WorkingDir != data {
				t.Errorf("%s: working_dir %q, want %q (its configuration names files relative to it)", s.Name, cs.WorkingDir, data)
			}
		} else if cs.Build == nil {
			t.Errorf("%s: not built from this repository", s.Name)
		}
		wantCmd := append(program, expand(s.Args, data, exportPath)...)
		if gotCmd := append(slices.Clone(cs.Entrypoint), cs.Command...); !slices.Equal(gotCmd, wantCmd) {
			t.Errorf("%s: command\n got %q\nwant %q", s.Name, gotCmd, wantCmd)
		}
		if !slices.Contains(cs.Volumes, s.Name+":"+data) {
			t.Errorf("%s: volumes %v lack %s:%s", s.Name, cs.Volumes, s.Name, data)
		}
		if s.Host != "" {
			if cs.NetworkMode != "service:"+s.Host || len(cs.Networks) != 0 {
				t.Errorf("%s: network_mode %q and networks %v; want network_mode service:%s (it shares that host)", s.Name, cs.NetworkMode, cs.Networks, s.Host)
			}
		}
		for _, net := range s.Nets {
			ip := hostAddr(t, topology.Nets[net], s.Num)
			if n, ok := cs.Networks[net]; !ok || n.IPv4 != ip {
				t.Errorf("%s: on network %s at %q, want %s", s.Name, net, n.IPv4, ip)
			}
		}
		if len(cs.Networks) != len(s.Nets) {
			t.Errorf("%s: networks %v, want %v", s.Name, cs.Networks, s.Nets)
		}
		if cs.Restart != "unless-stopped" {
			t.Errorf("%s: restart %q, want unless-stopped", s.Name, cs.Restart)
		}
		if d, ok := cs.DependsOn["init"]; !ok || d.Condition != "service_completed_successfully" {
			t.Errorf("%s: must start after init completed (depends_on init: service_completed_successfully)", s.Name)
		}
		for dep := range cs.DependsOn {
			if dep != "init" {
				// Roles wait for the cluster themselves (--startup-timeout);
				// an order in compose would hide a role that cannot.
				t.Errorf("%s: depends on %s; roles must start without waiting for other services", s.Name, dep)
			}
		}
		if s.Ready != "" {
			path := "/readyz"
			if s.Image == "nats" {
				path = "/healthz"
			}
			check := strings.Join(cs.Healthcheck.Test, " ")
			if !regexp.MustCompile(`http://[0-9.]+:` + s.Ready + regexp.QuoteMeta(path)).MatchString(check) {
				t.Errorf("%s: healthcheck %q does not ask %s on port %s", s.Name, check, path, s.Ready)
			}
		}
		for _, p := range s.Ports {
			if !slices.Contains(wantCmd, p) && !strings.Contains(strings.Join(wantCmd, " "), ":"+p) && s.Image != "nats" {
				t.Errorf("%s: port %s is in the topology but not in its command", s.Name, p)
			}
		}
	}

	init := c.Services["init"]
	if init.Restart != "no" && init.Restart != "" {
		t.Errorf("init: restart %q; a one-shot service must not restart", init.Restart)
	}
	if got, want := strings.Join(append(init.Entrypoint, init.Command...), "\n"), strings.Join(append([]string{"/bin/sh", "-ec"}, initScript(t)), "\n"); got != want {
		t.Errorf("init runs\n%s\nwant\n%s", got, want)
	}
	for _, s := range topology.Services {
		mount := s.Name + ":" + exportPath(s.Name)
		if s.Name == "hub" {
			mount = "hub:" + composeData
		}
		if !slices.Contains(init.Volumes, mount) {
			t.Errorf("init: volumes %v lack %s", init.Volumes, mount)
		}
	}

	ignore, err := os.ReadFile(filepath.Join("..", "..", ".dockerignore"))
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	for _, p := range []string{"var", "bin", ".git"} {
		if !slices.Contains(strings.Fields(string(ignore)), p) {
			t.Errorf(".dockerignore lacks %s (the default data directory and builds would go into the image's build context)", p)
		}
	}
}

// exportPath is where init sees service name's volume.
func exportPath(name string) string {
	if name == "hub" {
		return composeData
	}
	return composeExport + "/" + name
}

// initScript is the init service's shell script for topology.Init.
func initScript(t *testing.T) string {
	var b strings.Builder
	for _, step := range topology.Init {
		if len(step.Secret) > 0 {
			files := expand(step.Secret, composeData, exportPath)
			fmt.Fprintf(&b, "[ -s %s ] || { secret=$(head -c 18 /dev/urandom | base64); for f in %s; do printf '%%s\\n' \"$secret\" > $f; chmod 600 $f; done; }\n",
				files[0], strings.Join(files, " "))
			continue
		}
		args := expand(step.Args, composeData, exportPath)
		for _, a := range args {
			if strings.ContainsAny(a, " \t'\"$;&|<>*?()`\\") {
				t.Fatalf("init argument %q needs shell quoting", a)
			}
		}
		line := "sendense --data " + composeData + " " + strings.Join(args, " ")
		if step.Stdout != "" {
			line += " > " + expandOne(step.Stdout, composeData, exportPath)
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// hostAddr is the num-th address of prefix cidr.
func hostAddr(t *testing.T, cidr string, num int) string {
	p := netip.MustParsePrefix(cidr)
	a := p.Addr()
	for range num {
		a = a.Next()
	}
	if !p.Contains(a) {
		t.Fatalf("host number %d outside %s", num, cidr)
	}
	return a.String()
}

// natsServerVersion is the version of the nats-server module this test
// binary links: the embedded server's.
func natsServerVersion(t *testing.T) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Fatal("no build info")
	}
	for _, d := range bi.Deps {
		if d.Path == "github.com/nats-io/nats-server/v2" {
			return d.Version
		}
	}
	t.Fatal("nats-server is not a dependency")
	return ""
}
