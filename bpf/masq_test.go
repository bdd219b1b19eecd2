package bpf

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

// The XDP masquerade's range in these tests, and netfilter's (the
// agent's nftables masquerade of what tc marks): disjoint, as the agent
// keeps them, so the port a pod sees tells which of the two took the flow.
const (
	testMasqMin, testMasqMax = 61000, 61001
	testNftMasq              = "40000-40999"
)

// newMasqCluster is the DSR test's cluster under loadBalancerMode snat
// with the XDP masquerade: node A routes the pod CIDR via node B (native
// routing), keeps node B's neighbours resolved, and masquerades what tc
// marks for it with nftables, as the agent does.
func newMasqCluster(t *testing.T) *dsrCluster {
	return newMasqClusterPorts(t, testMasqMin, testMasqMax)
}

// newMasqClusterPorts is newMasqCluster with the XDP masquerade's ports
// min..max.
func newMasqClusterPorts(t testing.TB, min, max uint16) *dsrCluster {
	c := newDSRCluster(t, Config{MasqPortMin: min, MasqPortMax: max})
	c.a.IP(t, "route", "add", dsrPodCIDRs[0].String(), "via", dsrB4.String())
	c.a.IP(t, "-6", "route", "add", dsrPodCIDRs[1].String(), "via", dsrB6.String())
	c.a.IP(t, "neigh", "replace", dsrB6.String(), "dev", "eth0", "managed")
	// Node A's XDP turns node B's replies round: like the client, node B
	// is a wire's far end, whose frames carry full checksums.
	c.b.Do(t, func() {
		if out, err := exec.Command("ethtool", "-K", "eth0", "tx", "off").CombinedOutput(); err != nil {
			t.Fatalf("ethtool -K eth0 tx off in node B: %v %s", err, out)
		}
	})
	c.a.Do(t, func() {
		nft(t, "add table inet sl-test",
			"add chain inet sl-test post { type nat hook postrouting priority 100 ; }",
			fmt.Sprintf("add rule inet sl-test post meta mark %#x meta l4proto { tcp, udp } masquerade to :%s", MarkSNAT, testNftMasq))
	})
	return c
}

// servePeer answers on port of ns (TCP and UDP, both families) with the
// address and port it saw the client at; a TCP connection stays open
// until the client closes its side, and is then told how many bytes it
// sent. A datagram starting "echo" is sent back whole instead.
func servePeer(t testing.TB, ns *netnstest.NS, port int) {
	t.Helper()
	ns.Serve(t, port, func(c net.Conn) {
		fmt.Fprintln(c, c.RemoteAddr().(*net.TCPAddr).AddrPort())
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintln(c, n)
	}, func(payload []byte, from netip.AddrPort) []byte {
		if bytes.HasPrefix(payload, []byte("echo")) {
			return payload
		}
		return []byte(from.String())
	})
}

// askPeer opens a connection (or sends a datagram) from the client to dst
// and returns the connection and the address the pod saw it from. The
// caller closes the connection.
func askPeer(t *testing.T, from *netnstest.NS, network string, dst netip.AddrPort) (net.Conn, netip.AddrPort) {
	t.Helper()
	var conn net.Conn
	var seen string
	var err error
	from.Do(t, func() {
		if conn, err = net.DialTimeout(network, dst.String(), 3*time.Second); err != nil {
			return
		}
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		if network == "udp" {
			if _, err = conn.Write([]byte("?")); err != nil {
				return
			}
			buf := make([]byte, 64)
			var k int
			k, err = conn.Read(buf)
			seen = string(buf[:k])
			return
		}
		seen, err = bufio.NewReader(conn).ReadString('\n')
	})
	if err != nil {
		t.Fatalf("%s to %s from the client: %v", network, dst, err)
	}
	_ = conn.SetDeadline(time.Time{})
	ap, err := netip.ParseAddrPort(strings.TrimSpace(seen))
	if err != nil {
		t.Fatalf("%s to %s: the pod answered %q", network, dst, seen)
	}
	return conn, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func inMasqRange(port uint16) bool { return port >= testMasqMin && port <= testMasqMax }

// TestXDPMasquerade: loadBalancerMode snat with acceleration. Node A's
// XDP sends a NodePort flow to the pod behind node B from its own address
// and a port of the XDP masquerade's range, and the pod's replies back to
// the client, both without the kernel's stack: the counters show both
// ways, and the port shows it was not netfilter.
func TestXDPMasquerade(t *testing.T) {
	c := newMasqCluster(t)
	servePeer(t, c.pod, 8081)
	serveSink(t, c.pod, 9000)
	for _, vip := range []netip.Addr{dsrA4, dsrA6} {
		c.addService(t, vip, 30081, 8081, 6)
		c.addService(t, vip, 30081, 8081, 17)
	}
	for _, fam := range []struct{ vip, self netip.Addr }{{dsrA4, dsrA4}, {dsrA6, dsrA6}} {
		for _, network := range []string{"tcp", "udp"} {
			conn, seen := askPeer(t, c.client, network, netip.AddrPortFrom(fam.vip, 30081))
			conn.Close()
			if seen.Addr() != fam.self || !inMasqRange(seen.Port()) {
				t.Errorf("client -> NodePort %s:30081 over %s: the pod saw %s, want node A's %s and a port of %d-%d",
					fam.vip, network, seen, fam.self, testMasqMin, testMasqMax)
			}
		}
	}
	a := c.counters(t, c.dpA)
	if a[CounterMasqForward] < 4 || a[CounterMasqReply] < 4 {
		t.Errorf("XDP masquerade counters on node A: %d sent on, %d replies sent back; want at least 4 each",
			a[CounterMasqForward], a[CounterMasqReply])
	}

	// Full-size segments both ways through the rewritten checksums.
	const size = 2 << 20
	for _, vip := range []netip.Addr{dsrA6, dsrA4} {
		c.addService(t, vip, 30090, 9000, 6)
		if got, err := upload(t, c.client, netip.AddrPortFrom(vip, 30090), size); err != nil || got != strconv.Itoa(size) {
			t.Errorf("upload of %d bytes through NodePort %s:30090: sink counted %q (%v)", size, vip, got, err)
		}
	}

	// An agent restart: a connection open across it keeps its port, so
	// the pod still knows it.
	conn, before := askPeer(t, c.client, "tcp", netip.AddrPortFrom(dsrA4, 30081))
	defer conn.Close()
	if got, err := c.sendAcrossRestartA(t, conn); got != "101000" {
		t.Errorf("a connection (pod saw %s) across node A's restart: the pod counted %q (%v), want 101000 bytes", before, got, err)
	}
}

// TestXDPMasqueradePortsBusy is the hostile twin: a client holds more
// connections to one backend than the XDP masquerade's range has ports.
// The flows past the range are left to tc and netfilter's masquerade; none
// is lost, and none takes a port a live flow holds.
func TestXDPMasqueradePortsBusy(t *testing.T) {
	c := newMasqCluster(t)
	servePeer(t, c.pod, 8082)
	c.addService(t, dsrA4, 30082, 8082, 6)
	var xdp, netfilter int
	seen := map[netip.AddrPort]bool{}
	for i := 0; i < 4; i++ {
		conn, from := askPeer(t, c.client, "tcp", netip.AddrPortFrom(dsrA4, 30082))
		defer conn.Close()
		if seen[from] {
			t.Errorf("connection %d: the pod saw %s, which an open connection already has", i, from)
		}
		seen[from] = true
		if inMasqRange(from.Port()) {
			xdp++
		} else {
			netfilter++
		}
	}
	if xdp != 2 || netfilter != 2 {
		t.Errorf("4 connections over a range of 2 ports: %d took the XDP masquerade, %d netfilter's; want 2 and 2 (seen %v)",
			xdp, netfilter, seen)
	}
	if n := c.counters(t, c.dpA)[CounterMasqPortsBusy]; n < 2 {
		t.Errorf("node A counted %d flows without a free port, want at least 2", n)
	}
}

// addService adds a NodePort on node A's vip (and node B's address of
// its family) to the pod's port, over proto.
func (c *dsrCluster) addService(t testing.TB, vip netip.Addr, nodePort, podPort uint16, proto uint8) {
	t.Helper()
	pod, vipB := dsrPod4, dsrB4
	if vip.Is6() {
		pod, vipB = dsrPod6, dsrB6
	}
	id := uint32(nodePort)*100 + uint32(len(vip.AsSlice()))*2 + uint32(proto&1)
	be := netip.AddrPortFrom(pod, podPort)
	install(t, c.dpA, testService{id: id, vip: netip.AddrPortFrom(vip, nodePort), proto: proto, scope: ScopeExternal,
		backends: []testBackend{{id: id, addr: be}}})
	install(t, c.dpB, testService{id: id, vip: netip.AddrPortFrom(vipB, nodePort), proto: proto, scope: ScopeExternal,
		backends: []testBackend{{id: id, addr: be, flags: BackendLocal}}})
}

// nft runs nft commands in the calling goroutine's network namespace.
func nft(t testing.TB, cmds ...string) {
	t.Helper()
	for _, cmd := range cmds {
		if out, err := exec.Command("nft", cmd).CombinedOutput(); err != nil {
			t.Fatalf("nft %s: %v %s", cmd, err, out)
		}
	}
}

// TestXDPMasqueradeFragments: a UDP flow the XDP masquerade began carries
// datagrams larger than the MTU both ways. XDP leaves fragments to tc,
// which translates each as the flow's entries say (the later ones by the
// first one's record) and sends them on itself; client and pod get every
// datagram whole.
func TestXDPMasqueradeFragments(t *testing.T) {
	c := newMasqCluster(t)
	servePeer(t, c.pod, 8081)
	for _, vip := range []netip.Addr{dsrA4, dsrA6} {
		c.addService(t, vip, 30081, 8081, 17)
		conn, seen := askPeer(t, c.client, "udp", netip.AddrPortFrom(vip, 30081))
		defer conn.Close()
		if !inMasqRange(seen.Port()) {
			t.Fatalf("the flow to %s:30081 did not take the XDP masquerade: the pod saw %s", vip, seen)
		}
		big := append([]byte("echo"), bytes.Repeat([]byte{0xa5}, 4000)...)
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := conn.Write(big); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8192)
		k, err := conn.Read(buf)
		if err != nil || !bytes.Equal(buf[:k], big) {
			t.Errorf("a %d-byte datagram to %s:30081 and back: got %d bytes (%v)", len(big), vip, k, err)
		}
	}
	drops, err := c.dpA.DropCounts()
	if err != nil {
		t.Fatal(err)
	}
	for reason, n := range drops {
		t.Errorf("node A dropped %d packets: %v", n.Packets, reason)
	}
}

// TestXDPMasqueradeWithoutXDP: node A's XDP goes (acceleration turned
// off, or a packet with no way on from XDP): tc carries on the flows XDP
// began, from the same port, both ways. Netfilter would have given the
// flow another port, which the pod would not know.
func TestXDPMasqueradeWithoutXDP(t *testing.T) {
	c := newMasqCluster(t)
	servePeer(t, c.pod, 8081)
	c.addService(t, dsrA4, 30081, 8081, 6)
	c.addService(t, dsrA6, 30081, 8081, 17)
	tcp, seenTCP := askPeer(t, c.client, "tcp", netip.AddrPortFrom(dsrA4, 30081))
	defer tcp.Close()
	udp, seenUDP := askPeer(t, c.client, "udp", netip.AddrPortFrom(dsrA6, 30081))
	defer udp.Close()
	if !inMasqRange(seenTCP.Port()) || !inMasqRange(seenUDP.Port()) {
		t.Fatalf("the flows did not take the XDP masquerade: the pod saw %s and %s", seenTCP, seenUDP)
	}
	before := c.counters(t, c.dpA)
	c.a.Do(t, func() {
		if err := c.dpA.DetachXDP("eth0"); err != nil {
			t.Fatal(err)
		}
	})
	_ = tcp.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := tcp.Write(make([]byte, 100000)); err != nil {
		t.Fatal(err)
	}
	_ = tcp.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(tcp)
	if strings.TrimSpace(string(got)) != "100000" {
		t.Errorf("a TCP connection XDP began, after XDP went: the pod answered %q (%v), want 100000 bytes", got, err)
	}
	_ = udp.SetDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 64)
	k := 0
	if _, err = udp.Write([]byte("?")); err == nil {
		k, err = udp.Read(buf)
	}
	if err != nil || string(buf[:k]) != seenUDP.String() {
		t.Errorf("a UDP flow XDP began, after XDP went: the pod saw %q (%v), want %s as before", buf[:k], err, seenUDP)
	}
	after := c.counters(t, c.dpA)
	if after[CounterMasqForward] <= before[CounterMasqForward] || after[CounterMasqReply] <= before[CounterMasqReply] {
		t.Errorf("tc sent nothing on for the masqueraded flows: forward %d -> %d, reply %d -> %d",
			before[CounterMasqForward], after[CounterMasqForward], before[CounterMasqReply], after[CounterMasqReply])
	}
}

// TestXDPMasqueradeFollowsRoutes: XDP keeps the FIB's answers for a flow's
// way on only briefly (FIB_CACHE_NS). Once node A loses its route to the
// pod CIDR, a flow XDP was sending on stops being sent (tc finds no route
// either: no_route); once the route is back, it flows again.
func TestXDPMasqueradeFollowsRoutes(t *testing.T) {
	c := newMasqCluster(t)
	servePeer(t, c.pod, 8081)
	c.addService(t, dsrA4, 30081, 8081, 17)
	conn, seen := askPeer(t, c.client, "udp", netip.AddrPortFrom(dsrA4, 30081))
	defer conn.Close()
	ask := func() error {
		_ = conn.SetDeadline(time.Now().Add(time.Second))
		if _, err := conn.Write([]byte("?")); err != nil {
			return err
		}
		buf := make([]byte, 64)
		_, err := conn.Read(buf)
		return err
	}
	if err := ask(); err != nil {
		t.Fatalf("the flow (pod saw %s) before the route change: %v", seen, err)
	}
	c.a.IP(t, "route", "del", dsrPodCIDRs[0].String())
	time.Sleep(300 * time.Millisecond)
	if err := ask(); err == nil {
		t.Errorf("node A has no route to %s, yet the flow's datagram was answered", dsrPodCIDRs[0])
	}
	if n := dropsAt(t, c.dpA, DropNoRoute, HookFromNetdev); n == 0 {
		t.Errorf("node A counted no no_route drop")
	}
	c.a.IP(t, "route", "add", dsrPodCIDRs[0].String(), "via", dsrB4.String())
	if err := ask(); err != nil {
		t.Errorf("the flow after the route came back: %v", err)
	}
}

// TestXDPMasqueradePortNotShared is the hostile twin of port reuse: a
// flow's masq entry is lost (here: made to expire, as a full map or a bug
// would) while the flow lives, and a new flow takes its port. The old
// flow must not go on from the port the new one now holds, or the backend
// would take both clients' datagrams as one flow and send the new
// client the old one's replies: its next packet is dropped and the flow
// forgotten, and the one after starts afresh (through netfilter, the only
// port being taken).
func TestXDPMasqueradePortNotShared(t *testing.T) {
	c := newMasqClusterPorts(t, testMasqMin, testMasqMin)
	servePeer(t, c.pod, 8081)
	c.addService(t, dsrA4, 30081, 8081, 17)
	vip := netip.AddrPortFrom(dsrA4, 30081)
	connA, seenA := askPeer(t, c.client, "udp", vip)
	defer connA.Close()
	if seenA.Port() != testMasqMin {
		t.Fatalf("the first flow got %s, want the range's only port %d", seenA, testMasqMin)
	}
	var k CTKey
	var v CTValue
	aged := 0
	for it := c.dpA.ConntrackOther.Iterate(); it.Next(&k, &v); {
		if k.Dir == 4 {
			v.ExpiresNs = 1
			if err := c.dpA.ConntrackOther.Put(k, v); err != nil {
				t.Fatal(err)
			}
			aged++
		}
	}
	if aged != 1 {
		t.Fatalf("found %d masq entries, want 1", aged)
	}
	connB, seenB := askPeer(t, c.client, "udp", vip)
	defer connB.Close()
	if seenB.Port() != testMasqMin {
		t.Fatalf("the second flow got %s, want the port the first one lost (%d)", seenB, testMasqMin)
	}

	time.Sleep(1100 * time.Millisecond) // the first flow's entry is written again (once a second)
	_ = connA.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 64)
	if _, err := connA.Write([]byte("?")); err != nil {
		t.Fatal(err)
	}
	if n, err := connA.Read(buf); err == nil {
		t.Errorf("the first flow, whose port the second holds, was answered: the pod saw it as %s", buf[:n])
	}
	_ = connB.SetDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := connB.Read(buf); err == nil {
		t.Errorf("the second client got a reply it did not ask for: %q", buf[:n])
	}
	if n := dropsAt(t, c.dpA, DropNATFailed, HookFromNetdev); n == 0 {
		t.Errorf("node A counted no drop of the first flow's packet")
	}
	_ = connA.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := connA.Write([]byte("?")); err != nil {
		t.Fatal(err)
	}
	n, err := connA.Read(buf)
	seen, perr := netip.ParseAddrPort(string(buf[:n]))
	if err != nil || perr != nil || inMasqRange(seen.Port()) {
		t.Errorf("the first flow afresh: the pod saw it as %q (%v), want a port of netfilter's range", buf[:n], err)
	}
}

// TestXDPMasqueradeICMPErrorLeftAlone: an ICMP error from outside about a
// masqueraded flow's reply (the client's "port unreachable", a router's
// "fragmentation needed") names the service address and the client. The
// backend knows the flow as from node A's masquerade port, so turning the
// quote into backend -> client, as for a flow netfilter masqueraded, would
// hand it an error about a flow it does not have: it is left to node A.
func TestXDPMasqueradeICMPErrorLeftAlone(t *testing.T) {
	c := newMasqCluster(t)
	servePeer(t, c.pod, 8081)
	c.addService(t, dsrA4, 30081, 8081, 17)
	conn, _ := askPeer(t, c.client, "udp", netip.AddrPortFrom(dsrA4, 30081))
	defer conn.Close()
	client := conn.LocalAddr().(*net.UDPAddr).AddrPort()

	var podICMP net.PacketConn
	var err error
	c.pod.Do(t, func() { podICMP, err = net.ListenPacket("ip4:icmp", "0.0.0.0") })
	if err != nil {
		t.Fatal(err)
	}
	defer podICMP.Close()
	// Port unreachable from the client, quoting the reply it refuses:
	// service -> client.
	quote := []byte{0x45, 0, 0, 29, 0, 0, 0, 0, 64, 17, 0, 0}
	a4, c4 := dsrA4.As4(), client.Addr().Unmap().As4()
	quote = append(append(quote, a4[:]...), c4[:]...)
	quote = binary.BigEndian.AppendUint16(quote, 30081)
	quote = binary.BigEndian.AppendUint16(quote, client.Port())
	quote = append(quote, 0, 9, 0, 0)
	msg := append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, quote...)
	binary.BigEndian.PutUint16(msg[2:], inetChecksum(msg))
	c.client.Do(t, func() {
		raw, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		if _, err := raw.WriteTo(msg, &net.IPAddr{IP: dsrA4.AsSlice()}); err != nil {
			t.Fatal(err)
		}
	})
	_ = podICMP.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 1500)
	if n, from, err := podICMP.ReadFrom(buf); err == nil {
		t.Errorf("the pod got an ICMP error (%d bytes from %v) about a flow it knows from another tuple", n, from)
	}
}

// inetChecksum is the Internet checksum (RFC 1071) of b.
func inetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
