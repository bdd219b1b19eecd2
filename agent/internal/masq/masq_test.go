package masq

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sluice-net/sluice/internal/testutil/icmpecho"
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

	// The cluster CIDRs as Sluice takes them from the Nodes: one per node
	// and family (here the pod's and the peer's), one whole together.
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.0.2/32"), netip.MustParsePrefix("10.244.0.3/32"),
		netip.MustParsePrefix("fd00:10:244::2/128"), netip.MustParsePrefix("fd00:10:244::3/128")}
	nodePorts := PortRange{30000, 32767}
	masqPorts, err := PortsOutside(nodePorts)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // applying again replaces the table
		var err error
		node.Do(t, func() { err = Apply(cidrs, testSNATMark, masqPorts) })
		if err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("ip", "netns", "exec", node.Name, "nft", "list", "table", "inet", TableName).CombinedOutput()
	// Per CIDR and for the mark: one rule mapping TCP, UDP and SCTP ports,
	// one for the rest; per CIDR a return for traffic to it.
	if err != nil || strings.Count(string(out), "masquerade to :32768-65535") != 5 || strings.Count(string(out), "masquerade") != 10 ||
		strings.Count(string(out), "meta l4proto { tcp, udp, sctp }") != 5 || strings.Count(string(out), "return") != 4 {
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

	// A datagram or connection leaving from a source port inside the
	// NodePort range leaves from one outside it; other protocols are
	// masqueraded too.
	for _, c := range []struct{ network, src, dst string }{
		{"udp", "10.244.0.2:30080", "192.0.2.5:7001"},
		{"udp", "[fd00:10:244::2]:31000", "[2001:db8::5]:7001"},
		{"tcp", "10.244.0.2:32767", "192.0.2.5:7001"},
	} {
		srcPort := netip.MustParseAddrPort(c.src).Port()
		got := seenFrom(t, pod, outside, c.network, netip.MustParseAddrPort(c.src), netip.MustParseAddrPort(c.dst))
		if !got.IsValid() || got.Port() < masqPorts.Min || got.Port() >= nodePorts.Min && got.Port() <= nodePorts.Max {
			t.Errorf("%s from %s (a NodePort) to %s seen from %v, want a port in %v", c.network, c.src, c.dst, got, masqPorts)
		} else {
			t.Logf("%s from port %d seen from %v", c.network, srcPort, got)
		}
	}
	for _, dst := range []string{"192.0.2.5", "2001:db8::5"} {
		var ok bool
		pod.Do(t, func() { ok, err = icmpecho.Echo(netip.Addr{}, netip.MustParseAddr(dst), 0x5c, 3*time.Second) })
		if err != nil || !ok {
			t.Errorf("pod ping %s (masqueraded, no port mapping): reply %v, %v", dst, ok, err)
		}
	}

	node.Do(t, func() { err = Apply(nil, 0, PortRange{}) })
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "netns", "exec", node.Name, "nft", "list", "tables").CombinedOutput(); err != nil || strings.Contains(string(out), TableName) {
		t.Errorf("table left after Apply(nil, 0): %s %v", out, err)
	}
}

// seenFrom sends from src in ns to dst in server (one UDP datagram, or a
// TCP connection) and returns the address and port server saw it from.
func seenFrom(t *testing.T, ns, server *netnstest.NS, network string, src, dst netip.AddrPort) netip.AddrPort {
	t.Helper()
	seen := make(chan netip.AddrPort, 1)
	listen := net.JoinHostPort(dst.Addr().String(), fmt.Sprint(dst.Port()))
	server.Do(t, func() {
		switch network {
		case "udp":
			pc, err := net.ListenPacket("udp", listen)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pc.Close() })
			go func() {
				buf := make([]byte, 16)
				if _, from, err := pc.ReadFrom(buf); err == nil {
					seen <- from.(*net.UDPAddr).AddrPort()
				}
			}()
		case "tcp":
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				if c, err := ln.Accept(); err == nil {
					seen <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
					c.Close()
				}
			}()
		}
	})
	ns.Do(t, func() {
		d := net.Dialer{Timeout: 3 * time.Second}
		if network == "udp" {
			d.LocalAddr = net.UDPAddrFromAddrPort(src)
		} else {
			d.LocalAddr = net.TCPAddrFromAddrPort(src)
		}
		c, err := d.Dial(network, dst.String())
		if err != nil {
			t.Errorf("%s %v -> %v: %v", network, src, dst, err)
			return
		}
		defer c.Close()
		_, _ = c.Write([]byte("?"))
	})
	select {
	case a := <-seen:
		return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	case <-time.After(3 * time.Second):
		return netip.AddrPort{}
	}
}

func TestPortsOutside(t *testing.T) {
	for _, c := range []struct {
		nodePorts string
		want      PortRange
		err       string
	}{
		{"30000-32767", PortRange{32768, 65535}, ""},
		{"20000-22767", PortRange{32768, 65535}, ""},
		{"32768-35000", PortRange{1024, 32767}, ""},
		{"40000-50000", PortRange{1024, 39999}, ""},
		{"30000-60000", PortRange{1024, 29999}, ""},
		{"2000-63000", PortRange{63001, 65535}, ""},
		{"1500-65535", PortRange{}, "fewer than 1024 ports"},
		{"1-65535", PortRange{}, "fewer than 1024 ports"},
		{"2000-64600", PortRange{}, "fewer than 1024 ports"},
	} {
		np, err := ParsePortRange(c.nodePorts)
		if err != nil {
			t.Fatal(err)
		}
		got, err := PortsOutside(np)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: got %v, %v, want error %q", c.nodePorts, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: got %v, %v, want %v", c.nodePorts, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "30000-", "-5", "0-10", "32767-30000", "30000-70000", "a-b"} {
		if _, err := ParsePortRange(bad); err == nil {
			t.Errorf("ParsePortRange(%q): no error", bad)
		}
	}
	if r, err := ParsePortRange(" 30000 - 32767 "); err != nil || r != (PortRange{30000, 32767}) {
		t.Errorf("spaces: %v, %v", r, err)
	}
}

func TestSplitForXDP(t *testing.T) {
	for _, c := range []struct {
		ports, local   PortRange
		netfilter, xdp PortRange
		err            string
	}{
		// Linux's default ephemeral range, NodePorts 30000-32767.
		{PortRange{32768, 65535}, PortRange{32768, 60999}, PortRange{32768, 60999}, PortRange{61000, 65535}, ""},
		{PortRange{32768, 65535}, PortRange{1024, 60999}, PortRange{32768, 60999}, PortRange{61000, 65535}, ""},
		{PortRange{32768, 65535}, PortRange{32768, 65535}, PortRange{}, PortRange{}, "reaches the top"},
		{PortRange{32768, 65535}, PortRange{32768, 65000}, PortRange{}, PortRange{}, "fewer than 1024 ports"},
		// The ephemeral range below the masquerade range: nothing left
		// for netfilter.
		{PortRange{32768, 65535}, PortRange{1024, 20000}, PortRange{}, PortRange{}, "lies below the masquerade range"},
		{PortRange{32768, 65535}, PortRange{32768, 33000}, PortRange{}, PortRange{}, "fewer than 1024 ports below"},
		// NodePorts above the ephemeral range: masquerade below them.
		{PortRange{1024, 32767}, PortRange{32768, 60999}, PortRange{}, PortRange{}, "reaches the top"},
	} {
		nf, xdp, err := SplitForXDP(c.ports, c.local)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || nf != c.ports || xdp != (PortRange{}) {
				t.Errorf("SplitForXDP(%v, %v) = %v, %v, %v; want %v, none and an error %q", c.ports, c.local, nf, xdp, err, c.ports, c.err)
			}
			continue
		}
		if err != nil || nf != c.netfilter || xdp != c.xdp {
			t.Errorf("SplitForXDP(%v, %v) = %v, %v, %v; want %v, %v", c.ports, c.local, nf, xdp, err, c.netfilter, c.xdp)
		}
	}
}
