package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Everything the local cluster makes is named or placed here, so `down`
// finds it all again.
const (
	stateDir    = "/run/sluice-localcluster"
	netnsPrefix = "sluicelc-"
	podNetns    = netnsPrefix + "pod-"
	underlayNS  = netnsPrefix + "underlay"
	controlNS   = netnsPrefix + "cp"
	bpffsDir    = "/sys/fs/bpf/sluice-localcluster"
	cgroupName  = "sluice-localcluster"
	bridgeName  = "br-underlay"
	apiPortInNS = 6443
	// The cluster is dual-stack, IPv4 first: Services are IPv4 unless
	// they ask for IPv6, pods and nodes have one address of each family.
	// The IPv6 ranges are kind's defaults.
	serviceCIDRs = "10.96.0.0/16,fd00:10:96::/112"
	clusterCIDRs = "10.244.0.0/16,fd00:10:244::/56"
)

// underlay addresses, one of each family: the bridge (an "outside" client
// on the node network) is .1, the control plane .2, then one per node.
// The IPv6 ones mirror the IPv4 ones (192.168.77.11 is fd77::11).
var (
	controlPlaneIP  = netip.MustParseAddr("192.168.77.2")
	controlPlaneIP6 = netip.MustParseAddr("fd77::2")
)

const (
	underlayBits  = 24
	underlayBits6 = 64
)

// subnet is one segment of the underlay: a bridge in the underlay's
// namespace, whose addresses are the segment's gateway.
type subnet struct {
	bridge string
	v4, v6 int // 192.168.<v4>.0/24 and fd<v6>::/64
}

func (s subnet) gateways() []netip.Addr {
	return []netip.Addr{netip.MustParseAddr(fmt.Sprintf("192.168.%d.1", s.v4)), netip.MustParseAddr(fmt.Sprintf("fd%d::1", s.v6))}
}

// The underlay's segments: the first holds the control plane and, unless
// the cluster is routed, every node. A routed cluster (up --overlay) puts
// every other node on the second: the underlay's namespace routes
// between them, as a data centre's routers would, and knows nothing of
// pod CIDRs.
var (
	firstSubnet  = subnet{bridge: bridgeName, v4: 77, v6: 77}
	secondSubnet = subnet{bridge: "br-underlay2", v4: 78, v6: 78}
)

func nodeName(i int) string { return fmt.Sprintf("node-%d", i+1) }

// nodeSubnet is node i's segment.
func nodeSubnet(i int, routed bool) subnet {
	if routed && i%2 == 1 {
		return secondSubnet
	}
	return firstSubnet
}

// nodeIPs are the node's InternalIPs, IPv4 first.
func nodeIPs(i int, routed bool) []string {
	s := nodeSubnet(i, routed)
	return []string{fmt.Sprintf("192.168.%d.%d", s.v4, 11+i), fmt.Sprintf("fd%d::%d", s.v6, 11+i)}
}

// nodePodCIDRs are the node's pod CIDRs, IPv4 first, as node IPAM would
// cut them from clusterCIDRs.
func nodePodCIDRs(i int) []string {
	return []string{fmt.Sprintf("10.244.%d.0/24", i+1), fmt.Sprintf("fd00:10:244:%x::/64", i+1)}
}

// state is what `up` recorded for the other subcommands.
type state struct {
	APIPort int `json:"apiPort"`
	// Overlay: the nodes are on two routed subnets and the agents run
	// routingMode vxlan (up --overlay).
	Overlay bool `json:"overlay,omitempty"`
	// DSR: the agents run acceleration native and loadBalancerMode dsr
	// (up --dsr).
	DSR bool `json:"dsr,omitempty"`
	// XDP: the agents run acceleration native and loadBalancerMode snat,
	// the XDP masquerade (up --xdp).
	XDP     bool               `json:"xdp,omitempty"`
	K8sBin  string             `json:"k8sBin"`
	Nodes   []nodeState        `json:"nodes"`
	Daemons map[string]*daemon `json:"daemons"`
}

type nodeState struct {
	Name string `json:"name"`
	// IPs and PodCIDRs list IPv4 first, then IPv6.
	IPs      []string `json:"ips"`
	PodCIDRs []string `json:"podCIDRs"`
	Netns    string   `json:"netns"`
	// Proxy is what serves Services on the node: sluice (the default),
	// or kube-proxy in iptables or nftables mode (benchmarks).
	Proxy string `json:"proxy"`
	// Host stands for the node's filesystem, bpffs and cgroup.
	Host hostPaths `json:"host"`
}

func path(elem ...string) string { return filepath.Join(append([]string{stateDir}, elem...)...) }

func adminKubeconfig() string { return path("admin.kubeconfig") }

func loadState() (*state, error) {
	b, err := os.ReadFile(path("state.json"))
	if os.IsNotExist(err) {
		return nil, fmt.Errorf("the local cluster is not up (no %s); run: go run ./hack/localcluster up", path("state.json"))
	}
	if err != nil {
		return nil, err
	}
	s := &state{}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("%s: %w", path("state.json"), err)
	}
	return s, nil
}

func (s *state) save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := path("state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path("state.json"))
}

// loadNode loads the cluster's state and the node a NODE command names
// in its only argument, or fails with usage.
func loadNode(args []string, usage string) (*state, *nodeState, error) {
	if len(args) != 1 {
		return nil, nil, errors.New("usage: " + usage)
	}
	s, err := loadState()
	if err != nil {
		return nil, nil, err
	}
	node, err := s.node(args[0])
	return s, node, err
}

func (s *state) node(name string) (*nodeState, error) {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i], nil
		}
	}
	names := make([]string, len(s.Nodes))
	for i, n := range s.Nodes {
		names[i] = n.Name
	}
	return nil, fmt.Errorf("no node %q (nodes: %s)", name, strings.Join(names, ", "))
}

// hostPaths maps a path on a real node's host to where this simulated
// node keeps it: bpffs and cgroup get directories of their own on the real
// mounts, everything else lives under the node's root directory.
type hostPaths struct {
	Root   string `json:"root"`
	BPFFS  string `json:"bpffs"`
	Cgroup string `json:"cgroup"`
}

// Map translates a host path.
func (h hostPaths) Map(p string) string {
	for _, m := range []struct{ real, sim string }{{"/sys/fs/bpf", h.BPFFS}, {"/sys/fs/cgroup", h.Cgroup}} {
		if p == m.real || strings.HasPrefix(p, m.real+"/") {
			return m.sim + strings.TrimPrefix(p, m.real)
		}
	}
	return filepath.Join(h.Root, p)
}

// cgroup2Root finds the cgroup v2 mount (/sys/fs/cgroup on unified hosts,
// /sys/fs/cgroup/unified on hybrid ones).
func cgroup2Root() (string, error) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == "cgroup2" {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 mount in /proc/self/mounts (socket load balancing needs one)")
}
