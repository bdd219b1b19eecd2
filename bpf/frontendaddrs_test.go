package bpf

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

// XDP verdicts.
const (
	xdpActDrop = 1
	xdpActPass = 2
)

// frontendNode is a node's network namespace for test runs of the uplink
// programs (BPF_PROG_TEST_RUN looks routes up in the caller's namespace):
// it forwards, routes the documentation prefixes 198.51.100.0/24 and
// 2001:db8:9::/64 on towards a router, and holds 198.51.100.20 itself. run
// runs prog on pkt there.
func frontendNode(t *testing.T) func(prog *ebpf.Program, pkt []byte) uint32 {
	t.Helper()
	ns := netnstest.New(t, "sl-frontend")
	ns.IP(t, "link", "set", "lo", "up")
	ns.VethPair(t, "up0", nil, "up0p")
	ns.IP(t, "addr", "add", "192.0.2.10/24", "dev", "up0")
	ns.IP(t, "addr", "add", "2001:db8:1::10/64", "dev", "up0", "nodad")
	ns.IP(t, "route", "add", "198.51.100.0/24", "via", "192.0.2.1")
	ns.IP(t, "route", "add", "2001:db8:9::/64", "via", "2001:db8:1::1")
	ns.IP(t, "addr", "add", "198.51.100.20/32", "dev", "lo")
	ns.Sysctl(t, "net.ipv4.ip_forward=1")
	ns.Sysctl(t, "net.ipv6.conf.all.forwarding=1")
	return func(prog *ebpf.Program, pkt []byte) (ret uint32) {
		t.Helper()
		ns.Do(t, func() { ret, _ = run(t, prog, pkt) })
		return ret
	}
}

// TestFrontendAddrDrops: traffic from outside to a port of a
// services-only address that no Service serves, which the node would
// route on, is dropped, in tc (from_netdev) and in XDP (xdp_netdev), in
// both families; the served port, other addresses, ICMP, an address the
// node holds itself (a VIP added on the node, a cloud's local route) are
// not touched, and unmarking the address lets everything through again.
func TestFrontendAddrDrops(t *testing.T) {
	d := loadTest(t, Config{})
	runIn := frontendNode(t)
	lb4, lb6 := ap("198.51.100.9:80"), ap("[2001:db8:9::9]:80")
	held := ap("198.51.100.20:80") // the node's own address too
	be4, be6 := ap("10.244.1.5:8080"), ap("[fd00:244:1::5]:8080")
	for i, s := range []struct{ vip, be netip.AddrPort }{{lb4, be4}, {lb6, be6}, {held, be4}} {
		install(t, d, testService{id: uint32(90 + i), vip: s.vip, proto: unix.IPPROTO_TCP, scope: ScopeExternal,
			backends: []testBackend{{id: uint32(9000 + i), addr: s.be, flags: BackendLocal}}})
	}
	for _, a := range []netip.AddrPort{lb4, lb6, held} {
		if err := d.PutFrontendAddr(a.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	other := func(vip netip.AddrPort, port uint16) netip.AddrPort { return netip.AddrPortFrom(vip.Addr(), port) }
	client4, client6 := ap("192.0.2.1:40000"), ap("[2001:db8:1::1]:40000")
	for _, c := range []struct {
		name    string
		f       flow
		dropped bool
	}{
		{"IPv4, a port no Service serves", flow{src: client4, dst: other(lb4, 81), proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}, true},
		{"IPv4, the served port over UDP", flow{src: client4, dst: lb4, proto: unix.IPPROTO_UDP, payload: []byte("x")}, true},
		{"IPv6, a port no Service serves", flow{src: client6, dst: other(lb6, 22), proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}, true},
		{"IPv4, the served port", flow{src: client4, dst: lb4, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}, false},
		{"IPv6, the served port", flow{src: client6, dst: lb6, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}, false},
		{"an address that is no frontend", flow{src: client4, dst: ap("198.51.100.10:81"), proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}, false},
		{"ICMP echo to the address", flow{src: client4, dst: other(lb4, 0), proto: unix.IPPROTO_ICMP, icmp: []byte{8, 0, 0, 1, 0, 1}}, false},
		{"an address the node holds itself, to its own port", flow{src: client4, dst: other(held, 22), proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			pkt := build(t, c.f)
			wantTC, wantXDP := uint32(actOK), uint32(xdpActPass)
			if c.dropped {
				wantTC, wantXDP = actShot, xdpActDrop
			}
			if ret := runIn(d.FromNetdev, pkt); ret != wantTC {
				t.Errorf("from_netdev verdict %d, want %d", ret, wantTC)
			}
			if ret := runIn(d.XDPNetdev, pkt); ret != wantXDP {
				t.Errorf("xdp_netdev verdict %d, want %d", ret, wantXDP)
			}
		})
	}
	// Three dropped packets, each by both programs.
	if got := dropsAt(t, d, DropNoFrontendPort, HookFromNetdev); got != 6 {
		t.Errorf("no_frontend_port drops at from_netdev: %d, want 6", got)
	}

	t.Run("unmarked, the address is the stack's again", func(t *testing.T) {
		if err := d.DeleteFrontendAddr(lb4.Addr()); err != nil {
			t.Fatal(err)
		}
		pkt := build(t, flow{src: client4, dst: other(lb4, 81), proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1})
		if ret := runIn(d.FromNetdev, pkt); ret != actOK {
			t.Errorf("from_netdev verdict %d, want pass", ret)
		}
		if ret := runIn(d.XDPNetdev, pkt); ret != xdpActPass {
			t.Errorf("xdp_netdev verdict %d, want pass", ret)
		}
		addrs, err := d.FrontendAddrList()
		if err != nil || len(addrs) != 2 {
			t.Errorf("frontend addresses %v (%v), want those of %s and %s", addrs, err, lb6, held)
		}
	})
}
