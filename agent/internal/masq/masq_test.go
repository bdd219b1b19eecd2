package masq

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

// testSNATMark stands for bpf.MarkSNAT (this package takes it as a value).
const testSNATMark = 0x534c

// TestMasquerade: a pod reaching an address outside the cluster CIDR is
// seen from the node's address (and the reply finds its way back); a pod
// reaching another pod keeps its own address. Everything runs in
// namespaces the test creates; "outside" is one of them.
func TestMasquerade(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	node := netnstest.New(t, "sl-mnode")
	pod := netnstest.New(t, "sl-mpod")
	peer := netnstest.New(t, "sl-mpeer")
	outside := netnstest.New(t, "sl-mout")
	node.VethPair(t, "hpod", pod, "eth0")
	node.VethPair(t, "hpeer", peer, "eth0")
	node.VethPair(t, "uplink", outside, "eth0")
	node.Sysctl(t, "net.ipv4.ip_forward=1")
	node.Sysctl(t, "net.ipv6.conf.all.forwarding=1")
	for _, c := range []struct {
		ns            *netnstest.NS
		dev, addr, gw string
	}{
		{pod, "eth0", "10.244.0.2/32", "10.244.0.1"}, {pod, "eth0", "fd00:10:244::2/128", "fd00:10:244::1"},
		{peer, "eth0", "10.244.0.3/32", "10.244.0.1"}, {peer, "eth0", "fd00:10:244::3/128", "fd00:10:244::1"},
	} {
		c.ns.IP(t, "addr", "add", c.addr, "dev", c.dev)
		c.ns.IP(t, "route", "add", strings.Split(c.gw, "/")[0], "dev", c.dev)
		c.ns.IP(t, "route", "add", "default", "via", c.gw)
	}
	node.IP(t, "addr", "add", "10.244.0.1/32", "dev", "hpod")
	node.IP(t, "addr", "add", "fd00:10:244::1/128", "dev", "hpod")
	// NDP answers only for addresses on the asking interface.
	node.IP(t, "addr", "add", "fd00:10:244::1/128", "dev", "hpeer")
	node.IP(t, "route", "add", "10.244.0.2/32", "dev", "hpod")
	node.IP(t, "route", "add", "fd00:10:244::2/128", "dev", "hpod")
	node.IP(t, "route", "add", "10.244.0.3/32", "dev", "hpeer")
	node.IP(t, "route", "add", "fd00:10:244::3/128", "dev", "hpeer")
	node.IP(t, "addr", "add", "192.0.2.1/24", "dev", "uplink")
	node.IP(t, "addr", "add", "2001:db8::1/64", "dev", "uplink", "nodad")
	outside.IP(t, "addr", "add", "192.0.2.5/24", "dev", "eth0")
	outside.IP(t, "addr", "add", "2001:db8::5/64", "dev", "eth0", "nodad")
	// outside has no route to the pods: without masquerade no reply returns.

	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")}
	for range 2 { // applying again replaces the table
		var err error
		node.Do(t, func() { err = Apply(cidrs, testSNATMark) })
		if err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("ip", "netns", "exec", node.Name, "nft", "list", "table", "inet", TableName).CombinedOutput()
	if err != nil || strings.Count(string(out), "masquerade") != 3 {
		t.Fatalf("nft list table:\n%s%v", out, err)
	}

	outside.ServeWhoAmI(t, 7000)
	peer.ServeWhoAmI(t, 7000)
	for _, c := range []struct{ dst, want string }{
		{"192.0.2.5:7000", "192.0.2.1"},
		{"[2001:db8::5]:7000", "2001:db8::1"},
		{"10.244.0.3:7000", "10.244.0.2"},
		{"[fd00:10:244::3]:7000", "fd00:10:244::2"},
	} {
		if got := pod.WhoAmI(t, "tcp", netip.MustParseAddrPort(c.dst)); got != c.want {
			t.Errorf("pod -> %s seen from %q, want %s", c.dst, got, c.want)
		}
	}

	// NodePort traffic from_netdev sends to a backend elsewhere carries the
	// SNAT mark: it must reach the backend from the node's address, so
	// the reply comes back through the node. Here a stand-in rule marks
	// what outside sends to the peer pod; unmarked, outside is seen.
	outside.IP(t, "route", "add", "10.244.0.0/16", "via", "192.0.2.1")
	if got := outside.WhoAmI(t, "tcp", netip.MustParseAddrPort("10.244.0.3:7000")); got != "192.0.2.5" {
		t.Errorf("unmarked outside -> pod seen from %q, want 192.0.2.5 (kept)", got)
	}
	nft := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", node.Name, "nft"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %s %v", args, out, err)
		}
	}
	nft("add", "table", "ip", "marktest")
	nft("add", "chain", "ip", "marktest", "pre", "{ type filter hook prerouting priority -150 ; }")
	nft("add", "rule", "ip", "marktest", "pre", "ip", "saddr", "192.0.2.5", "meta", "mark", "set", fmt.Sprint(testSNATMark))
	if got := outside.WhoAmI(t, "tcp", netip.MustParseAddrPort("10.244.0.3:7000")); got != "10.244.0.1" {
		t.Errorf("marked outside -> pod seen from %q, want the node's address 10.244.0.1 (masqueraded)", got)
	}

	node.Do(t, func() { err = Apply(nil, 0) })
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "netns", "exec", node.Name, "nft", "list", "tables").CombinedOutput(); err != nil || strings.Contains(string(out), TableName) {
		t.Errorf("table left after Apply(nil, 0): %s %v", out, err)
	}
}
