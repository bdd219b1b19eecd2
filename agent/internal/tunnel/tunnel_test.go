package tunnel

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/sluice-net/sluice/agent/internal/routes"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/testutil/bpffs"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

func loadDatapath(t *testing.T) *bpf.Datapath {
	t.Helper()
	bpffs.Require(t)
	dp, err := bpf.Load(bpf.Config{PinRoot: bpffs.Root(t), MaglevSize: 251})
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

// overlayNodes builds two nodes on one underlay link and a pod behind node
// B (10.244.1.2, fd00:10:244:1::2), each node with its overlay device. Node
// A has no route to the pod but the overlay's.
func overlayNodes(t *testing.T) (a, pod *netnstest.NS, dpA *bpf.Datapath, devA int) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and BPF")
	}
	a, b := netnstest.New(t, "sl-tun-a"), netnstest.New(t, "sl-tun-b")
	pod = netnstest.New(t, "sl-tun-pod")
	a.VethPair(t, "eth0", b, "uplink")
	a.IP(t, "addr", "add", "192.168.1.10/24", "dev", "eth0")
	a.IP(t, "addr", "add", "fd00:1::10/64", "dev", "eth0", "nodad")
	b.IP(t, "addr", "add", "192.168.1.11/24", "dev", "uplink")
	b.IP(t, "addr", "add", "fd00:1::11/64", "dev", "uplink", "nodad")
	b.VethPair(t, "pod", pod, "eth0")
	b.IP(t, "addr", "add", "10.244.1.1/24", "dev", "pod")
	b.IP(t, "addr", "add", "fd00:10:244:1::1/64", "dev", "pod", "nodad")
	b.Sysctl(t, "net.ipv4.ip_forward=1")
	b.Sysctl(t, "net.ipv6.conf.all.forwarding=1")
	pod.IP(t, "addr", "add", "10.244.1.2/24", "dev", "eth0")
	pod.IP(t, "addr", "add", "fd00:10:244:1::2/64", "dev", "eth0", "nodad")
	pod.IP(t, "route", "add", "default", "via", "10.244.1.1")
	pod.IP(t, "-6", "route", "add", "default", "via", "fd00:10:244:1::1")

	dpA, dpB := loadDatapath(t), loadDatapath(t)
	var err error
	a.Do(t, func() { devA, err = Ensure(dpA, 1500-Overhead4, bpf.AttachTCX) })
	if err != nil {
		t.Fatal(err)
	}
	b.Do(t, func() { _, err = Ensure(dpB, 1500-Overhead4, bpf.AttachTCX) })
	if err != nil {
		t.Fatal(err)
	}
	pod.ServeWhoAmI(t, 8080)
	return a, pod, dpA, devA
}

// TestOverlay: node A reaches a pod behind node B, IPv4 and IPv6, only
// through the VXLAN overlay over the IPv4 underlay, and the pod sees node
// A's own address. A pod CIDR whose tunnel endpoint is missing is dropped
// and counted, and the overlay's routes and endpoints go when the node
// does.
func TestOverlay(t *testing.T) {
	a, _, dpA, devA := overlayNodes(t)
	v4, v6 := netip.MustParseAddrPort("10.244.1.2:8080"), netip.MustParseAddrPort("[fd00:10:244:1::2]:8080")
	for _, dst := range []netip.AddrPort{v4, v6} {
		if got := a.WhoAmI(t, "tcp", dst); !strings.Contains(got, "network is unreachable") {
			t.Fatalf("before the overlay's routes, node A -> %s: %q, want unreachable (no other path)", dst, got)
		}
	}
	table := Table{Datapath: dpA, Dev: devA}
	sync := func(rs ...routes.Route) {
		t.Helper()
		var err error
		a.Do(t, func() { _, err = table.Sync(rs) })
		if err != nil {
			t.Fatal(err)
		}
	}
	nodeB := netip.MustParseAddr("192.168.1.11")
	sync(routes.Route{Dst: netip.MustParsePrefix("10.244.1.0/24"), Via: nodeB},
		routes.Route{Dst: netip.MustParsePrefix("fd00:10:244:1::/64"), Via: nodeB})
	for dst, want := range map[netip.AddrPort]string{v4: "192.168.1.10", v6: "fd00:1::10"} {
		for _, network := range []string{"tcp", "udp"} {
			if got := a.WhoAmI(t, network, dst); got != want {
				t.Errorf("node A -> pod %s over %s through the overlay: %q, want the pod to see %s", dst, network, got, want)
			}
		}
	}
	out, err := exec.Command("ip", "-n", a.Name, "route", "show", "proto", "92").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "10.244.1.0/24 dev "+DeviceName) {
		t.Errorf("node A's routes: %s %v; want 10.244.1.0/24 dev %s", out, err, DeviceName)
	}

	// Hostile twin: the route stays, the endpoint goes (a map the agent
	// could not write): to_tunnel drops rather than send it anywhere.
	if err := dpA.DeleteTunnelEndpoint(netip.MustParsePrefix("10.244.1.0/24")); err != nil {
		t.Fatal(err)
	}
	if got := a.WhoAmI(t, "udp", v4); got == "192.168.1.10" {
		t.Errorf("without a tunnel endpoint the pod still answered")
	}
	drops, err := dpA.DropCounts()
	if err != nil {
		t.Fatal(err)
	}
	if drops[bpf.DropNoTunnelEndpoint].Packets == 0 {
		t.Errorf("no no_tunnel_endpoint drop counted: %v", drops)
	}

	// The node leaves: its route and endpoints go.
	sync()
	out, _ = exec.Command("ip", "-n", a.Name, "route", "show", "proto", "92").CombinedOutput()
	eps, err := dpA.TunnelEndpoints()
	if strings.TrimSpace(string(out)) != "" || len(eps) != 0 || err != nil {
		t.Errorf("after the node left: routes %q, endpoints %v (%v); want none", out, eps, err)
	}
}

// TestEnsure: a restarted agent finds its device and keeps it; a device of
// the same name that is not Sluice's is refused by name, not reused.
func TestEnsure(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and BPF")
	}
	dp := loadDatapath(t)
	ns := netnstest.New(t, "sl-tun")
	var first, again int
	var err, errAgain error
	ns.Do(t, func() {
		first, err = Ensure(dp, 1400, bpf.AttachTCX)
		again, errAgain = Ensure(dp, 1450, bpf.AttachTCX)
	})
	if err != nil || errAgain != nil || first != again {
		t.Fatalf("Ensure twice: ifindex %d then %d, errors %v, %v; want the same device", first, again, err, errAgain)
	}
	out, _ := exec.Command("ip", "-n", ns.Name, "-d", "link", "show", DeviceName).CombinedOutput()
	for _, want := range []string{"mtu 1450", "NOARP", "UP", "external", "dstport 8472", "0e:73:6c:75:69:63"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("device after a restart: %s\nwant %q", out, want)
		}
	}

	other := netnstest.New(t, "sl-tun-other")
	other.IP(t, "link", "add", DeviceName, "type", "bridge")
	other.Do(t, func() { _, err = Ensure(dp, 1450, bpf.AttachTCX) })
	if err == nil || !strings.Contains(err.Error(), "not Sluice's overlay device") {
		t.Errorf("Ensure over a bridge named %s: %v; want it refused", DeviceName, err)
	}
}
