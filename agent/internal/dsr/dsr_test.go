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

// TestKernel: the writer fills the datapath's node maps and endpoints and
// keeps a managed (kernel-resolved) neighbour entry for each other node,
// and undoes each when the node leaves.
func TestKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and BPF")
	}
	bpffs.Require(t)
	ns := netnstest.New(t, "sl-dsr-nodes")
	ns.VethPair(t, "eth0", nil, "peer0")
	ns.IP(t, "addr", "add", "192.168.1.10/24", "dev", "eth0")
	dp, err := bpf.Load(bpf.Config{PinRoot: bpffs.Root(t), MaglevSize: 251, DSR: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	k := &Kernel{Datapath: dp, Endpoints: true}
	sync := func(nodes ...*v1.Node) {
		t.Helper()
		s, _ := Desired(nodes, "self")
		ns.Do(t, func() { _, err = k.Sync(s) })
		if err != nil {
			t.Fatal(err)
		}
	}
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
