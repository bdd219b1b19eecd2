package dsr

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/sluice-net/sluice/agent/internal/agenttest"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/testutil/bpffs"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

func TestDesired(t *testing.T) {
	nodes := []*v1.Node{
		agenttest.Node("self", []string{"10.244.0.0/24", "fd00:10:244::/64"}, "192.168.1.10", "fd00:1::10"),
		agenttest.Node("b", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, "192.168.1.11", "fd00:1::11"),
		agenttest.Node("v6-only", []string{"fd00:10:244:2::/64"}, "fd00:1::12"),
		agenttest.Node("bad", []string{"nope"}, "not-an-ip", "192.168.1.14"),
	}
	s, errs := Desired(nodes, "self")
	var eps []string
	for _, r := range s.Endpoints {
		eps = append(eps, fmt.Sprintf("%s via %s", r.Dst, r.Via))
	}
	// Sent over IPv4 where the node has it, whatever the pod's family.
	want := "10.244.1.0/24 via 192.168.1.11,fd00:10:244:1::/64 via 192.168.1.11,fd00:10:244:2::/64 via fd00:1::12"
	if got := strings.Join(eps, ","); got != want {
		t.Errorf("endpoints %s, want %s", got, want)
	}
	if got := fmt.Sprint(s.Nodes); got != "[192.168.1.10 192.168.1.11 192.168.1.14 fd00:1::10 fd00:1::11 fd00:1::12]" {
		t.Errorf("nodes %s", got)
	}
	if got := fmt.Sprint(s.Self); got != "[192.168.1.10 fd00:1::10]" {
		t.Errorf("self %s", got)
	}
	if msgs := fmt.Sprint(errs); !strings.Contains(msgs, `node bad: status.addresses: "not-an-ip" is not an IP address`) {
		t.Errorf("errors %s; want the bad address named", msgs)
	}
}

// kernelNode is a node (192.168.1.10 on eth0, in a namespace of its own,
// after prepare) with a DSR datapath, and a sync that runs a Kernel writer
// there for the given Nodes.
func kernelNode(t *testing.T, prefix string, prepare func(*netnstest.NS)) (*netnstest.NS, *bpf.Datapath, func(...*v1.Node)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and BPF")
	}
	bpffs.Require(t)
	ns := netnstest.New(t, prefix)
	ns.VethPair(t, "eth0", nil, "peer0")
	ns.IP(t, "addr", "add", "192.168.1.10/24", "dev", "eth0")
	if prepare != nil {
		prepare(ns)
	}
	dp, err := bpf.Load(bpf.Config{PinRoot: bpffs.Root(t), MaglevSize: 251, DSR: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	k := &Kernel{Datapath: dp, Endpoints: true}
	return ns, dp, func(nodes ...*v1.Node) {
		t.Helper()
		s, _ := Desired(nodes, "self")
		var err error
		ns.Do(t, func() { _, err = k.Sync(s) })
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestKernel: the writer fills the datapath's node maps and endpoints and
// keeps a managed (kernel-resolved) neighbour entry for each other node,
// and undoes each when the node leaves.
func TestKernel(t *testing.T) {
	ns, dp, sync := kernelNode(t, "sl-dsr-nodes", nil)
	self := agenttest.Node("self", []string{"10.244.0.0/24"}, "192.168.1.10")
	b := agenttest.Node("b", []string{"10.244.1.0/24"}, "192.168.1.11")
	sync(self, b)
	nodes, err := dp.NodeAddrList()
	slices.SortFunc(nodes, netip.Addr.Compare)
	if fmt.Sprint(nodes) != "[192.168.1.10 192.168.1.11]" || err != nil {
		t.Errorf("node addresses %v (%v)", nodes, err)
	}
	eps, _ := dp.TunnelEndpoints()
	if fmt.Sprint(eps) != "map[10.244.1.0/24:192.168.1.11]" {
		t.Errorf("endpoints %v", eps)
	}
	neigh := func() string {
		out, err := exec.Command("ip", "-n", ns.Name, "neigh", "show", "dev", "eth0").CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	if got := neigh(); !strings.Contains(got, "192.168.1.11") || !strings.Contains(got, "managed") {
		t.Errorf("neighbours %q: want a managed entry for node b", got)
	}

	sync(self) // b leaves
	nodes, _ = dp.NodeAddrList()
	eps, _ = dp.TunnelEndpoints()
	if fmt.Sprint(nodes) != "[192.168.1.10]" || len(eps) != 0 {
		t.Errorf("after b left: nodes %v, endpoints %v", nodes, eps)
	}
	if got := neigh(); strings.Contains(got, "192.168.1.11") {
		t.Errorf("after b left, neighbours %q", got)
	}
}

// TestKernelNeighbours: a starting writer removes the managed entries an
// earlier agent left for nodes that are gone, and nodes behind one router
// share its entry, which stays while any of them does.
func TestKernelNeighbours(t *testing.T) {
	ns, _, sync := kernelNode(t, "sl-dsr-neigh", func(ns *netnstest.NS) {
		ns.IP(t, "route", "add", "10.99.0.0/16", "via", "192.168.1.1")
		// Left by an agent before a restart, for a node that has left since.
		ns.IP(t, "neigh", "replace", "192.168.1.99", "dev", "eth0", "managed")
	})
	managed := func() []string {
		out, err := exec.Command("ip", "-n", ns.Name, "neigh", "show", "dev", "eth0").CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		var addrs []string
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.Contains(line, "managed") {
				addrs = append(addrs, f[0])
			}
		}
		slices.Sort(addrs)
		return addrs
	}
	self := agenttest.Node("self", []string{"10.244.0.0/24"}, "192.168.1.10")
	c := agenttest.Node("c", []string{"10.244.3.0/24"}, "10.99.0.3")
	d := agenttest.Node("d", []string{"10.244.4.0/24"}, "10.99.0.4")
	sync(self, c, d)
	if got := managed(); fmt.Sprint(got) != "[192.168.1.1]" {
		t.Errorf("managed entries %v; want only the router's, shared by c and d (the one left for 192.168.1.99 removed)", got)
	}
	sync(self, d) // c leaves; d still needs the router
	if got := managed(); fmt.Sprint(got) != "[192.168.1.1]" {
		t.Errorf("after c left: managed entries %v; want the router's kept for d", got)
	}
	sync(self)
	if got := managed(); len(got) != 0 {
		t.Errorf("after every node left: managed entries %v", got)
	}
}
