package bpf

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// NodePort traffic entering the node's uplink: from_netdev and to_netdev.
var (
	extClient = netip.MustParseAddrPort("192.168.77.1:40000")
	nodePort  = netip.MustParseAddrPort("192.168.77.11:30080")
	localPod  = netip.MustParseAddrPort("10.244.1.5:8080")
	remotePod = netip.MustParseAddrPort("10.244.2.5:8080")
)

// skbMark runs pkt through prog with a __sk_buff context and returns the
// verdict, the packet and the mark the program left.
func skbMark(t *testing.T, prog *ebpf.Program, pkt []byte) (uint32, []byte, uint32) {
	t.Helper()
	return skbMarkIn(t, prog, pkt, 0)
}

// skbMarkIn is skbMark with the mark the packet arrives with.
func skbMarkIn(t *testing.T, prog *ebpf.Program, pkt []byte, markIn uint32) (uint32, []byte, uint32) {
	t.Helper()
	// struct __sk_buff: len, pkt_type, mark, ... (192 bytes in all); the
	// kernel fills what it does not let the caller set.
	ctx := make([]byte, 192)
	binary.NativeEndian.PutUint32(ctx[8:], markIn)
	ctxOut := make([]byte, 192)
	opts := &ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+256), Context: ctx, ContextOut: ctxOut}
	ret, err := prog.Run(opts)
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret, opts.DataOut, binary.NativeEndian.Uint32(ctxOut[8:])
}

func TestNodePort(t *testing.T) {
	d := loadTest(t, Config{})
	install(t, d, testService{id: 70, vip: nodePort, proto: unix.IPPROTO_TCP, scope: ScopeExternal,
		backends: []testBackend{{id: 7000, addr: localPod, flags: BackendLocal}}})
	other := netip.AddrPortFrom(nodePort.Addr(), 30081)
	install(t, d, testService{id: 71, vip: other, proto: unix.IPPROTO_TCP, scope: ScopeExternal,
		backends: []testBackend{{id: 7100, addr: remotePod}}})
	empty := netip.AddrPortFrom(nodePort.Addr(), 30082)
	install(t, d, testService{id: 72, vip: empty, proto: unix.IPPROTO_TCP, scope: ScopeExternal})

	t.Run("local backend: DNAT, client address kept, no masquerade mark", func(t *testing.T) {
		req := flow{src: extClient, dst: nodePort, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}
		ret, out, mark := skbMark(t, d.FromNetdev, build(t, req))
		want := req
		want.dst = localPod
		if ret != actOK || mark != 0 {
			t.Fatalf("verdict %d mark %#x, want pass without mark", ret, mark)
		}
		samePacket(t, "request", out, build(t, want))

		reply := flow{src: localPod, dst: extClient, proto: unix.IPPROTO_TCP, tcpFlags: "SA", seq: 9, ack: 2}
		ret, out = run(t, d.ToNetdev, build(t, reply))
		wantReply := reply
		wantReply.src = nodePort
		if ret != actOK {
			t.Fatalf("reply verdict %d", ret)
		}
		samePacket(t, "reply leaving the uplink", out, build(t, wantReply))
	})

	t.Run("remote backend: DNAT and the masquerade mark", func(t *testing.T) {
		req := flow{src: extClient, dst: other, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}
		ret, out, mark := skbMark(t, d.FromNetdev, build(t, req))
		want := req
		want.dst = remotePod
		if ret != actOK || mark != MarkSNAT {
			t.Fatalf("verdict %d mark %#x, want pass with mark %#x", ret, mark, MarkSNAT)
		}
		samePacket(t, "request", out, build(t, want))
	})

	t.Run("an idle flow whose entries were evicted keeps its backend", func(t *testing.T) {
		client := netip.MustParseAddrPort("192.168.77.20:41000")
		run(t, d.FromNetdev, build(t, flow{src: client, dst: other, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}))
		flushMap(t, d.ConntrackTCP) // evicted while the flow idled
		ack := flow{src: client, dst: other, proto: unix.IPPROTO_TCP, tcpFlags: "A", seq: 2, payload: []byte("more")}
		ret, out, mark := skbMark(t, d.FromNetdev, build(t, ack))
		want := ack
		want.dst = remotePod
		if ret != actOK || mark != MarkSNAT {
			t.Fatalf("verdict %d mark %#x, want pass with mark %#x", ret, mark, MarkSNAT)
		}
		samePacket(t, "the idle flow's next packet", out, build(t, want))
	})

	t.Run("no backends: RST back out of the uplink", func(t *testing.T) {
		ret, _ := run(t, d.FromNetdev, build(t, flow{src: extClient, dst: empty, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}))
		if ret != actRedirect {
			t.Errorf("verdict %d, want the reject redirected back", ret)
		}
	})

	for _, c := range []struct {
		name string
		f    flow
	}{
		{"a SYN-ACK of no known flow is not ours", flow{src: netip.MustParseAddrPort("192.168.77.12:30080"), dst: nodePort, proto: unix.IPPROTO_TCP, tcpFlags: "SA", seq: 5, ack: 1}},
		{"a RST of no known flow is not ours", flow{src: netip.MustParseAddrPort("192.168.77.12:30080"), dst: nodePort, proto: unix.IPPROTO_TCP, tcpFlags: "R", seq: 5}},
		{"traffic to the node itself", flow{src: extClient, dst: netip.AddrPortFrom(nodePort.Addr(), 22), proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}},
		{"ClusterIP entries do not answer from outside", flow{src: extClient, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			install(t, d, oneBackend(73, vip4, unix.IPPROTO_TCP, localPod))
			pkt := build(t, c.f)
			ret, out := run(t, d.FromNetdev, pkt)
			if ret != actOK {
				t.Fatalf("verdict %d, want pass", ret)
			}
			samePacket(t, "untouched", out, pkt)
		})
	}
}

// TestICMPErrorsOnUplinks: ICMP errors about NodePort flows are translated
// on the uplinks, both ways and in both families. Leaving (to_netdev): an
// error about the client's packet, sent by the backend or by a hop after
// the node, quotes the packet the client sent (to the NodePort) and comes
// from the node when the backend sent it. Arriving (from_netdev): an
// error from the path back to the client (fragmentation needed, packet
// too big) about the reply, which left as from the NodePort, goes to the
// backend quoting its own packet.
func TestICMPErrorsOnUplinks(t *testing.T) {
	d := loadTest(t, Config{})
	node4, node6 := ap("192.168.77.11:30090"), ap("[fd00:77::11]:30090")
	be4, be6 := ap("10.244.1.5:8080"), ap("[fd00:244:1::5]:8080")
	client4, client6 := ap("192.168.77.1:40100"), ap("[fd00:77::1]:40100")
	for i, c := range []struct {
		proto       uint8
		node, be, c netip.AddrPort
	}{{unix.IPPROTO_TCP, node4, be4, client4}, {unix.IPPROTO_UDP, node4, be4, client4},
		{unix.IPPROTO_TCP, node6, be6, client6}, {unix.IPPROTO_UDP, node6, be6, client6}} {
		install(t, d, testService{id: uint32(90 + i), vip: c.node, proto: c.proto, scope: ScopeExternal,
			backends: []testBackend{{id: uint32(9000 + i), addr: c.be, flags: BackendLocal}}})
		req := flow{src: c.c, dst: c.node, proto: c.proto, tcpFlags: "S", seq: 1, payload: []byte("0123456789abcdef")}
		if ret, _ := run(t, d.FromNetdev, build(t, req)); ret != actOK {
			t.Fatalf("request %v: verdict %d", c, ret)
		}
	}
	// quoteOf is the first bytes of a packet as an ICMP error quotes
	// them: its IP header and 8 bytes of L4.
	quoteOf := func(f flow) []byte {
		hdr := 20
		if f.v6() {
			hdr = 40
		}
		return append([]byte(nil), build(t, f)[14:14+hdr+8]...)
	}
	// rewritten is a quote with its source (or destination) set to a:
	// address, port and the IPv4 header checksum, as the datapath writes
	// them; the quoted L4 checksum stays as sent.
	rewritten := func(q []byte, src bool, a netip.AddrPort) []byte {
		q = append([]byte(nil), q...)
		hdr, addrAt, size := 20, 12, 4
		if a.Addr().Is6() {
			hdr, addrAt, size = 40, 8, 16
		}
		portAt := hdr
		if !src {
			addrAt, portAt = addrAt+size, hdr+2
		}
		copy(q[addrAt:addrAt+size], a.Addr().AsSlice())
		binary.BigEndian.PutUint16(q[portAt:], a.Port())
		if hdr == 20 {
			q[10], q[11] = 0, 0
			binary.BigEndian.PutUint16(q[10:], ipv4HeaderChecksum(q[:20]))
		}
		return q
	}
	icmpOf := func(v6 bool, typ4, code4, typ6, code6 byte) (uint8, []byte) {
		if v6 {
			return unix.IPPROTO_ICMPV6, []byte{typ6, code6, 0, 0, 0x05, 0x00}
		}
		return unix.IPPROTO_ICMP, []byte{typ4, code4, 0, 0, 0x05, 0xdc}
	}
	router4, router6 := netip.MustParseAddr("192.168.77.254"), netip.MustParseAddr("fd00:77::fe")

	for _, c := range []struct {
		name        string
		node, be, c netip.AddrPort
		proto       uint8
		fromBackend bool // the backend sent the error (else a hop beyond the node)
	}{
		{"leaving: udp4 port unreachable from the backend", node4, be4, client4, unix.IPPROTO_UDP, true},
		{"leaving: tcp4 frag needed from a hop beyond the node", node4, be4, client4, unix.IPPROTO_TCP, false},
		{"leaving: udp6 port unreachable from the backend", node6, be6, client6, unix.IPPROTO_UDP, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			v6 := c.node.Addr().Is6()
			icmpProto, icmp := icmpOf(v6, 3, 4, 2, 0)
			if c.fromBackend {
				icmpProto, icmp = icmpOf(v6, 3, 3, 1, 4)
			}
			sender := c.be.Addr()
			if !c.fromBackend {
				sender = router4
				if v6 {
					sender = router6
				}
			}
			quoted := flow{src: c.c, dst: c.be, proto: c.proto, tcpFlags: "S", seq: 1, payload: []byte("0123456789abcdef")}
			errPkt := flow{src: netip.AddrPortFrom(sender, 0), dst: netip.AddrPortFrom(c.c.Addr(), 0), proto: icmpProto, icmp: icmp, payload: quoteOf(quoted)}
			ret, out := run(t, d.ToNetdev, build(t, errPkt))
			if ret != actOK {
				t.Fatalf("verdict %d", ret)
			}
			want := errPkt
			want.payload = rewritten(errPkt.payload, false, c.node)
			if c.fromBackend {
				want.src = netip.AddrPortFrom(c.node.Addr(), 0)
			}
			samePacket(t, "the error leaving for the client", out, build(t, want))
		})
	}

	for _, c := range []struct {
		name        string
		node, be, c netip.AddrPort
		proto       uint8
	}{
		{"arriving: tcp4 frag needed about the reply", node4, be4, client4, unix.IPPROTO_TCP},
		{"arriving: udp4 port unreachable from the client", node4, be4, client4, unix.IPPROTO_UDP},
		{"arriving: tcp6 packet too big about the reply", node6, be6, client6, unix.IPPROTO_TCP},
	} {
		t.Run(c.name, func(t *testing.T) {
			v6 := c.node.Addr().Is6()
			icmpProto, icmp := icmpOf(v6, 3, 4, 2, 0)
			sender := router4
			if v6 {
				sender = router6
			}
			if c.proto == unix.IPPROTO_UDP {
				icmpProto, icmp = icmpOf(v6, 3, 3, 1, 4)
				sender = c.c.Addr()
			}
			reply := flow{src: c.node, dst: c.c, proto: c.proto, tcpFlags: "SA", seq: 9, ack: 2, payload: []byte("0123456789abcdef")}
			errPkt := flow{src: netip.AddrPortFrom(sender, 0), dst: netip.AddrPortFrom(c.node.Addr(), 0), proto: icmpProto, icmp: icmp, payload: quoteOf(reply)}
			ret, out := run(t, d.FromNetdev, build(t, errPkt))
			if ret != actOK {
				t.Fatalf("verdict %d", ret)
			}
			want := errPkt
			want.dst = netip.AddrPortFrom(c.be.Addr(), 0)
			want.payload = rewritten(errPkt.payload, true, c.be)
			samePacket(t, "the error arriving for the backend", out, build(t, want))
		})
	}

	t.Run("an error about no flow of ours passes untouched", func(t *testing.T) {
		other := flow{src: ap("192.168.77.11:22"), dst: client4, proto: unix.IPPROTO_TCP, tcpFlags: "A", seq: 5}
		pkt := build(t, flow{src: netip.AddrPortFrom(router4, 0), dst: netip.AddrPortFrom(node4.Addr(), 0),
			proto: unix.IPPROTO_ICMP, icmp: []byte{3, 4, 0, 0, 0x05, 0xdc}, payload: quoteOf(other)})
		ret, out := run(t, d.FromNetdev, pkt)
		if ret != actOK {
			t.Fatalf("verdict %d", ret)
		}
		samePacket(t, "untouched", out, pkt)
	})
}
