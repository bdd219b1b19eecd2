package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

// dsrCluster: a client and two nodes on one underlay bridge, and a pod
// behind node B. Node A serves a NodePort (TCP and UDP, both families) on
// its own addresses whose only backend is the pod; the client has no route
// to the pod CIDR. Both nodes run xdp_netdev in native mode, with what the
// test's Config turns on (DSR, the XDP masquerade).
type dsrCluster struct {
	client, a, b, pod, underlay *netnstest.NS
	dpA, dpB                    *Datapath
	cfg                         Config // as loaded on both nodes
	root                        string // node A's pin root, to load it again
}

var (
	dsrClient4, dsrClient6 = netip.MustParseAddr("192.168.50.100"), netip.MustParseAddr("fd00:50::100")
	dsrA4, dsrA6           = netip.MustParseAddr("192.168.50.10"), netip.MustParseAddr("fd00:50::10")
	dsrB4, dsrB6           = netip.MustParseAddr("192.168.50.11"), netip.MustParseAddr("fd00:50::11")
	dsrPod4, dsrPod6       = netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("fd00:10:244:1::2")
	dsrPodCIDRs            = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}
)

const dsrNodePort = 30080

func newDSRCluster(t testing.TB, cfg Config) *dsrCluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces, XDP and BPF")
	}
	c := &dsrCluster{
		cfg:      cfg,
		underlay: netnstest.New(t, "sl-dsr-u"), client: netnstest.New(t, "sl-dsr-c"),
		a: netnstest.New(t, "sl-dsr-a"), b: netnstest.New(t, "sl-dsr-b"), pod: netnstest.New(t, "sl-dsr-pod"),
	}
	c.underlay.IP(t, "link", "add", "br0", "type", "bridge")
	c.underlay.IP(t, "link", "set", "br0", "up")
	hosts := []struct {
		ns         *netnstest.NS
		port       string
		addr4, ad6 netip.Addr
	}{{c.client, "u-client", dsrClient4, dsrClient6}, {c.a, "u-node-a", dsrA4, dsrA6}, {c.b, "u-node-b", dsrB4, dsrB6}}
	for _, h := range hosts {
		h.ns.VethPair(t, "eth0", c.underlay, h.port)
		c.underlay.IP(t, "link", "set", h.port, "master", "br0")
		h.ns.IP(t, "addr", "add", h.addr4.String()+"/24", "dev", "eth0")
		h.ns.IP(t, "addr", "add", h.ad6.String()+"/64", "dev", "eth0", "nodad")
		// A veth in native XDP hands what it transmits (XDP_TX) to its
		// peer's NAPI, which exists only while the peer runs XDP too.
		xdpPass(t, c.underlay, h.port)
	}
	// A frame on a wire carries full checksums; a veth's sender may leave
	// the L4 checksum to an offload that never happens, which XDP, given
	// no socket buffer, cannot tell. The client is the outside world.
	c.client.Do(t, func() {
		if out, err := exec.Command("ethtool", "-K", "eth0", "tx", "off").CombinedOutput(); err != nil {
			t.Fatalf("ethtool -K eth0 tx off in the client: %v %s", err, out)
		}
	})
	c.b.VethPair(t, "hpod", c.pod, "pod0")
	c.b.IP(t, "addr", "add", "10.244.1.1/24", "dev", "hpod")
	c.b.IP(t, "addr", "add", "fd00:10:244:1::1/64", "dev", "hpod", "nodad")
	c.b.Sysctl(t, "net.ipv4.ip_forward=1")
	c.b.Sysctl(t, "net.ipv6.conf.all.forwarding=1")
	c.pod.IP(t, "addr", "add", dsrPod4.String()+"/24", "dev", "pod0")
	c.pod.IP(t, "addr", "add", dsrPod6.String()+"/64", "dev", "pod0", "nodad")
	c.pod.IP(t, "route", "add", "default", "via", "10.244.1.1")
	c.pod.IP(t, "-6", "route", "add", "default", "via", "fd00:10:244:1::1")

	// A node forwards, as Kubernetes requires; bpf_fib_lookup, which XDP
	// asks for the way on, answers nothing where forwarding is off (the
	// default of a new namespace, unless the kernel copies the host's).
	c.a.Sysctl(t, "net.ipv4.ip_forward=1")
	c.a.Sysctl(t, "net.ipv6.conf.all.forwarding=1")
	// XDP cannot resolve a neighbour: the agent keeps the other nodes'
	// resolved with managed entries, as here.
	c.a.IP(t, "neigh", "replace", dsrB4.String(), "dev", "eth0", "managed")
	c.dpA = loadTest(t, cfg)
	c.root = c.dpA.PinRoot()
	c.dpB = loadTest(t, cfg)
	c.attachA(t)
	c.b.Do(t, func() {
		if err := c.dpB.AttachDevice("eth0", AttachTCX); err != nil {
			t.Fatal(err)
		}
		if mode, err := c.dpB.AttachXDP("eth0", XDPNative); err != nil || mode != XDPNative {
			t.Fatalf("attach XDP on node B: %v %v, want native", mode, err)
		}
		if err := c.dpB.AttachPod("hpod", AttachTCX); err != nil {
			t.Fatal(err)
		}
	})
	podIf, err := netlinkIndex(t, c.b, "hpod")
	if err != nil {
		t.Fatal(err)
	}
	addEndpoints(t, c.dpB, uint32(podIf), dsrPod4, dsrPod6)

	for _, n := range []struct {
		dp  *Datapath
		own []netip.Addr
	}{{c.dpA, []netip.Addr{dsrA4, dsrA6}}, {c.dpB, []netip.Addr{dsrB4, dsrB6}}} {
		if err := n.dp.SetNodeAddrs(n.own); err != nil {
			t.Fatal(err)
		}
		for _, a := range []netip.Addr{dsrA4, dsrA6, dsrB4, dsrB6} {
			if err := n.dp.PutNode(a); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, cidr := range dsrPodCIDRs {
		if err := c.dpA.PutTunnelEndpoint(cidr, dsrB4); err != nil {
			t.Fatal(err)
		}
	}
	// The NodePort as the agent compiles it on each node: frontends on
	// the node's own addresses; the backend is local on B only.
	id := uint32(1)
	for _, proto := range []uint8{6, 17} {
		for fam, pod := range map[int]netip.Addr{4: dsrPod4, 6: dsrPod6} {
			be := netip.AddrPortFrom(pod, 8080)
			vipA, vipB := dsrA4, dsrB4
			if fam == 6 {
				vipA, vipB = dsrA6, dsrB6
			}
			install(t, c.dpA, testService{id: id, vip: netip.AddrPortFrom(vipA, dsrNodePort), proto: proto,
				scope: ScopeExternal, backends: []testBackend{{id: id, addr: be}}})
			install(t, c.dpB, testService{id: id, vip: netip.AddrPortFrom(vipB, dsrNodePort), proto: proto,
				scope: ScopeExternal, backends: []testBackend{{id: id, addr: be, flags: BackendLocal}}})
			id++
		}
	}
	c.pod.ServeWhoAmI(t, 8080)
	return c
}

func (c *dsrCluster) attachA(t testing.TB) {
	t.Helper()
	c.a.Do(t, func() {
		if err := c.dpA.AttachDevice("eth0", AttachTCX); err != nil {
			t.Fatal(err)
		}
		if mode, err := c.dpA.AttachXDP("eth0", XDPNative); err != nil || mode != XDPNative {
			t.Fatalf("attach XDP on node A: %v %v, want native", mode, err)
		}
	})
}

// restartA is an agent restart on node A: its datapath is loaded again
// from its pins, with the same Config, and attached anew.
func (c *dsrCluster) restartA(t *testing.T) {
	t.Helper()
	c.dpA.Close()
	cfg := c.cfg
	cfg.PinRoot, cfg.MaglevSize = c.root, 251
	var err error
	if c.dpA, err = Load(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.dpA.Close() })
	c.attachA(t)
}

// sendAcrossRestartA sends 1,000 bytes on conn, restarts node A's agent
// (restartA), sends 100,000 more and closes its side; it returns the last
// line the server answered (serveSink and servePeer: the bytes they got).
func (c *dsrCluster) sendAcrossRestartA(t *testing.T, conn net.Conn) (string, error) {
	t.Helper()
	if _, err := conn.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	c.restartA(t)
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write(make([]byte, 100000)); err != nil {
		return "", err
	}
	_ = conn.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(conn)
	lines := strings.Fields(string(got))
	if len(lines) == 0 {
		return "", err
	}
	return lines[len(lines)-1], err
}

// xdpPass attaches a program that passes everything to dev in ns, for as
// long as the test runs.
func xdpPass(t testing.TB, ns *netnstest.NS, dev string) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	ns.Do(t, func() {
		var l netlink.Link
		var xl link.Link
		if l, err = netlink.LinkByName(dev); err == nil {
			xl, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: l.Attrs().Index})
		}
		if err != nil {
			t.Fatalf("attach XDP pass on %s: %v", dev, err)
		}
		t.Cleanup(func() { xl.Close() })
	})
}

func netlinkIndex(t testing.TB, ns *netnstest.NS, dev string) (int, error) {
	var idx int
	var err error
	ns.Do(t, func() {
		var l netlink.Link
		if l, err = netlink.LinkByName(dev); err == nil {
			idx = l.Attrs().Index
		}
	})
	return idx, err
}

func (c *dsrCluster) counters(t testing.TB, dp *Datapath) map[Counter]uint64 {
	t.Helper()
	v, err := dp.CounterValues()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// upload sends n bytes over one TCP connection from the client to the
// pod's sink at dst and returns the byte count the sink reports.
func upload(t *testing.T, from *netnstest.NS, dst netip.AddrPort, n int) (string, error) {
	var got string
	var err error
	from.Do(t, func() {
		var conn net.Conn
		if conn, err = net.DialTimeout("tcp", dst.String(), 3*time.Second); err != nil {
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err = io.Copy(conn, io.LimitReader(zeroReader{}, int64(n))); err != nil {
			return
		}
		_ = conn.(*net.TCPConn).CloseWrite()
		var b []byte
		b, err = io.ReadAll(conn)
		got = string(bytes.TrimSpace(b))
	})
	return got, err
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// serveSink counts what each TCP connection on port sends and answers the
// count once the client is done.
func serveSink(t *testing.T, ns *netnstest.NS, port int) {
	t.Helper()
	for _, addr := range []struct{ network, host string }{{"tcp4", "0.0.0.0"}, {"tcp6", "::"}} {
		var ln net.Listener
		var err error
		ns.Do(t, func() { ln, err = net.Listen(addr.network, net.JoinHostPort(addr.host, strconv.Itoa(port))) })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer conn.Close()
					n, _ := io.Copy(io.Discard, conn)
					fmt.Fprintln(conn, n)
				}()
			}
		}()
	}
}

// TestDirectServerReturn: a client reaches a NodePort of node A whose only
// backend is a pod on node B. With DSR, node A's XDP sends each packet on
// to node B, the pod sees the client's own address (not node A's), and
// the replies go from node B straight to the client, so node A translates
// none. Large uploads fit (node B lowers the MSS), a flow survives node
// A's datapath being loaded again (an agent restart), and a forged
// sent-on packet from a host that is not a node is dropped.
func TestDirectServerReturn(t *testing.T) {
	c := newDSRCluster(t, Config{DSR: true})
	serveSink(t, c.pod, 9000)
	events := eventReader(t, c.dpA)
	for _, fam := range []struct {
		vip, client netip.Addr
	}{{dsrA4, dsrClient4}, {dsrA6, dsrClient6}} {
		dst := netip.AddrPortFrom(fam.vip, dsrNodePort)
		for _, network := range []string{"tcp", "udp"} {
			if got := c.client.WhoAmI(t, network, dst); got != fam.client.String() {
				t.Errorf("client -> NodePort %s over %s: the pod saw %q, want the client's own %s", dst, network, got, fam.client)
			}
		}
	}
	a, b := c.counters(t, c.dpA), c.counters(t, c.dpB)
	if a[CounterDSRSent] < 4 || b[CounterDSRReceived] < 4 || b[CounterDSRReplies] < 4 {
		t.Errorf("DSR counters: node A sent %d, node B received %d and replied %d; want at least 4 each",
			a[CounterDSRSent], b[CounterDSRReceived], b[CounterDSRReplies])
	}
	if a[CounterDSRReplies] != 0 {
		t.Errorf("node A translated %d replies: the replies went through it", a[CounterDSRReplies])
	}
	// Node A reports the flows XDP sent on as from_netdev would have: a
	// TRACE_SERVICE event each, with the backend chosen.
	traced := map[string]bool{}
	for _, ev := range drainEvents(t, events) {
		if ev.Type == EventTrace && ev.Reason == TraceService && Hook(ev.Hook) == HookFromNetdev {
			traced[fmt.Sprintf("%s/%d", AddrFrom(ev.NatAddr), ev.Proto)] = true
		}
	}
	for _, want := range []string{"10.244.1.2/6", "10.244.1.2/17", "fd00:10:244:1::2/6", "fd00:10:244:1::2/17"} {
		if !traced[want] {
			t.Errorf("node A sent no TRACE_SERVICE event for its flow to %s (got %v)", want, traced)
		}
	}

	// A large upload: full-size segments from the client would not fit
	// the underlay once wrapped, had node B not lowered the MSS.
	const size = 2 << 20
	for _, vip := range []netip.Addr{dsrA6, dsrA4} {
		// The sink is a second port of the same pod: give it a NodePort.
		c.addService(t, vip, 30090, 9000, 6)
		if got, err := upload(t, c.client, netip.AddrPortFrom(vip, 30090), size); err != nil || got != strconv.Itoa(size) {
			t.Errorf("upload of %d bytes through NodePort %s:30090: sink counted %q (%v)", size, vip, got, err)
		}
	}
	drops, err := c.dpA.DropCounts()
	if err != nil {
		t.Fatal(err)
	}
	if n := drops[DropDSRTooBig].Packets; n != 0 {
		t.Errorf("node A dropped %d packets as too big to send on", n)
	}

	// An agent restart on node A: the datapath is loaded again from its
	// pins and attached anew; an open connection keeps its backend.
	var conn net.Conn
	c.client.Do(t, func() { conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(dsrA4, 30090).String(), 3*time.Second) })
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got, err := c.sendAcrossRestartA(t, conn); got != "101000" {
		t.Errorf("a connection across node A's restart: sink counted %q (%v), want 101000", got, err)
	}

	// Hostile twin: the client, which is no node, sends node B a Geneve
	// packet with the DSR option, to hand the pod a packet from a source
	// of its choosing. Node B drops it.
	before := c.counters(t, c.dpB)[CounterDSRReceived]
	c.client.Do(t, func() {
		u, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dsrB4, DefaultDSRPort)))
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		if _, err := u.Write(forgedDSR(netip.MustParseAddr("203.0.113.9"), dsrPod4, dsrA4)); err != nil {
			t.Fatal(err)
		}
	})
	time.Sleep(200 * time.Millisecond)
	drops, err = c.dpB.DropCounts()
	if err != nil {
		t.Fatal(err)
	}
	if drops[DropDSRInvalid].Packets == 0 || c.counters(t, c.dpB)[CounterDSRReceived] != before {
		t.Errorf("a forged sent-on packet from the client was not dropped: dsr_invalid %d, received %d -> %d",
			drops[DropDSRInvalid].Packets, before, c.counters(t, c.dpB)[CounterDSRReceived])
	}
}

// TestDirectServerReturnOff: the same cluster with DSR off, the tc path
// only and no masquerade: node A translates the flow to the pod, which
// answers node A's client through node B, not back through A; the reply
// never comes back translated, so the client gets no answer. This is what
// TestDirectServerReturn relies on DSR to fix.
func TestDirectServerReturnOff(t *testing.T) {
	c := newDSRCluster(t, Config{})
	c.a.Sysctl(t, "net.ipv4.ip_forward=1")
	c.a.IP(t, "route", "add", "10.244.1.0/24", "via", dsrB4.String())
	if got := c.client.WhoAmI(t, "udp", netip.AddrPortFrom(dsrA4, dsrNodePort)); got == dsrClient4.String() {
		t.Errorf("without DSR the client's NodePort flow was answered as if sent on: %q", got)
	}
	if n := c.counters(t, c.dpA)[CounterDSRSent]; n != 0 {
		t.Errorf("with DSR off node A sent %d packets on", n)
	}
}

// forgedDSR is the UDP payload of a Geneve packet with Sluice's DSR option
// (service vip:30080) around an IPv4 UDP datagram from src to dst:8080.
func forgedDSR(src, dst, vip netip.Addr) []byte {
	var b bytes.Buffer
	b.Write([]byte{6, 0, 0x08, 0x00, 0, 0, 0, 0}) // 6 words of options, IPv4 inside
	_ = binary.Write(&b, binary.BigEndian, uint16(0xfff5))
	b.Write([]byte{0x01, 5})
	v := vip.As16()
	b.Write(v[:])
	_ = binary.Write(&b, binary.BigEndian, uint16(dsrNodePort))
	b.Write([]byte{0, 0})
	payload := []byte("forged")
	ip := []byte{0x45, 0, 0, byte(20 + 8 + len(payload)), 0, 0, 0, 0, 64, 17, 0, 0}
	s4, d4 := src.As4(), dst.As4()
	ip = append(append(ip, s4[:]...), d4[:]...)
	b.Write(ip)
	_ = binary.Write(&b, binary.BigEndian, []uint16{40000, 8080, uint16(8 + len(payload)), 0})
	b.Write(payload)
	return b.Bytes()
}
