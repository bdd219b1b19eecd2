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
