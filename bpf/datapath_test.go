package bpf

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Addresses used across the datapath tests.
var (
	client4 = ap("10.244.0.2:40000")
	vip4    = ap("10.96.0.10:80")
	be4a    = ap("10.244.1.5:8080")
	be4b    = ap("10.244.2.7:8080")
	client6 = ap("[fd00:244::2]:40000")
	vip6    = ap("[fd00:96::10]:80")
	be6a    = ap("[fd00:244:1::5]:8080")
)

func oneBackend(id uint32, vip netip.AddrPort, proto uint8, be netip.AddrPort) testService {
	return testService{id: id, vip: vip, proto: proto, backends: []testBackend{{id: id * 100, addr: be}}}
}

// TestDNAT checks the rewritten packet byte for byte, checksums included,
// for every family and protocol the datapath translates.
func TestDNAT(t *testing.T) {
	d := loadTest(t, Config{})
	cases := []struct {
		name string
		svc  testService
		in   flow
	}{
		{"tcp4 syn", oneBackend(1, vip4, unix.IPPROTO_TCP, be4a), flow{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1000}},
		{"tcp4 with ip options", oneBackend(1, vip4, unix.IPPROTO_TCP, be4a), flow{src: ap("10.244.0.9:1234"), dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S", ipv4Option: true}},
		{"udp4", oneBackend(2, ap("10.96.0.10:53"), unix.IPPROTO_UDP, ap("10.244.1.5:5353")), flow{src: client4, dst: ap("10.96.0.10:53"), proto: unix.IPPROTO_UDP, payload: []byte("query")}},
		{"udp4 without checksum", oneBackend(2, ap("10.96.0.10:53"), unix.IPPROTO_UDP, ap("10.244.1.5:5353")), flow{src: ap("10.244.0.3:999"), dst: ap("10.96.0.10:53"), proto: unix.IPPROTO_UDP, payload: []byte("q"), udpNoCsum: true}},
		{"tcp6", oneBackend(3, vip6, unix.IPPROTO_TCP, be6a), flow{src: client6, dst: vip6, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 7}},
		{"udp6", oneBackend(4, ap("[fd00:96::10]:53"), unix.IPPROTO_UDP, ap("[fd00:244:1::5]:5353")), flow{src: client6, dst: ap("[fd00:96::10]:53"), proto: unix.IPPROTO_UDP, payload: []byte("query6")}},
		{"sctp4 same port", oneBackend(5, ap("10.96.0.11:9999"), unix.IPPROTO_SCTP, ap("10.244.1.5:9999")), flow{src: client4, dst: ap("10.96.0.11:9999"), proto: unix.IPPROTO_SCTP}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			install(t, d, c.svc)
			ret, out := run(t, d.FromPod, build(t, c.in))
			if ret != actOK {
				t.Fatalf("verdict %d, want TC_ACT_OK", ret)
			}
			want := c.in
			want.dst = c.svc.backends[0].addr
			samePacket(t, "DNAT", out, build(t, want))
		})
	}
}

// TestReverseNAT: the backend's reply leaves to_pod from the service address.
func TestReverseNAT(t *testing.T) {
	d := loadTest(t, Config{})
	for _, c := range []struct {
		name         string
		vip, backend netip.AddrPort
		client       netip.AddrPort
		proto        uint8
	}{
		{"tcp4", vip4, be4a, client4, unix.IPPROTO_TCP},
		{"udp4", ap("10.96.0.10:53"), ap("10.244.1.5:5353"), client4, unix.IPPROTO_UDP},
		{"tcp6", vip6, be6a, client6, unix.IPPROTO_TCP},
		{"udp6", ap("[fd00:96::10]:53"), ap("[fd00:244:1::5]:5353"), client6, unix.IPPROTO_UDP},
	} {
		t.Run(c.name, func(t *testing.T) {
			install(t, d, oneBackend(7, c.vip, c.proto, c.backend))
			run(t, d.FromPod, build(t, flow{src: c.client, dst: c.vip, proto: c.proto, tcpFlags: "S", seq: 1}))
			reply := flow{src: c.backend, dst: c.client, proto: c.proto, tcpFlags: "SA", seq: 500, ack: 2,
				payload: []byte("answer"), srcMAC: hostMAC, dstMAC: podMAC}
			ret, out := run(t, d.ToPod, build(t, reply))
			if ret != actOK {
				t.Fatalf("verdict %d", ret)
			}
			want := reply
			want.src = c.vip
			samePacket(t, "reverse NAT", out, build(t, want))

			// A packet from the backend to someone else is not a reply.
			other := reply
			other.dst = ap("10.244.0.99:40000")
			if c.client.Addr().Is6() {
				other.dst = ap("[fd00:244::99]:40000")
			}
			in := build(t, other)
			_, out = run(t, d.ToPod, in)
			samePacket(t, "unrelated packet", out, in)
		})
	}
}

func backendOf(t *testing.T, out []byte) netip.AddrPort {
	t.Helper()
	if binary.BigEndian.Uint16(out[12:14]) == unix.ETH_P_IPV6 {
		a, _ := netip.AddrFromSlice(out[14+24 : 14+40])
		return netip.AddrPortFrom(a, binary.BigEndian.Uint16(out[14+40+2:]))
	}
	ihl := int(out[14]&0xf) * 4
	a, _ := netip.AddrFromSlice(out[14+16 : 14+20])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(out[14+ihl+2:]))
}

func manyBackends(n int, first uint32) []testBackend {
	var bs []testBackend
	for i := range n {
		bs = append(bs, testBackend{id: first + uint32(i), addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(10 + i), 5}), 8080)})
	}
	return bs
}

// TestFlowKeepsBackend: conntrack pins a flow to its backend while the
// service's backend set changes under it, and only a backend that is gone
// makes the flow move.
func TestFlowKeepsBackend(t *testing.T) {
	d := loadTest(t, Config{})
	svc := testService{id: 9, vip: vip4, proto: unix.IPPROTO_TCP, backends: manyBackends(2, 1)}
	install(t, d, svc)

	syn := flow{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S"}
	_, out := run(t, d.FromPod, build(t, syn))
	first := backendOf(t, out)

	// Replace the table with eight new backends plus the one in use: the
	// Maglev slot of this flow now almost surely names another backend.
	var kept testBackend
	for _, b := range svc.backends {
		if b.addr == first {
			kept = b
		}
	}
	svc.backends = append(manyBackends(8, 50), kept)
	for i := range svc.backends[:8] {
		svc.backends[i].addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 245, byte(i), 5}), 8080)
	}
	install(t, d, svc)

	ack := syn
	ack.tcpFlags = "A"
	for range 5 {
		_, out = run(t, d.FromPod, build(t, ack))
		if got := backendOf(t, out); got != first {
			t.Fatalf("established flow moved from %v to %v after a backend-set change", first, got)
		}
	}
	// New flows use the new table: across many source ports some must land
	// on the new backends.
	moved := 0
	for p := range uint16(50) {
		f := syn
		f.src = netip.AddrPortFrom(client4.Addr(), 20000+p)
		if _, out := run(t, d.FromPod, build(t, f)); backendOf(t, out) != first {
			moved++
		}
	}
	if moved == 0 {
		t.Error("no new flow used the new backends")
	}

	// The backend goes away: the flow is re-balanced onto a live one.
	if err := d.Backends.Delete(kept.id); err != nil {
		t.Fatal(err)
	}
	svc.backends = svc.backends[:8]
	install(t, d, svc)
	_, out = run(t, d.FromPod, build(t, ack))
	if got := backendOf(t, out); got == first {
		t.Errorf("flow still sent to deleted backend %v", got)
	}
}

// TestSessionAffinity: with ClientIP affinity every connection of a client
// goes to one backend until the affinity times out.
func TestSessionAffinity(t *testing.T) {
	d := loadTest(t, Config{})
	svc := testService{id: 11, vip: vip4, proto: unix.IPPROTO_TCP, backends: manyBackends(4, 1), affinity: 10800}
	install(t, d, svc)

	seen := map[netip.AddrPort]bool{}
	for p := range uint16(40) {
		f := flow{src: netip.AddrPortFrom(client4.Addr(), 30000+p), dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S"}
		_, out := run(t, d.FromPod, build(t, f))
		seen[backendOf(t, out)] = true
	}
	if len(seen) != 1 {
		t.Fatalf("client reached %d backends with affinity, want 1: %v", len(seen), seen)
	}

	// Point the client's affinity at backend 4 and age it: fresh, it wins;
	// past the timeout, the Maglev choice wins again.
	key := AffinityKey{Client: Addr(client4.Addr()), SvcId: svc.id}
	probe := func(port uint16) netip.AddrPort {
		f := flow{src: netip.AddrPortFrom(client4.Addr(), port), dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S"}
		_, out := run(t, d.FromPod, build(t, f))
		return backendOf(t, out)
	}
	// Find a port whose Maglev choice is not backend 4.
	if err := d.Affinity.Delete(key); err != nil {
		t.Fatal(err)
	}
	var port uint16
	for port = 1000; probe(port) == svc.backends[3].addr; port++ {
		_ = d.Affinity.Delete(key)
	}
	now := MonotonicNow()
	if err := d.Affinity.Put(key, affinityTo(now, svc.backends[3])); err != nil {
		t.Fatal(err)
	}
	if got := probe(port + 1); got != svc.backends[3].addr {
		t.Errorf("fresh affinity ignored: got %v, want %v", got, svc.backends[3].addr)
	}
	stale := now - uint64(svc.affinity+1)*uint64(time.Second)
	if err := d.Affinity.Put(key, affinityTo(stale, svc.backends[3])); err != nil {
		t.Fatal(err)
	}
	// The same tuple as the Maglev probe above, without its conntrack
	// entry (which would answer before affinity is read): the Maglev
	// choice must come back.
	if err := d.ConntrackTCP.Delete(CTKey{Src: Addr(client4.Addr()), Dst: Addr(vip4.Addr()), Sport: Port(port), Dport: Port(vip4.Port()), Proto: unix.IPPROTO_TCP, Dir: CTDirService}); err != nil {
		t.Fatalf("delete the probe's conntrack entry: %v", err)
	}
	if got := probe(port); got == svc.backends[3].addr {
		t.Errorf("expired affinity still used")
	}
}

// TestAffinityHonoursBackendFlags: an affinity to a terminating or (for a
// local-only service) a remote backend is not used for new connections.
func TestAffinityHonoursBackendFlags(t *testing.T) {
	d := loadTest(t, Config{})
	for i, c := range []struct {
		name     string
		svcFlags uint32
		beFlags  uint8
		used     bool
	}{
		{"terminating", 0, BackendTerminating, false},
		{"terminating fallback", ServiceTerminatingFallback, BackendTerminating, true},
		{"remote on local-only", ServiceLocalOnly, 0, false},
		{"local on local-only", ServiceLocalOnly, BackendLocal, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			usable := testBackend{id: 1, addr: be4a, flags: BackendLocal}
			flagged := testBackend{id: 2, addr: be4b, flags: c.beFlags}
			// The table lists only the usable backend; the flagged one is
			// reachable only through the client's affinity.
			install(t, d, testService{id: 12, vip: vip4, proto: unix.IPPROTO_TCP, backends: []testBackend{usable}, affinity: 60, flags: c.svcFlags})
			if err := d.Backends.Put(flagged.id, BackendValue{Addr: Addr(be4b.Addr()), Port: Port(be4b.Port()), Flags: c.beFlags, SvcId: 12}); err != nil {
				t.Fatal(err)
			}
			key := AffinityKey{Client: Addr(client4.Addr()), SvcId: 12}
			if err := d.Affinity.Put(key, AffinityValue{LastUsedNs: MonotonicNow(), BackendId: flagged.id, Addr: Addr(be4b.Addr()), Port: Port(be4b.Port())}); err != nil {
				t.Fatal(err)
			}
			f := flow{src: netip.AddrPortFrom(client4.Addr(), uint16(41000+i)), dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S"}
			_, out := run(t, d.FromPod, build(t, f))
			if got := backendOf(t, out) == be4b; got != c.used {
				t.Errorf("affinity backend used = %v, want %v", got, c.used)
			}
		})
	}
}

func TestRejectWithoutBackends(t *testing.T) {
	d := loadTest(t, Config{})
	events := eventReader(t, d)

	t.Run("tcp4 syn gets RST", func(t *testing.T) {
		install(t, d, testService{id: 20, vip: vip4, proto: unix.IPPROTO_TCP})
		ret, out := run(t, d.FromPod, build(t, flow{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1000}))
		if ret != actRedirect {
			t.Fatalf("verdict %d, want TC_ACT_REDIRECT back into the pod", ret)
		}
		want := flow{src: vip4, dst: client4, proto: unix.IPPROTO_TCP, tcpFlags: "RA", ack: 1001,
			srcMAC: hostMAC, dstMAC: podMAC, ipFlagsDF: true}
		samePacket(t, "RST", out, build(t, want))
	})
	t.Run("tcp4 ack with data gets RST at its ack", func(t *testing.T) {
		ret, out := run(t, d.FromPod, build(t, flow{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "A", seq: 5, ack: 77, payload: []byte("hello")}))
		if ret != actRedirect {
			t.Fatalf("verdict %d", ret)
		}
		want := flow{src: vip4, dst: client4, proto: unix.IPPROTO_TCP, tcpFlags: "R", seq: 77,
			srcMAC: hostMAC, dstMAC: podMAC, ipFlagsDF: true}
		samePacket(t, "RST", out, build(t, want))
	})
	t.Run("tcp6 syn gets RST", func(t *testing.T) {
		install(t, d, testService{id: 21, vip: vip6, proto: unix.IPPROTO_TCP})
		ret, out := run(t, d.FromPod, build(t, flow{src: client6, dst: vip6, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 9}))
		if ret != actRedirect {
			t.Fatalf("verdict %d", ret)
		}
		want := flow{src: vip6, dst: client6, proto: unix.IPPROTO_TCP, tcpFlags: "RA", ack: 10, srcMAC: hostMAC, dstMAC: podMAC}
		samePacket(t, "RST", out, build(t, want))
	})
	for _, c := range []struct {
		name  string
		vip   netip.AddrPort
		cl    netip.AddrPort
		proto uint8
	}{
		{"udp4", ap("10.96.0.12:53"), client4, unix.IPPROTO_UDP},
		{"udp6", ap("[fd00:96::12]:53"), client6, unix.IPPROTO_UDP},
		{"sctp4", ap("10.96.0.13:9999"), client4, unix.IPPROTO_SCTP},
	} {
		t.Run(c.name+" gets port unreachable", func(t *testing.T) {
			install(t, d, testService{id: 22, vip: c.vip, proto: c.proto})
			in := build(t, flow{src: c.cl, dst: c.vip, proto: c.proto, payload: []byte("0123456789")})
			ret, out := run(t, d.FromPod, in)
			if ret != actRedirect {
				t.Fatalf("verdict %d", ret)
			}
			quoteLen := 20 + 8
			want := flow{src: c.vip, dst: c.cl, proto: unix.IPPROTO_ICMP, icmp: []byte{3, 3, 0, 0, 0, 0},
				srcMAC: hostMAC, dstMAC: podMAC, ipFlagsDF: true}
			if c.cl.Addr().Is6() {
				quoteLen = 40 + 8
				want.proto = unix.IPPROTO_ICMPV6
				want.icmp = []byte{1, 4, 0, 0, 0, 0}
			}
			want.payload = in[14 : 14+quoteLen]
			samePacket(t, "ICMP unreachable", out, build(t, want))
		})
	}

	counts, err := d.DropCounts()
	if err != nil {
		t.Fatal(err)
	}
	if got := counts[DropNoBackend].Packets; got != 6 {
		t.Errorf("no_backend drop counter = %d, want 6", got)
	}
	ev := nextEvent(t, events, EventDrop)
	if ev.Reason != uint16(DropNoBackend) || AddrFrom(ev.Dst) != vip4.Addr() || PortFrom(ev.Dport) != 80 || ev.SvcId != 20 {
		t.Errorf("first drop event = reason %d dst %v:%d svc %d, want no_backend to %v svc 20",
			ev.Reason, AddrFrom(ev.Dst), PortFrom(ev.Dport), ev.SvcId, vip4)
	}
}

// TestSCTPPortTranslationRefused: SCTP's CRC32c cannot be fixed up
// incrementally, so a service that changes the port drops, counted.
func TestSCTPPortTranslationRefused(t *testing.T) {
	d := loadTest(t, Config{})
	install(t, d, oneBackend(30, ap("10.96.0.14:9999"), unix.IPPROTO_SCTP, ap("10.244.1.5:7777")))
	ret, _ := run(t, d.FromPod, build(t, flow{src: client4, dst: ap("10.96.0.14:9999"), proto: unix.IPPROTO_SCTP}))
	if ret != actShot {
		t.Fatalf("verdict %d, want TC_ACT_SHOT", ret)
	}
	counts, _ := d.DropCounts()
	if counts[DropSCTPPortNAT].Packets != 1 {
		t.Errorf("sctp_port_nat counter = %d, want 1", counts[DropSCTPPortNAT].Packets)
	}
}

// TestHairpin: a pod load-balanced to itself talks through the hairpin
// address, and its reply comes back from the service.
func TestHairpin(t *testing.T) {
	d := loadTest(t, Config{})
	for _, c := range []struct {
		name    string
		pod     netip.Addr
		vip     netip.AddrPort
		hairpin netip.Addr
	}{
		{"ipv4", netip.MustParseAddr("10.244.0.2"), vip4, netip.MustParseAddr("169.254.42.1")},
		{"ipv6", netip.MustParseAddr("fd00:244::2"), vip6, netip.MustParseAddr("fd73:6c75:6963:6500::1")},
	} {
		t.Run(c.name, func(t *testing.T) {
			backend := netip.AddrPortFrom(c.pod, 8080)
			install(t, d, oneBackend(40, c.vip, unix.IPPROTO_TCP, backend))
			client := netip.AddrPortFrom(c.pod, 45000)

			req := flow{src: client, dst: c.vip, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}
			ret, out := run(t, d.FromPod, build(t, req))
			if ret != actRedirect {
				t.Fatalf("request verdict %d, want redirect back into the pod", ret)
			}
			// Back into the pod, addressed to the pod's MAC.
			want := req
			want.src = netip.AddrPortFrom(c.hairpin, 45000)
			want.dst = backend
			want.srcMAC, want.dstMAC = hostMAC, podMAC
			samePacket(t, "hairpin request", out, build(t, want))

			reply := flow{src: backend, dst: netip.AddrPortFrom(c.hairpin, 45000), proto: unix.IPPROTO_TCP, tcpFlags: "SA", seq: 9, ack: 2}
			ret, out = run(t, d.FromPod, build(t, reply))
			if ret != actRedirect {
				t.Fatalf("reply verdict %d, want redirect back into the pod", ret)
			}
			wantReply := reply
			wantReply.src = c.vip
			wantReply.dst = client
			wantReply.srcMAC, wantReply.dstMAC = hostMAC, podMAC
			samePacket(t, "hairpin reply", out, build(t, wantReply))
		})
	}
}

// TestICMPErrorReverseNAT: an ICMP error about a translated flow reaches the
// client as if the service had sent it, about the packet the client sent.
func TestICMPErrorReverseNAT(t *testing.T) {
	d := loadTest(t, Config{})
	for _, c := range []struct {
		name                 string
		vip, backend, client netip.AddrPort
		icmpProto            uint8
		icmp                 []byte
		router               netip.Addr // sender of the error, if not the backend
	}{
		{"udp4 port unreachable from backend", ap("10.96.0.20:53"), ap("10.244.1.5:5353"), client4, unix.IPPROTO_ICMP, []byte{3, 3, 0, 0, 0, 0}, netip.Addr{}},
		{"udp4 time exceeded from router", ap("10.96.0.20:53"), ap("10.244.1.5:5353"), ap("10.244.0.2:40001"), unix.IPPROTO_ICMP, []byte{11, 0, 0, 0, 0, 0}, netip.MustParseAddr("10.244.1.1")},
		{"tcp4 frag needed", vip4, be4a, ap("10.244.0.2:40002"), unix.IPPROTO_ICMP, []byte{3, 4, 0, 0, 0x05, 0xdc}, netip.MustParseAddr("10.244.1.1")},
		{"udp6 port unreachable from backend", ap("[fd00:96::20]:53"), ap("[fd00:244:1::5]:5353"), client6, unix.IPPROTO_ICMPV6, []byte{1, 4, 0, 0, 0, 0}, netip.Addr{}},
		{"tcp6 packet too big from router", vip6, be6a, ap("[fd00:244::2]:40002"), unix.IPPROTO_ICMPV6, []byte{2, 0, 0, 0, 0x05, 0x00}, netip.MustParseAddr("fd00:244:1::1")},
	} {
		t.Run(c.name, func(t *testing.T) {
			proto := uint8(unix.IPPROTO_UDP)
			if c.vip == vip4 || c.vip == vip6 {
				proto = unix.IPPROTO_TCP
			}
			install(t, d, oneBackend(50, c.vip, proto, c.backend))
			req := flow{src: c.client, dst: c.vip, proto: proto, tcpFlags: "A", payload: []byte("0123456789abcdef")}
			_, translated := run(t, d.FromPod, build(t, req))

			ip4 := c.icmpProto == unix.IPPROTO_ICMP
			hdr := 40
			if ip4 {
				hdr = 20
			}
			quote := append([]byte(nil), translated[14:14+hdr+8]...)
			sender := c.router
			if !sender.IsValid() {
				sender = c.backend.Addr()
			}
			errPkt := flow{src: netip.AddrPortFrom(sender, 0), dst: netip.AddrPortFrom(c.client.Addr(), 0),
				proto: c.icmpProto, icmp: c.icmp, payload: quote, srcMAC: hostMAC, dstMAC: podMAC}
			ret, out := run(t, d.ToPod, build(t, errPkt))
			if ret != actOK {
				t.Fatalf("verdict %d", ret)
			}
			// What the client must see: the quote of the packet it sent
			// (destination the service) and, when the backend itself
			// complained, the service as sender.
			wantQuote := append([]byte(nil), quote...)
			vip := c.vip.Addr().AsSlice()
			if ip4 {
				copy(wantQuote[16:20], vip)
				wantQuote[10], wantQuote[11] = 0, 0
				binary.BigEndian.PutUint16(wantQuote[10:], ipv4HeaderChecksum(wantQuote[:20]))
			} else {
				copy(wantQuote[24:40], vip)
			}
			binary.BigEndian.PutUint16(wantQuote[hdr+2:], c.vip.Port())
			want := errPkt
			want.payload = wantQuote
			if !c.router.IsValid() {
				want.src = netip.AddrPortFrom(c.vip.Addr(), 0)
			}
			samePacket(t, "ICMP error", out, build(t, want))
		})
	}
}

func ipv4HeaderChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// TestNonServiceTrafficUntouched: everything that is not a packet to a
// service (or a reply of one) leaves both programs exactly as it came.
func TestNonServiceTrafficUntouched(t *testing.T) {
	d := loadTest(t, Config{})
	install(t, d, oneBackend(60, vip4, unix.IPPROTO_TCP, be4a))
	arp := append(append(append([]byte{}, hostMAC...), podMAC...), 0x08, 0x06)
	arp = append(arp, make([]byte, 28)...)
	cases := map[string][]byte{
		"tcp to a pod":               build(t, flow{src: client4, dst: be4b, proto: unix.IPPROTO_TCP, tcpFlags: "S"}),
		"udp to the vip's tcp port":  build(t, flow{src: client4, dst: vip4, proto: unix.IPPROTO_UDP}),
		"tcp to the vip, other port": build(t, flow{src: client4, dst: ap("10.96.0.10:81"), proto: unix.IPPROTO_TCP, tcpFlags: "S"}),
		"icmp echo to the vip":       build(t, flow{src: netip.AddrPortFrom(client4.Addr(), 0), dst: netip.AddrPortFrom(vip4.Addr(), 0), proto: unix.IPPROTO_ICMP, icmp: []byte{8, 0, 0, 1, 0, 1}}),
		"icmpv6 echo":                build(t, flow{src: netip.AddrPortFrom(client6.Addr(), 0), dst: netip.AddrPortFrom(vip6.Addr(), 0), proto: unix.IPPROTO_ICMPV6, icmp: []byte{128, 0, 0, 1, 0, 1}}),
		"arp":                        arp,
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			for _, prog := range []struct {
				name string
				p    *ebpf.Program
			}{{"from_pod", d.FromPod}, {"to_pod", d.ToPod}} {
				ret, out := run(t, prog.p, in)
				if ret != actOK {
					t.Errorf("%s: verdict %d, want %d (pass)", prog.name, ret, actOK)
				}
				samePacket(t, prog.name, out, in)
			}
		})
	}
}

// TestMalformedPackets: truncated and inconsistent headers are passed to
// the kernel untouched (it drops them), never read out of bounds. (Frames
// shorter than a full IP header cannot be fed through BPF_PROG_TEST_RUN: the
// kernel refuses them before the program runs.)
func TestMalformedPackets(t *testing.T) {
	d := loadTest(t, Config{})
	install(t, d, oneBackend(61, vip4, unix.IPPROTO_TCP, be4a))
	install(t, d, oneBackend(62, vip6, unix.IPPROTO_TCP, be6a))
	full4 := build(t, flow{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S"})
	full6 := build(t, flow{src: client6, dst: vip6, proto: unix.IPPROTO_TCP, tcpFlags: "S"})
	badIHL := append([]byte(nil), full4...)
	badIHL[14] = 0x43
	badVersion := append([]byte(nil), full4...)
	badVersion[14] = 0x65
	fragment := append([]byte(nil), full4...)
	fragment[14+6], fragment[14+7] = 0x00, 0x10 // offset 128 bytes: no L4 header here
	extLoop := append([]byte(nil), full6...)
	extLoop[14+6] = 0 // hop-by-hop header that is really the TCP header
	cases := map[string][]byte{
		"ipv4 without ports":  full4[:34],
		"ipv4 two port bytes": full4[:36],
		"ihl below 5":         badIHL,
		"version mismatch":    badVersion,
		"ipv6 without ports":  full6[:54],
		"non-first fragment":  fragment,
		"ipv6 bogus ext hdrs": extLoop,
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			for _, p := range []struct {
				name string
				run  func() (uint32, []byte)
			}{{"from_pod", func() (uint32, []byte) { return run(t, d.FromPod, in) }}, {"to_pod", func() (uint32, []byte) { return run(t, d.ToPod, in) }}} {
				ret, out := p.run()
				if ret != actOK {
					t.Errorf("%s: verdict %d, want TC_ACT_OK", p.name, ret)
				}
				samePacket(t, p.name, out, in)
			}
		})
	}
}

// TestConntrackLifetimeAndGC: entries carry their state's lifetime and GC
// removes exactly those past it.
func TestConntrackLifetimeAndGC(t *testing.T) {
	d := loadTest(t, Config{CTTimeoutOther: 50 * time.Millisecond, CTTimeoutUnreplied: 50 * time.Millisecond, CTTimeoutSYN: time.Minute, CTTimeoutTCP: time.Hour})
	install(t, d, oneBackend(70, vip4, unix.IPPROTO_TCP, be4a))
	install(t, d, oneBackend(71, ap("10.96.0.10:53"), unix.IPPROTO_UDP, ap("10.244.1.5:53")))

	syn := flow{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S"}
	run(t, d.FromPod, build(t, syn))
	key := CTKey{Src: Addr(client4.Addr()), Dst: Addr(vip4.Addr()), Sport: Port(client4.Port()), Dport: Port(80), Proto: unix.IPPROTO_TCP, Dir: CTDirService}
	var v CTValue
	if err := d.ConntrackTCP.Lookup(key, &v); err != nil {
		t.Fatalf("no conntrack entry after SYN: %v", err)
	}
	if left := time.Duration(v.ExpiresNs - MonotonicNow()); left > time.Minute || left < 50*time.Second {
		t.Errorf("SYN entry lives %v, want about the SYN timeout (1m)", left)
	}
	ack := syn
	ack.tcpFlags = "A"
	run(t, d.FromPod, build(t, ack))
	_ = d.ConntrackTCP.Lookup(key, &v)
	if v.Flags&CTFlagEstablished == 0 || time.Duration(v.ExpiresNs-MonotonicNow()) < 50*time.Minute {
		t.Errorf("after ACK: flags %#x, lifetime %v; want established with the TCP timeout", v.Flags, time.Duration(v.ExpiresNs-MonotonicNow()))
	}

	run(t, d.FromPod, build(t, flow{src: client4, dst: ap("10.96.0.10:53"), proto: unix.IPPROTO_UDP}))
	time.Sleep(100 * time.Millisecond)
	stats, err := d.GCConntrack()
	if err != nil {
		t.Fatal(err)
	}
	if tcp, other := stats[0], stats[1]; tcp.Deleted != 0 || tcp.Live != 2 || other.Deleted != 2 || other.Live != 0 {
		t.Errorf("GC: %+v, want the UDP flow's 2 entries deleted and the TCP flow's 2 live", stats)
	}
}

// TestDirectConnectionReusesServiceTuple: a client port used for a
// service flow is reused for a connection straight to the backend (ports
// cycle fast under load). The new connection's replies must come from the
// backend, not be rewritten to the service by the old flow's reply entry.
func TestDirectConnectionReusesServiceTuple(t *testing.T) {
	d := loadTest(t, Config{})
	vip, backend := ap("10.96.0.80:80"), ap("10.244.1.8:8080")
	install(t, d, oneBackend(80, vip, unix.IPPROTO_TCP, backend))
	client := ap("10.244.0.2:41000")
	run(t, d.FromPod, build(t, flow{src: client, dst: vip, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}))
	reply := flow{src: backend, dst: client, proto: unix.IPPROTO_TCP, tcpFlags: "SA", seq: 9, ack: 2}
	if _, out := run(t, d.ToPod, build(t, reply)); string(out) == string(build(t, reply)) {
		t.Fatal("the service flow's reply was not translated: the test setup is wrong")
	}

	direct := flow{src: client, dst: backend, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 100}
	if ret, _ := run(t, d.FromPod, build(t, direct)); ret != actOK {
		t.Fatalf("direct SYN verdict %d", ret)
	}
	pkt := build(t, reply)
	ret, out := run(t, d.ToPod, pkt)
	if ret != actOK {
		t.Fatalf("direct reply verdict %d", ret)
	}
	samePacket(t, "reply of the direct connection", out, pkt)
}
