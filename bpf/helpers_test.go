package bpf

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/bpf/maglev"
	"github.com/sluice-net/sluice/internal/testutil/bpffs"
)

// tc verdicts as BPF_PROG_TEST_RUN reports them.
const (
	actOK       = 0
	actShot     = 2
	actRedirect = 7
)

// loadTest loads a datapath into a fresh pin root. A small Maglev table
// keeps the tests quick; the algorithm does not depend on the size.
func loadTest(t testing.TB, cfg Config) *Datapath {
	t.Helper()
	bpffs.Require(t)
	if cfg.PinRoot == "" {
		cfg.PinRoot = bpffs.Root(t)
	}
	if cfg.MaglevSize == 0 {
		cfg.MaglevSize = 251
	}
	d, err := Load(cfg)
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	addEndpoints(t, d, 1, testPods...)
	return d
}

// testPods are the addresses of the local test pods behind the veth the
// test runs use: BPF_PROG_TEST_RUN runs on the loopback device, ifindex 1.
// The slot, which holds one address per family, gets the last of each:
// client4 and client6, the common case; the others take the map path.
var testPods = []netip.Addr{netip.MustParseAddr("10.244.0.3"), netip.MustParseAddr("10.244.0.9"), client4.Addr(), client6.Addr()}

// addEndpoints records addrs as a pod's behind the veth ifindex, as the CNI
// does: from_pod lets a pod send only from its own addresses.
func addEndpoints(t testing.TB, d *Datapath, ifindex uint32, addrs ...netip.Addr) {
	t.Helper()
	if err := d.RecordEndpoint(ifindex, addrs, EndpointValue{}); err != nil {
		t.Fatal(err)
	}
}

type testBackend struct {
	id    uint32
	addr  netip.AddrPort
	flags uint8
}

type testService struct {
	id       uint32
	vip      netip.AddrPort
	proto    uint8
	backends []testBackend
	affinity uint32
	flags    uint32
	scope    uint8 // ScopeInternal unless set
}

// install writes a service the way the agent will: backends, then the
// Maglev table, then the service entry that makes them reachable.
func install(t testing.TB, d *Datapath, s testService) {
	t.Helper()
	var names []string
	for _, b := range s.backends {
		v := BackendValue{Addr: Addr(b.addr.Addr()), Port: Port(b.addr.Port()), Flags: b.flags, SvcId: s.id}
		if err := d.Backends.Put(b.id, v); err != nil {
			t.Fatalf("put backend %d: %v", b.id, err)
		}
		names = append(names, b.addr.String())
	}
	// Sized as the agent sizes it, in the map of its size class.
	size := maglev.Size(len(s.backends), d.MaglevMaxSize())
	class, ok := MaglevClassOfSize(size)
	if !ok {
		t.Fatalf("no Maglev class of size %d", size)
	}
	if len(s.backends) > 0 {
		idx, err := maglev.Table(names, size)
		if err != nil {
			t.Fatal(err)
		}
		table := make([]uint32, size)
		for i, bi := range idx {
			table[i] = s.backends[bi].id
		}
		if err := d.SetMaglevTable(class, s.id, table); err != nil {
			t.Fatal(err)
		}
	}
	key := ServiceKey{Addr: Addr(s.vip.Addr()), Port: Port(s.vip.Port()), Proto: s.proto, Scope: s.scope}
	val := ServiceValue{Id: s.id, BackendCount: uint32(len(s.backends)), AffinityTimeout: s.affinity, Flags: WithMaglevClass(s.flags, class)}
	if err := d.Services.Put(key, val); err != nil {
		t.Fatalf("put service: %v", err)
	}
}

var (
	podMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	hostMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
)

// flow describes one packet for the packet builders.
type flow struct {
	src, dst   netip.AddrPort
	proto      uint8
	tcpFlags   string // any of "S", "A", "F", "R"
	seq, ack   uint32
	payload    []byte
	udpNoCsum  bool // IPv4 UDP without checksum
	srcMAC     net.HardwareAddr
	dstMAC     net.HardwareAddr
	ipID       uint16
	ipFlagsDF  bool
	ttl        uint8
	ipv4Option bool
	tos        uint8
	icmp       []byte // with proto ICMP/ICMPv6: type, code, then the body after the checksum
}

func (f flow) v6() bool { return f.src.Addr().Is6() && !f.src.Addr().Is4In6() }

// build serialises a packet with every length and checksum correct, the
// reference the datapath's incremental checksum updates must match.
func build(t testing.TB, f flow) []byte {
	t.Helper()
	if f.srcMAC == nil {
		f.srcMAC, f.dstMAC = podMAC, hostMAC
	}
	if f.ttl == 0 {
		f.ttl = 64
	}
	eth := &layers.Ethernet{SrcMAC: f.srcMAC, DstMAC: f.dstMAC}
	var l3 gopacket.NetworkLayer
	var ls []gopacket.SerializableLayer
	if f.v6() {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: f.ttl, NextHeader: layers.IPProtocol(f.proto),
			SrcIP: f.src.Addr().AsSlice(), DstIP: f.dst.Addr().AsSlice()}
		l3 = ip6
		ls = append(ls, eth, ip6)
	} else {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{Version: 4, TTL: f.ttl, TOS: f.tos, Protocol: layers.IPProtocol(f.proto), Id: f.ipID,
			SrcIP: f.src.Addr().AsSlice(), DstIP: f.dst.Addr().AsSlice()}
		if f.ipFlagsDF {
			ip4.Flags = layers.IPv4DontFragment
		}
		if f.ipv4Option {
			ip4.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
		}
		l3 = ip4
		ls = append(ls, eth, ip4)
	}
	switch f.proto {
	case unix.IPPROTO_TCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(f.src.Port()), DstPort: layers.TCPPort(f.dst.Port()),
			Seq: f.seq, Ack: f.ack, Window: 64240}
		if strings.Contains(f.tcpFlags, "R") {
			tcp.Window = 0 // as the datapath's own RSTs
		}
		for _, c := range f.tcpFlags {
			switch c {
			case 'S':
				tcp.SYN = true
			case 'A':
				tcp.ACK = true
			case 'F':
				tcp.FIN = true
			case 'R':
				tcp.RST = true
			}
		}
		_ = tcp.SetNetworkLayerForChecksum(l3)
		ls = append(ls, tcp)
	case unix.IPPROTO_UDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(f.src.Port()), DstPort: layers.UDPPort(f.dst.Port())}
		_ = udp.SetNetworkLayerForChecksum(l3)
		ls = append(ls, udp)
	case unix.IPPROTO_ICMP:
		ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(f.icmp[0], f.icmp[1]),
			Id: uint16(f.icmp[2])<<8 | uint16(f.icmp[3]), Seq: uint16(f.icmp[4])<<8 | uint16(f.icmp[5])})
	case unix.IPPROTO_ICMPV6:
		icmp6 := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(f.icmp[0], f.icmp[1])}
		_ = icmp6.SetNetworkLayerForChecksum(l3)
		ls = append(ls, icmp6, gopacket.Payload(f.icmp[2:6]))
	case unix.IPPROTO_SCTP:
		ls = append(ls, gopacket.Payload(sctpCommonHeader(f.src.Port(), f.dst.Port())))
	}
	if len(f.payload) > 0 {
		ls = append(ls, gopacket.Payload(f.payload))
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialise %+v: %v", f, err)
	}
	// Drop gopacket's padding to the 60-byte Ethernet minimum: the
	// datapath's packets carry exactly their IP length.
	out := buf.Bytes()
	if f.v6() {
		out = out[:14+40+int(binary.BigEndian.Uint16(out[14+4:]))]
	} else {
		out = out[:14+int(binary.BigEndian.Uint16(out[14+2:]))]
	}
	if f.udpNoCsum && f.proto == unix.IPPROTO_UDP && !f.v6() {
		off := 14 + 20 + 6
		out[off], out[off+1] = 0, 0
	}
	return out
}

// sctpCommonHeader is an SCTP common header with a fixed verification tag
// and checksum: the datapath must never touch its bytes.
func sctpCommonHeader(sport, dport uint16) []byte {
	return []byte{byte(sport >> 8), byte(sport), byte(dport >> 8), byte(dport), 0xde, 0xad, 0xbe, 0xef, 0x12, 0x34, 0x56, 0x78}
}

// run sends one packet through prog and returns the verdict and the packet
// as the program left it.
func run(t testing.TB, prog *ebpf.Program, pkt []byte) (uint32, []byte) {
	t.Helper()
	opts := &ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+256)}
	ret, err := prog.Run(opts)
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret, opts.DataOut
}

// samePacket fails the test with a decoded diff when got != want.
func samePacket(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if string(got) == string(want) {
		return
	}
	t.Errorf("%s: packet differs\n got: %s\nwant: %s\n got bytes %x\nwant bytes %x", what,
		describe(got), describe(want), got, want)
}

func describe(b []byte) string {
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	s := ""
	for _, l := range p.Layers() {
		s += fmt.Sprintf("%v ", gopacket.LayerString(l))
	}
	return s
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// affinityTo is an affinity entry naming backend b, last used at ns.
func affinityTo(ns uint64, b testBackend) AffinityValue {
	return AffinityValue{LastUsedNs: ns, BackendId: b.id, Addr: Addr(b.addr.Addr()), Port: Port(b.addr.Port())}
}
