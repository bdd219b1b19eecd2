package bpf

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// XDP verdicts.
const (
	xdpActDrop = 1
	xdpActPass = 2
)

// TestFrontendAddrDrops: traffic from outside to a port of a
// services-only address that no Service serves is dropped, in tc
// (from_netdev) and in XDP (xdp_netdev), in both families; the served
// port, other addresses, ICMP and later fragments are not touched, and
// unmarking the address lets everything through again.
func TestFrontendAddrDrops(t *testing.T) {
	d := loadTest(t, Config{})
	lb4, lb6 := ap("198.51.100.9:80"), ap("[2001:db8:9::9]:80")
	be4, be6 := ap("10.244.1.5:8080"), ap("[fd00:244:1::5]:8080")
	for i, s := range []struct{ vip, be netip.AddrPort }{{lb4, be4}, {lb6, be6}} {
		install(t, d, testService{id: uint32(90 + i), vip: s.vip, proto: unix.IPPROTO_TCP, scope: ScopeExternal,
			backends: []testBackend{{id: uint32(9000 + i), addr: s.be, flags: BackendLocal}}})
	}
	for _, a := range []netip.AddrPort{lb4, lb6} {
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
	} {
		t.Run(c.name, func(t *testing.T) {
			pkt := build(t, c.f)
			wantTC, wantXDP := uint32(actOK), uint32(xdpActPass)
			if c.dropped {
				wantTC, wantXDP = actShot, xdpActDrop
			}
			if ret, _ := run(t, d.FromNetdev, pkt); ret != wantTC {
				t.Errorf("from_netdev verdict %d, want %d", ret, wantTC)
			}
			if ret, _ := run(t, d.XDPNetdev, pkt); ret != wantXDP {
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
		if ret, _ := run(t, d.FromNetdev, pkt); ret != actOK {
			t.Errorf("from_netdev verdict %d, want pass", ret)
		}
		if ret, _ := run(t, d.XDPNetdev, pkt); ret != xdpActPass {
			t.Errorf("xdp_netdev verdict %d, want pass", ret)
		}
		addrs, err := d.FrontendAddrList()
		if err != nil || len(addrs) != 1 || addrs[0] != lb6.Addr() {
			t.Errorf("frontend addresses %v (%v), want [%s]", addrs, err, lb6.Addr())
		}
	})
}
