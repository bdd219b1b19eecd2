package bpf

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/internal/testutil/icmpecho"
)

// The adversarial suite: what a tenant with an ordinary pod can send
// (raw sockets, chosen ports, fragments, extension headers, ICMP) against
// an endpoint behind NetworkPolicy. Each case states what the user would
// check: the crafted packet is dropped, counted under its reason and
// direction, and leaves nothing behind that admits a later packet.

// rawPkt describes a packet built byte by byte, for what gopacket will not
// serialise: fragments, long extension header chains, truncated L4.
type rawPkt struct {
	src, dst netip.Addr
	proto    uint8  // the L4 protocol (after any extension headers)
	l4       []byte // the L4 bytes this packet carries
	// Fragments: the payload's byte offset in its datagram, more
	// fragments follow, and the datagram's identification. IPv6 gets a
	// fragment header when frag is set.
	frag    bool
	fragOff int
	more    bool
	id      uint32
	ext     []int // IPv6: lengths in bytes (multiples of 8) of destination-options headers before the L4
	hopByHp bool  // IPv6: the first extension header is hop-by-hop rather than destination options
}

func (r rawPkt) bytes() []byte {
	eth := make([]byte, 14)
	copy(eth, hostMAC)
	copy(eth[6:], podMAC)
	if r.src.Is4() {
		binary.BigEndian.PutUint16(eth[12:], unix.ETH_P_IP)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(r.l4)))
		binary.BigEndian.PutUint16(ip[4:], uint16(r.id))
		fo := uint16(r.fragOff / 8)
		if r.more {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(ip[6:], fo)
		ip[8] = 64
		ip[9] = r.proto
		s, d := r.src.As4(), r.dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], icmpecho.Checksum(ip)) // over a zero checksum field
		return append(append(eth, ip...), r.l4...)
	}
	binary.BigEndian.PutUint16(eth[12:], unix.ETH_P_IPV6)
	type hdr struct {
		typ uint8
		b   []byte
	}
	var chain []hdr
	for i, n := range r.ext {
		typ := uint8(unix.IPPROTO_DSTOPTS)
		if i == 0 && r.hopByHp {
			typ = unix.IPPROTO_HOPOPTS
		}
		b := make([]byte, n)
		b[1] = uint8(n/8 - 1)
		chain = append(chain, hdr{typ, b})
	}
	if r.frag {
		b := make([]byte, 8)
		fo := uint16(r.fragOff) &^ 7
		if r.more {
			fo |= 1
		}
		binary.BigEndian.PutUint16(b[2:], fo)
		binary.BigEndian.PutUint32(b[4:], r.id)
		chain = append(chain, hdr{unix.IPPROTO_FRAGMENT, b})
	}
	var payload []byte
	for i, h := range chain {
		next := r.proto
		if i+1 < len(chain) {
			next = chain[i+1].typ
		}
		h.b[0] = next
		payload = append(payload, h.b...)
	}
	payload = append(payload, r.l4...)
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(payload)))
	ip[6] = r.proto
	if len(chain) > 0 {
		ip[6] = chain[0].typ
	}
	ip[7] = 64
	s, d := r.src.As16(), r.dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(append(eth, ip...), payload...)
}

// tcpHeader is a 20-byte TCP header with the given flags (checksum zero:
// the datapath never verifies it).
func tcpHeader(sport, dport uint16, flags uint8) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b, sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12] = 5 << 4
	b[13] = flags
	return b
}

func udpDatagram(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b, sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// icmpEcho is an ICMP (or ICMPv6) echo request or reply with identifier id.
func icmpMsg(typ, code uint8, id uint16, body []byte) []byte {
	b := []byte{typ, code, 0, 0, byte(id >> 8), byte(id), 0, 1}
	return append(b, body...)
}

func tcpTo(src, dst netip.Addr, sport, dport uint16, flags uint8) rawPkt {
	return rawPkt{src: src, dst: dst, proto: unix.IPPROTO_TCP, l4: tcpHeader(sport, dport, flags)}
}

// runOn sends the packet through from_pod when the isolated test pod
// sends it, otherwise through to_pod.
func runOn(t *testing.T, d *Datapath, r rawPkt) uint32 {
	t.Helper()
	prog := d.ToPod
	if r.src == polPod || r.src == polPod6 {
		prog = d.FromPod
	}
	ret, _ := run(t, prog, r.bytes())
	return ret
}

var polPod6 = netip.MustParseAddr("fd00:244::2")

// adversarialDatapath is the policy fixture with the pod's IPv6 address
// and its remote peer's too.
func adversarialDatapath(t *testing.T, flags uint32) *Datapath {
	t.Helper()
	d := policyDatapath(t, flags)
	if err := d.PolicyEndpoints.Put(EndpointKey{Addr: Addr(polPod6)}, PolicyEndpointValue{Id: polEndpoint, Flags: flags}); err != nil {
		t.Fatal(err)
	}
	addEndpoints(t, d, 1, polPod6)
	if err := d.IPCache.Put(EndpointKey{Addr: Addr(polRemote6)}, IPCacheValue{Identity: idRemote}); err != nil {
		t.Fatal(err)
	}
	return d
}

var polRemote6 = netip.MustParseAddr("fd00:244:1::5")

func wantDrops(t *testing.T, d *Datapath, reason DropReason, hook Hook, want uint64) {
	t.Helper()
	counts, err := d.DropCountsByHook()
	if err != nil {
		t.Fatal(err)
	}
	if got := counts[DropKey{Reason: reason, Hook: hook}].Packets; got != want {
		t.Errorf("%s drops at %s = %d, want %d (all: %v)", reason, hook, got, want, counts)
	}
}

// TestCraftedACKOpensNothing: a bare ACK (or RST, or FIN) from a chosen
// port, then a SYN from that port, into an ingress deny-all pod and out of
// an egress deny-all one: both dropped, and the first leaves no entry that
// admits the second.
func TestCraftedACKOpensNothing(t *testing.T) {
	for _, flags := range []struct {
		name string
		bits uint8
	}{{"ACK", tcpACK}, {"RST", tcpRST}, {"FIN", tcpFIN | tcpACK}, {"RST-ACK", tcpRST | tcpACK}} {
		t.Run(flags.name, func(t *testing.T) {
			d := adversarialDatapath(t, PolicyIngressIsolated|PolicyEgressIsolated)
			for _, c := range []struct {
				name     string
				src, dst netip.Addr
			}{
				{"ingress", polRemote, polPod}, {"egress", polPod, polRemote},
				{"ingress v6", polRemote6, polPod6}, {"egress v6", polPod6, polRemote6},
			} {
				if got := runOn(t, d, tcpTo(c.src, c.dst, 40500, 8080, flags.bits)); got != actShot {
					t.Errorf("%s: crafted %s: verdict %d, want dropped", c.name, flags.name, got)
				}
				if got := runOn(t, d, tcpTo(c.src, c.dst, 40500, 8080, tcpSYN)); got != actShot {
					t.Errorf("%s: SYN on the crafted packet's tuple: verdict %d, want dropped", c.name, got)
				}
			}
			wantDrops(t, d, DropPolicyIngress, HookToPod, 4)
			wantDrops(t, d, DropPolicyEgress, HookFromPod, 4)
			if n := countEntries(t, d.ConntrackTCP) + countEntries(t, d.ConntrackOther); n != 0 {
				t.Errorf("%d conntrack entries left by dropped packets, want 0", n)
			}
		})
	}
}

// TestCraftedACKThroughClusterIP: the same through a Service: the client's
// node translates and lets it out (the client is not isolated); the
// backend's to_pod judges the translated ACK and the SYN that follows.
func TestCraftedACKThroughClusterIP(t *testing.T) {
	d := adversarialDatapath(t, PolicyIngressIsolated)
	vip := netip.MustParseAddrPort("10.96.0.77:80")
	install(t, d, oneBackend(77, vip, unix.IPPROTO_TCP, netip.AddrPortFrom(polPod, 8080)))
	client := netip.MustParseAddr("10.244.0.3") // another pod of this node, not isolated
	for _, f := range []uint8{tcpACK, tcpSYN} {
		ret, out := run(t, d.FromPod, tcpTo(client, vip.Addr(), 40600, 80, f).bytes())
		if ret != actOK {
			t.Fatalf("client side (not isolated): verdict %d, want translated and passed", ret)
		}
		if ret, _ := run(t, d.ToPod, out); ret != actShot {
			t.Errorf("backend side, flags %#x through the ClusterIP: verdict %d, want dropped", f, ret)
		}
	}
	wantDrops(t, d, DropPolicyIngress, HookToPod, 2)
}

// TestOpenFlowsAreCutByIsolation: a connection opened before its pod
// became isolated is judged like a new one at its next packet (the
// NetworkPolicy spec allows cutting it); one the rules allow keeps going.
func TestOpenFlowsAreCutByIsolation(t *testing.T) {
	d := adversarialDatapath(t, PolicyEgressIsolated)
	allow(t, d, PolicyRule(polEndpoint, idRemote, PolicyEgress, unix.IPPROTO_TCP, 5432, 16))
	if got := runOn(t, d, tcpTo(polPod, polRemote, 40100, 5432, tcpACK)); got != actOK {
		t.Errorf("mid-stream packet the rules allow: verdict %d, want passed", got)
	}
	if got := runOn(t, d, tcpTo(polPod, polRemote, 40101, 6000, tcpACK)); got != actShot {
		t.Errorf("mid-stream packet the rules do not allow: verdict %d, want dropped", got)
	}
}

// TestEveryProtocolJudged: ICMP and ICMPv6 echo and GRE under deny-all
// are dropped both ways; a rule without ports admits them, one with ports
// does not; an echo reply passes only for an admitted echo.
func TestEveryProtocolJudged(t *testing.T) {
	echo4 := func(src, dst netip.Addr, typ uint8) rawPkt {
		return rawPkt{src: src, dst: dst, proto: unix.IPPROTO_ICMP, l4: icmpMsg(typ, 0, 0x77, nil)}
	}
	echo6 := func(src, dst netip.Addr, typ uint8) rawPkt {
		return rawPkt{src: src, dst: dst, proto: unix.IPPROTO_ICMPV6, l4: icmpMsg(typ, 0, 0x77, nil)}
	}
	gre := func(src, dst netip.Addr) rawPkt {
		return rawPkt{src: src, dst: dst, proto: unix.IPPROTO_GRE, l4: []byte{0, 0, 0x08, 0x00, 0x45, 0, 0, 20}}
	}
	t.Run("deny-all", func(t *testing.T) {
		d := adversarialDatapath(t, PolicyIngressIsolated|PolicyEgressIsolated)
		allow(t, d, PolicyRule(polEndpoint, idRemote, PolicyIngress, unix.IPPROTO_TCP, 80, 16)) // ports: TCP only
		for name, r := range map[string]rawPkt{
			"icmp echo in": echo4(polRemote, polPod, 8), "icmp echo out": echo4(polPod, polRemote, 8),
			"icmpv6 echo in": echo6(polRemote6, polPod6, 128), "icmpv6 echo out": echo6(polPod6, polRemote6, 128),
			"icmp echo reply in, no request": echo4(polRemote, polPod, 0),
			"gre in":                         gre(polRemote, polPod), "gre out": gre(polPod, polRemote),
			"gre out to the world": gre(polPod, polWorld),
		} {
			if got := runOn(t, d, r); got != actShot {
				t.Errorf("%s: verdict %d, want dropped", name, got)
			}
		}
		// Neighbour discovery still works: a pod without it has no IPv6.
		ns := rawPkt{src: netip.MustParseAddr("fe80::2"), dst: netip.MustParseAddr("ff02::1:ff00:1"), proto: unix.IPPROTO_ICMPV6, l4: icmpMsg(135, 0, 0, make([]byte, 16))}
		if ret, _ := run(t, d.FromPod, ns.bytes()); ret != actOK {
			t.Errorf("neighbour solicitation from the pod's link-local address: verdict %d, want passed", ret)
		}
		na := rawPkt{src: netip.MustParseAddr("fe80::1"), dst: polPod6, proto: unix.IPPROTO_ICMPV6, l4: icmpMsg(136, 0, 0, make([]byte, 16))}
		if ret, _ := run(t, d.ToPod, na.bytes()); ret != actOK {
			t.Errorf("neighbour advertisement to the pod: verdict %d, want passed", ret)
		}
	})
	t.Run("a rule without ports admits every protocol", func(t *testing.T) {
		d := adversarialDatapath(t, PolicyIngressIsolated|PolicyEgressIsolated)
		allow(t, d, PolicyRule(polEndpoint, idRemote, PolicyIngress, 0, 0, 0))
		for name, r := range map[string]rawPkt{
			"icmp echo in": echo4(polRemote, polPod, 8), "icmpv6 echo in": echo6(polRemote6, polPod6, 128), "gre in": gre(polRemote, polPod),
		} {
			if got := runOn(t, d, r); got != actOK {
				t.Errorf("%s: verdict %d, want allowed", name, got)
			}
		}
		if got := runOn(t, d, echo4(polPod, polRemote, 0)); got != actOK {
			t.Errorf("echo reply to the admitted echo: verdict %d, want passed", got)
		}
		if got := runOn(t, d, echo6(polPod6, polRemote6, 129)); got != actOK {
			t.Errorf("icmpv6 echo reply to the admitted echo: verdict %d, want passed", got)
		}
		if got := runOn(t, d, echo4(polPod, polRemote, 8)); got != actShot {
			t.Errorf("a new echo out (egress isolated, no rule): verdict %d, want dropped", got)
		}
	})
}

// TestICMPErrorsOfAdmittedFlows: errors about an admitted flow (port
// unreachable, fragmentation needed, packet too big) pass both ways
// through isolated directions; the same errors about a flow never
// admitted are judged and dropped.
func TestICMPErrorsOfAdmittedFlows(t *testing.T) {
	d := adversarialDatapath(t, PolicyIngressIsolated|PolicyEgressIsolated)
	allow(t, d, PolicyRule(polEndpoint, idRemote, PolicyIngress, unix.IPPROTO_UDP, 53, 16))
	allow(t, d, PolicyRule(polEndpoint, idRemote, PolicyIngress, unix.IPPROTO_TCP, 443, 16))
	q := rawPkt{src: polRemote, dst: polPod, proto: unix.IPPROTO_UDP, l4: udpDatagram(40700, 53, []byte("q"))}
	if got := runOn(t, d, q); got != actOK {
		t.Fatalf("allowed query: verdict %d", got)
	}
	quote := func(r rawPkt) []byte { return r.bytes()[14:][:28] } // IP header + 8 bytes
	unreach := rawPkt{src: polPod, dst: polRemote, proto: unix.IPPROTO_ICMP, l4: append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, quote(q)...)}
	if got := runOn(t, d, unreach); got != actOK {
		t.Errorf("port unreachable about the admitted query, out: verdict %d, want passed", got)
	}
	syn := tcpTo(polRemote, polPod, 40701, 443, tcpSYN)
	if got := runOn(t, d, syn); got != actOK {
		t.Fatalf("allowed SYN: verdict %d", got)
	}
	synack := tcpTo(polPod, polRemote, 443, 40701, tcpSYN|tcpACK)
	fragNeeded := rawPkt{src: polRemote, dst: polPod, proto: unix.IPPROTO_ICMP, l4: append([]byte{3, 4, 0, 0, 0, 0, 0x05, 0xdc}, quote(synack)...)}
	if got := runOn(t, d, fragNeeded); got != actOK {
		t.Errorf("fragmentation needed about the pod's reply, in: verdict %d, want passed", got)
	}
	stray := tcpTo(polPod, polRemote, 443, 9999, tcpACK)
	strayErr := rawPkt{src: polRemote, dst: polPod, proto: unix.IPPROTO_ICMP, l4: append([]byte{3, 4, 0, 0, 0, 0, 0x05, 0xdc}, quote(stray)...)}
	if got := runOn(t, d, strayErr); got != actShot {
		t.Errorf("fragmentation needed about a flow never admitted: verdict %d, want dropped", got)
	}

	q6 := rawPkt{src: polRemote6, dst: polPod6, proto: unix.IPPROTO_UDP, l4: udpDatagram(40702, 53, []byte("q"))}
	if got := runOn(t, d, q6); got != actOK {
		t.Fatalf("allowed IPv6 query: verdict %d", got)
	}
	reply6 := rawPkt{src: polPod6, dst: polRemote6, proto: unix.IPPROTO_UDP, l4: udpDatagram(53, 40702, []byte("a"))}
	tooBig := rawPkt{src: polRemote6, dst: polPod6, proto: unix.IPPROTO_ICMPV6, l4: append([]byte{2, 0, 0, 0, 0, 0, 0x05, 0x00}, reply6.bytes()[14:][:48]...)}
	if got := runOn(t, d, tooBig); got != actOK {
		t.Errorf("packet too big about the pod's IPv6 reply, in: verdict %d, want passed", got)
	}
}

// TestUnparseableDroppedForIsolated: what the parser cannot read is
// dropped for an isolated endpoint (its own reason) and left to the
// kernel for one without policy.
func TestUnparseableDroppedForIsolated(t *testing.T) {
	l4 := tcpHeader(40800, 8080, tcpSYN)
	cases := map[string]rawPkt{
		"ipv6, 7 extension headers":          {src: polRemote6, dst: polPod6, proto: unix.IPPROTO_TCP, l4: l4, ext: []int{8, 8, 8, 8, 8, 8, 8}, hopByHp: true},
		"ipv6, oversized destination option": {src: polRemote6, dst: polPod6, proto: unix.IPPROTO_TCP, l4: l4, ext: []int{2040}},
		"ipv4 first fragment of 8 bytes":     {src: polRemote, dst: polPod, proto: unix.IPPROTO_TCP, l4: l4[:8], frag: true, more: true, id: 7},
		"ipv6 first fragment of 8 bytes":     {src: polRemote6, dst: polPod6, proto: unix.IPPROTO_TCP, l4: l4[:8], frag: true, more: true, id: 7},
	}
	t.Run("isolated", func(t *testing.T) {
		d := adversarialDatapath(t, PolicyIngressIsolated)
		allow(t, d, PolicyRule(polEndpoint, idRemote, PolicyIngress, unix.IPPROTO_TCP, 8080, 16))
		for name, r := range cases {
			if got := runOn(t, d, r); got != actShot {
				t.Errorf("%s: verdict %d, want dropped", name, got)
			}
		}
		wantDrops(t, d, DropUnparseable, HookToPod, uint64(len(cases)))
		// Within the walk: five extension headers are read and judged.
		five := rawPkt{src: polRemote6, dst: polPod6, proto: unix.IPPROTO_TCP, l4: l4, ext: []int{8, 16, 8, 8, 8}, hopByHp: true}
		if got := runOn(t, d, five); got != actOK {
			t.Errorf("ipv6 with 5 extension headers to an allowed port: verdict %d, want allowed", got)
		}
		five.l4 = tcpHeader(40801, 8081, tcpSYN)
		if got := runOn(t, d, five); got != actShot {
			t.Errorf("ipv6 with 5 extension headers to a closed port: verdict %d, want dropped", got)
		}
	})
	t.Run("not isolated", func(t *testing.T) {
		d := adversarialDatapath(t, PolicyEgressIsolated) // ingress is open
		for name, r := range cases {
			if got := runOn(t, d, r); got != actOK {
				t.Errorf("%s: verdict %d, want left to the kernel", name, got)
			}
		}
	})
}

// TestFragments: later fragments get their first fragment's verdict; an
// orphan (out of order) or one overwriting the L4 header is dropped.
func TestFragments(t *testing.T) {
	d := adversarialDatapath(t, PolicyIngressIsolated)
	allow(t, d, PolicyRule(polEndpoint, idRemote, PolicyIngress, unix.IPPROTO_UDP, 53, 16))
	body := make([]byte, 64)
	for _, c := range []struct {
		name     string
		src, dst netip.Addr
	}{{"ipv4", polRemote, polPod}, {"ipv6", polRemote6, polPod6}} {
		t.Run(c.name, func(t *testing.T) {
			udpAll := udpDatagram(40900, 53, body)
			first := rawPkt{src: c.src, dst: c.dst, proto: unix.IPPROTO_UDP, l4: udpAll[:32], frag: true, more: true, id: 0x1234}
			second := rawPkt{src: c.src, dst: c.dst, proto: unix.IPPROTO_UDP, l4: udpAll[32:], frag: true, fragOff: 32, id: 0x1234}
			if got := runOn(t, d, second); got != actShot {
				t.Errorf("later fragment before its first: verdict %d, want dropped", got)
			}
			if got := runOn(t, d, first); got != actOK {
				t.Errorf("first fragment to an allowed port: verdict %d, want allowed", got)
			}
			if got := runOn(t, d, second); got != actOK {
				t.Errorf("later fragment after its first: verdict %d, want allowed", got)
			}
			overlap := second
			overlap.fragOff = 8
			overlap.l4 = udpAll[8:]
			overlap.proto = unix.IPPROTO_TCP
			if got := runOn(t, d, overlap); got != actShot {
				t.Errorf("TCP fragment at offset 8 (over the header): verdict %d, want dropped", got)
			}
			denied := rawPkt{src: c.src, dst: c.dst, proto: unix.IPPROTO_UDP, l4: udpDatagram(40901, 54, body)[:32], frag: true, more: true, id: 0x1235}
			if got := runOn(t, d, denied); got != actShot {
				t.Errorf("first fragment to a closed port: verdict %d, want dropped", got)
			}
			denied.l4, denied.fragOff, denied.more = udpDatagram(40901, 54, body)[32:], 32, false
			if got := runOn(t, d, denied); got != actShot {
				t.Errorf("later fragment of a dropped first: verdict %d, want dropped", got)
			}
		})
	}
	wantDrops(t, d, DropFragNoFlow, HookToPod, 4)
	wantDrops(t, d, DropFragOverlap, HookToPod, 2)
}

// TestFragmentedDatagramThroughClusterIP: every fragment of a UDP
// datagram larger than the MTU reaches the backend, translated alike.
func TestFragmentedDatagramThroughClusterIP(t *testing.T) {
	d := loadTest(t, Config{})
	vip := netip.MustParseAddrPort("10.96.0.53:53")
	backend := netip.MustParseAddrPort("10.244.1.5:5353")
	install(t, d, oneBackend(53, vip, unix.IPPROTO_UDP, backend))
	udpAll := udpDatagram(41000, 53, make([]byte, 2000))
	first := rawPkt{src: client4.Addr(), dst: vip.Addr(), proto: unix.IPPROTO_UDP, l4: udpAll[:1480], frag: true, more: true, id: 99}
	second := rawPkt{src: client4.Addr(), dst: vip.Addr(), proto: unix.IPPROTO_UDP, l4: udpAll[1480:], frag: true, fragOff: 1480, id: 99}
	ret, out := run(t, d.FromPod, first.bytes())
	if got := netip.AddrFrom4([4]byte(out[30:34])); ret != actOK || got != backend.Addr() {
		t.Fatalf("first fragment: verdict %d, dst %v, want translated to %v", ret, got, backend.Addr())
	}
	in := second.bytes()
	ret, out = run(t, d.FromPod, in)
	if ret != actOK {
		t.Fatalf("second fragment: verdict %d, want passed", ret)
	}
	want := second
	want.dst = backend.Addr()
	samePacketBytes(t, "second fragment", out[:len(in)], want.bytes())
}

// samePacketBytes compares raw frames (checksums included).
func samePacketBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if string(got) != string(want) {
		t.Errorf("%s:\n got %x\nwant %x", what, got, want)
	}
}

// TestSpoofedSources: a pod may send only from its own addresses even on
// a node where no pod is isolated; nobody outside may claim a local pod's
// address or the hairpin address; the hairpin address is no identity.
func TestSpoofedSources(t *testing.T) {
	d := loadTest(t, Config{}) // no policy anywhere on this node
	for name, src := range map[string]netip.Addr{
		"another pod's address": netip.MustParseAddr("10.244.1.6"), "the hairpin address": HairpinAddr4,
		"an IPv6 address not its own": netip.MustParseAddr("fd00:244::99"),
	} {
		if ret, _ := run(t, d.FromPod, tcpTo(src, polRemote, 41100, 80, tcpSYN).bytes()); ret != actShot {
			t.Errorf("pod sending from %s: verdict %d, want dropped", name, ret)
		}
	}
	wantDrops(t, d, DropSpoofedSource, HookFromPod, 3)

	for name, src := range map[string]netip.Addr{
		"a local pod's address": client4.Addr(), "a local pod's IPv6 address": client6.Addr(),
		"the hairpin address": HairpinAddr4, "the IPv6 hairpin address": HairpinAddr6,
	} {
		dst := client4.Addr()
		if src.Is6() {
			dst = client6.Addr()
		}
		if ret, _ := run(t, d.FromNetdev, tcpTo(src, dst, 41101, 80, tcpSYN).bytes()); ret != actShot {
			t.Errorf("from the uplink with %s: verdict %d, want dropped", name, ret)
		}
	}
	wantDrops(t, d, DropSpoofedUplink, HookFromNetdev, 4)
	if ret, _ := run(t, d.FromNetdev, tcpTo(polRemote, client4.Addr(), 41102, 80, tcpSYN).bytes()); ret != actOK {
		t.Errorf("from the uplink with a remote pod's address: verdict %d, want passed", ret)
	}

	p := adversarialDatapath(t, PolicyIngressIsolated)
	allow(t, p, PolicyRule(polEndpoint, IdentityHost, PolicyIngress, 0, 0, 0))
	if got := runOn(t, p, tcpTo(HairpinAddr4, polPod, 41103, 8080, tcpSYN)); got != actShot {
		t.Errorf("unbounced packet from the hairpin address into an isolated pod: verdict %d, want dropped (no host identity)", got)
	}
}

// TestUplinkPodCIDRSource: once the agent has written the node's pod
// CIDRs, nothing from outside may come from any address in them (an
// ipBlock covering the CIDR would admit an unused one); other nodes' pods
// still arrive.
func TestUplinkPodCIDRSource(t *testing.T) {
	d := loadTest(t, Config{})
	if err := d.SetNodePodCIDRs([]netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00:244::/64")}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		src  string
		want uint32
	}{
		{"10.244.0.77", actShot},  // unused address of this node's CIDR
		{"10.244.0.2", actShot},   // a pod of this node
		{"fd00:244::77", actShot}, // unused IPv6 address of this node's CIDR
		{"10.244.1.5", actOK},     // a pod of another node
		{"10.244.255.1", actOK},   // outside this node's /24
		{"fd00:244:1::5", actOK},  // another node's IPv6 pod
		{"192.168.3.4", actOK},    // the world
	} {
		src := netip.MustParseAddr(c.src)
		dst := client4.Addr()
		if src.Is6() {
			dst = client6.Addr()
		}
		if ret, _ := run(t, d.FromNetdev, tcpTo(src, dst, 41300, 80, tcpSYN).bytes()); ret != c.want {
			t.Errorf("from the uplink with source %s: verdict %d, want %d", src, ret, c.want)
		}
	}
	wantDrops(t, d, DropSpoofedUplink, HookFromNetdev, 3)
}

// TestPolicyDropEvent: a policy drop reports the endpoint and the remote's
// identity.
func TestPolicyDropEvent(t *testing.T) {
	d := adversarialDatapath(t, PolicyIngressIsolated)
	events := eventReader(t, d)
	if got := runOn(t, d, tcpTo(polRemote, polPod, 41200, 22, tcpSYN)); got != actShot {
		t.Fatalf("verdict %d, want dropped", got)
	}
	ev := nextEvent(t, events, EventDrop)
	if DropReason(ev.Reason) != DropPolicyIngress || ev.Endpoint != polEndpoint || ev.Identity != idRemote || Hook(ev.Hook) != HookToPod ||
		ev.Flags != EventFPolicy|EventFIsolated || ev.Dir != PolicyIngress {
		t.Errorf("event %+v, want policy_ingress at to_pod for endpoint %d from identity %d", ev, polEndpoint, idRemote)
	}
}
