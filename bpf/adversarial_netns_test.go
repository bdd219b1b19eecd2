package bpf

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/internal/testutil/icmpecho"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

// The adversarial suite again, with real packets: a node namespace whose
// pods sit behind veths carrying from_pod and to_pod, and a misbehaving
// client pod that opens raw sockets, crafts TCP flags, pings and spoofs
// its source. adversarial_test.go holds the same attacks as
// BPF_PROG_TEST_RUN cases; here the kernels on both ends answer (or do
// not), so what is asserted is what a tenant would observe. Every packet
// stays inside the namespaces the test creates.

// netPod is a pod namespace behind the node's host-side veth dev.
type netPod struct {
	ns           *netnstest.NS
	dev          string
	addr4, addr6 netip.Addr
	endpoint     uint32 // policy endpoint ID
	identity     uint32 // its identity in the ipcache
}

// podNode is a node namespace with n pods: pod i (from 1) has 10.200.i.2
// and fd00:200:i::2, the node 10.200.i.1 and fd00:200:i::1 on hpod<i>.
type podNode struct {
	d    *Datapath
	node *netnstest.NS
	pods []*netPod
}

func newPodNode(t *testing.T, d *Datapath, n int) *podNode {
	t.Helper()
	pn := &podNode{d: d, node: netnstest.New(t, "sl-advnode")}
	pn.node.Sysctl(t, "net.ipv4.ip_forward=1")
	pn.node.Sysctl(t, "net.ipv6.conf.all.forwarding=1")
	// Reverse-path filtering off: what keeps spoofed sources out must be
	// the datapath, not the node's routing.
	pn.node.Sysctl(t, "net.ipv4.conf.all.rp_filter=0")
	pn.node.Sysctl(t, "net.ipv4.conf.default.rp_filter=0")
	for i := 1; i <= n; i++ {
		p := &netPod{
			ns:       netnstest.New(t, fmt.Sprintf("sl-advpod%d", i)),
			dev:      fmt.Sprintf("hpod%d", i),
			addr4:    netip.MustParseAddr(fmt.Sprintf("10.200.%d.2", i)),
			addr6:    netip.MustParseAddr(fmt.Sprintf("fd00:200:%d::2", i)),
			endpoint: uint32(20 + i),
			identity: uint32(500 + i),
		}
		pn.node.VethPair(t, p.dev, p.ns, "eth0")
		pn.node.IP(t, "addr", "add", fmt.Sprintf("10.200.%d.1/24", i), "dev", p.dev)
		pn.node.IP(t, "addr", "add", fmt.Sprintf("fd00:200:%d::1/64", i), "dev", p.dev, "nodad")
		p.ns.IP(t, "addr", "add", p.addr4.String()+"/24", "dev", "eth0")
		p.ns.IP(t, "addr", "add", p.addr6.String()+"/64", "dev", "eth0", "nodad")
		p.ns.IP(t, "route", "add", "default", "via", fmt.Sprintf("10.200.%d.1", i))
		p.ns.IP(t, "-6", "route", "add", "default", "via", fmt.Sprintf("fd00:200:%d::1", i))
		pn.pods = append(pn.pods, p)
	}
	pn.node.Do(t, func() {
		for _, p := range pn.pods {
			if err := d.AttachPod(p.dev, AttachAuto); err != nil {
				t.Fatalf("attach %s: %v", p.dev, err)
			}
			l, err := net.InterfaceByName(p.dev)
			if err != nil {
				t.Fatal(err)
			}
			// The pod's addresses, as the CNI records them.
			addEndpoints(t, d, uint32(l.Index), p.addr4, p.addr6)
		}
	})
	return pn
}

// identify writes every pod's addresses into the ipcache, as the agent
// does for pods on every node.
func (pn *podNode) identify(t *testing.T) {
	t.Helper()
	for _, p := range pn.pods {
		for _, a := range []netip.Addr{p.addr4, p.addr6} {
			if err := pn.d.IPCache.Put(EndpointKey{Addr: Addr(a)}, IPCacheValue{Identity: p.identity}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// isolate sets the pod's isolation flags (0: none) and marks the node as
// having isolated endpoints.
func (pn *podNode) isolate(t *testing.T, p *netPod, flags uint32) {
	t.Helper()
	for _, a := range []netip.Addr{p.addr4, p.addr6} {
		if err := pn.d.PolicyEndpoints.Put(EndpointKey{Addr: Addr(a)}, PolicyEndpointValue{Id: p.endpoint, Flags: flags}); err != nil {
			t.Fatal(err)
		}
	}
	if err := pn.d.PolicyState.Put(uint32(0), PolicyState{IsolatedEndpoints: 1}); err != nil {
		t.Fatal(err)
	}
}

func (p *netPod) addr(v6 bool) netip.Addr {
	if v6 {
		return p.addr6
	}
	return p.addr4
}

// inParallel runs each fn inside ns, each on a thread of its own, at once,
// and waits for all: what waits for a timeout waits once. The fns report
// through variables they close over and must not call t.Fatal.
func inParallel(t *testing.T, ns *netnstest.NS, fns ...func()) {
	t.Helper()
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns.Do(t, fn)
		}()
	}
	wg.Wait()
}

// dropsAt reads one drop counter.
func dropsAt(t *testing.T, d *Datapath, reason DropReason, hook Hook) uint64 {
	t.Helper()
	counts, err := d.DropCountsByHook()
	if err != nil {
		t.Fatal(err)
	}
	return counts[DropKey{Reason: reason, Hook: hook}].Packets
}

// withL4Checksum fills in the TCP or UDP checksum of seg, sent from src to
// dst, over the pseudo-header: the receiving kernel checks it.
func withL4Checksum(src, dst netip.Addr, proto uint8, seg []byte) []byte {
	var b []byte
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		b = append(append(b, s[:]...), d[:]...)
		b = append(b, 0, proto, byte(len(seg)>>8), byte(len(seg)))
	} else {
		s, d := src.As16(), dst.As16()
		b = append(append(b, s[:]...), d[:]...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(seg)))
		b = append(b, 0, 0, 0, proto)
	}
	off := 16 // TCP
	if proto == unix.IPPROTO_UDP {
		off = 6
	}
	binary.BigEndian.PutUint16(seg[off:], 0)
	sum := icmpecho.Checksum(append(b, seg...))
	if sum == 0 && proto == unix.IPPROTO_UDP {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(seg[off:], sum)
	return seg
}

func sockaddrOf(a netip.Addr) unix.Sockaddr {
	if a.Is4() {
		return &unix.SockaddrInet4{Addr: a.As4()}
	}
	return &unix.SockaddrInet6{Addr: a.As16()}
}

// sendRawL4 sends an L4 segment (checksum filled in) from src to dst on a
// raw socket of protocol proto bound to src: the kernel adds only the IP
// header. Call it inside the sending namespace.
func sendRawL4(src, dst netip.Addr, proto int, seg []byte) error {
	family := unix.AF_INET
	if src.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, sockaddrOf(src)); err != nil {
		return fmt.Errorf("bind raw socket to %v: %w", src, err)
	}
	return unix.Sendto(fd, seg, 0, sockaddrOf(dst))
}

// sendRawIP sends a whole IP packet, header included, with whatever
// source it carries (IPPROTO_RAW: IP_HDRINCL). Call it inside the sending
// namespace.
func sendRawIP(dst netip.Addr, pkt []byte) error {
	family := unix.AF_INET
	if dst.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	return unix.Sendto(fd, pkt, 0, sockaddrOf(dst))
}

// listenTCPIn accepts (and closes) TCP connections on port inside ns,
// over IPv4 and IPv6, until the test ends. Each family gets a listener of
// its own: whether ":port" is dual-stack depends on the test process's own
// namespace.
func listenTCPIn(t *testing.T, ns *netnstest.NS, port int) {
	t.Helper()
	for _, network := range []string{"tcp4", "tcp6"} {
		var ln net.Listener
		var err error
		ns.Do(t, func() { ln, err = net.Listen(network, ":"+strconv.Itoa(port)) })
		if err != nil {
			t.Fatalf("listen %s/%d in %s: %v", network, port, ns.Name, err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
}

// ackThenDial is the attack: one bare TCP ACK from src on a raw socket to
// dst, then a connect from that same source port. It returns the
// connect's error and how long it took. Call it inside the client's
// namespace.
func ackThenDial(src, dst netip.AddrPort, timeout time.Duration) (time.Duration, error) {
	ack := tcpHeader(src.Port(), dst.Port(), tcpACK)
	binary.BigEndian.PutUint32(ack[4:], 0x1000_0001) // seq
	binary.BigEndian.PutUint32(ack[8:], 0x2000_0001) // ack
	binary.BigEndian.PutUint16(ack[14:], 64240)      // window
	if err := sendRawL4(src.Addr(), dst.Addr(), unix.IPPROTO_TCP, withL4Checksum(src.Addr(), dst.Addr(), unix.IPPROTO_TCP, ack)); err != nil {
		return 0, fmt.Errorf("crafted ACK: %w", err)
	}
	time.Sleep(50 * time.Millisecond) // the ACK has crossed the node
	dialer := net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(src)}
	start := time.Now()
	c, err := dialer.Dial("tcp", dst.String())
	took := time.Since(start)
	if err == nil {
		c.Close()
	}
	return took, err
}

// TestNetnsCraftedACKThenConnect: a pod sends one bare ACK from a port it
// chose to a pod behind deny-all, then connects from that port, directly
// (IPv4, IPv6) and through a ClusterIP. Under ingress deny-all of the
// server, and under egress deny-all of the client, the connect must time
// out: neither succeed (the ACK opened the port) nor be refused (the SYN
// reached the server), and the policy drop counter must count the ACK as
// well as the SYN (the ACK was judged, not let through). With a rule
// allowing the port, the same sequence connects: the test can pass, and
// what stops it is policy.
func TestNetnsCraftedACKThenConnect(t *testing.T) {
	d := loadTest(t, Config{})
	pn := newPodNode(t, d, 2)
	client, server := pn.pods[0], pn.pods[1]
	pn.identify(t)
	listenTCPIn(t, server.ns, 8080)
	vip := ap("10.96.0.10:80")
	install(t, d, oneBackend(1, vip, unix.IPPROTO_TCP, netip.AddrPortFrom(server.addr4, 8080)))
	targets := []struct {
		name string
		src  netip.Addr
		dst  netip.AddrPort
	}{
		{"ipv4", client.addr4, netip.AddrPortFrom(server.addr4, 8080)},
		{"ipv6", client.addr6, netip.AddrPortFrom(server.addr6, 8080)},
		{"ipv4 through a ClusterIP", client.addr4, vip},
	}
	for i, c := range []struct {
		name     string
		isolated *netPod
		flags    uint32
		rule     PolicyKey
		reason   DropReason
		hook     Hook
	}{
		{"ingress deny-all", server, PolicyIngressIsolated,
			PolicyRule(server.endpoint, client.identity, PolicyIngress, unix.IPPROTO_TCP, 8080, 16), DropPolicyIngress, HookToPod},
		{"egress deny-all", client, PolicyEgressIsolated,
			PolicyRule(client.endpoint, server.identity, PolicyEgress, unix.IPPROTO_TCP, 8080, 16), DropPolicyEgress, HookFromPod},
	} {
		t.Run(c.name, func(t *testing.T) {
			pn.isolate(t, c.isolated, c.flags)
			defer pn.isolate(t, c.isolated, 0)
			// Each attempt gets source ports of its own: a tuple is never
			// reused across cases.
			port := func(allowed bool, j int) uint16 {
				p := 41000 + 1000*i + j
				if allowed {
					p += 100
				}
				return uint16(p)
			}
			attempt := func(allowed bool) ([]time.Duration, []error) {
				took := make([]time.Duration, len(targets))
				errs := make([]error, len(targets))
				var fns []func()
				for j, tg := range targets {
					fns = append(fns, func() {
						took[j], errs[j] = ackThenDial(netip.AddrPortFrom(tg.src, port(allowed, j)), tg.dst, time.Second)
					})
				}
				inParallel(t, client.ns, fns...)
				return took, errs
			}

			before := dropsAt(t, d, c.reason, c.hook)
			took, errs := attempt(false)
			for j, tg := range targets {
				var ne net.Error
				switch err := errs[j]; {
				case err == nil:
					t.Errorf("%s: connect from port %d after the crafted ACK succeeded in %v, want it to time out (policy denies the port)",
						tg.name, port(false, j), took[j].Round(time.Millisecond))
				case errors.As(err, &ne) && ne.Timeout():
					t.Logf("%s: connect from port %d after the crafted ACK timed out after %v", tg.name, port(false, j), took[j].Round(time.Millisecond))
				default:
					t.Errorf("%s: connect after the crafted ACK: %v, want a timeout (the SYN must be dropped, not answered)", tg.name, err)
				}
			}
			// Each target: the ACK and at least one SYN.
			if got := dropsAt(t, d, c.reason, c.hook) - before; got < uint64(2*len(targets)) {
				t.Errorf("%s drops at %s grew by %d, want at least %d (an ACK and a SYN per target)", c.reason, c.hook, got, 2*len(targets))
			} else {
				t.Logf("%s drops at %s: +%d", c.reason, c.hook, got)
			}

			allow(t, d, c.rule)
			defer func() {
				if err := d.Policy.Delete(c.rule); err != nil {
					t.Error(err)
				}
			}()
			took, errs = attempt(true)
			for j, tg := range targets {
				if errs[j] != nil {
					t.Errorf("control, %s with a rule allowing TCP 8080: crafted ACK then connect: %v, want connected", tg.name, errs[j])
				} else {
					t.Logf("control, %s with a rule allowing TCP 8080: connected in %v", tg.name, took[j].Round(time.Millisecond))
				}
			}
		})
	}
}

// TestNetnsICMPEchoUnderDenyAll: raw ICMP and ICMPv6 echo into an ingress
// deny-all pod, and out of an egress deny-all one, get no reply, also
// when a rule with ports (TCP 8080) exists; the echo requests are counted
// as policy drops. With a rule without ports (every protocol) the replies
// come, through the sender's own isolated ingress too as replies of an
// admitted echo.
func TestNetnsICMPEchoUnderDenyAll(t *testing.T) {
	d := loadTest(t, Config{})
	pn := newPodNode(t, d, 2)
	client, server := pn.pods[0], pn.pods[1]
	pn.identify(t)
	for i, c := range []struct {
		name      string
		isolated  *netPod
		flags     uint32
		tcpRule   PolicyKey
		anyRule   PolicyKey
		reason    DropReason
		hook      Hook
		isolation string
	}{
		{"ingress deny-all", server, PolicyIngressIsolated,
			PolicyRule(server.endpoint, client.identity, PolicyIngress, unix.IPPROTO_TCP, 8080, 16),
			PolicyRule(server.endpoint, client.identity, PolicyIngress, 0, 0, 0),
			DropPolicyIngress, HookToPod, "the server isolated for ingress"},
		{"egress deny-all", client, PolicyEgressIsolated | PolicyIngressIsolated,
			PolicyRule(client.endpoint, server.identity, PolicyEgress, unix.IPPROTO_TCP, 8080, 16),
			PolicyRule(client.endpoint, server.identity, PolicyEgress, 0, 0, 0),
			DropPolicyEgress, HookFromPod, "the client isolated both ways"},
	} {
		t.Run(c.name, func(t *testing.T) {
			pn.isolate(t, c.isolated, c.flags)
			defer pn.isolate(t, c.isolated, 0)
			ping := func(id uint16, wait time.Duration) (got [2]bool) {
				var errs [2]error
				inParallel(t, client.ns, func() {
					got[0], errs[0] = icmpecho.Echo(client.addr4, server.addr4, id, wait)
				}, func() {
					got[1], errs[1] = icmpecho.Echo(client.addr6, server.addr6, id+1, wait)
				})
				for _, err := range errs {
					if err != nil {
						t.Fatalf("echo: %v", err)
					}
				}
				return got
			}
			names := [2]string{"icmp echo", "icmpv6 echo"}

			allow(t, d, c.tcpRule) // a rule with ports: TCP only
			before := dropsAt(t, d, c.reason, c.hook)
			start := time.Now()
			got := ping(uint16(0x5100+16*i), 700*time.Millisecond)
			for k, replied := range got {
				if replied {
					t.Errorf("%s with %s and only a TCP 8080 rule: got a reply, want none", names[k], c.isolation)
				}
			}
			if n := dropsAt(t, d, c.reason, c.hook) - before; n != 2 {
				t.Errorf("%s drops at %s grew by %d, want 2 (the two echo requests)", c.reason, c.hook, n)
			} else {
				t.Logf("deny-all: no reply within %v to either echo; %s drops at %s +%d", time.Since(start).Round(time.Millisecond), c.reason, c.hook, n)
			}

			allow(t, d, c.anyRule)
			defer func() {
				for _, k := range []PolicyKey{c.tcpRule, c.anyRule} {
					if err := d.Policy.Delete(k); err != nil {
						t.Error(err)
					}
				}
			}()
			start = time.Now()
			got = ping(uint16(0x5100+16*i+8), 3*time.Second)
			for k, replied := range got {
				if !replied {
					t.Errorf("control, %s with a rule without ports: no reply, want one", names[k])
				}
			}
			t.Logf("control: a rule without ports: both echoes answered within %v", time.Since(start).Round(time.Millisecond))
		})
	}
}

// udpSink records the datagrams that reach port inside ns, over IPv4 and
// IPv6, until the test ends.
type udpSink struct {
	mu   sync.Mutex
	from []netip.AddrPort
}

func newUDPSink(t *testing.T, ns *netnstest.NS, port int) *udpSink {
	t.Helper()
	s := &udpSink{}
	for _, network := range []string{"udp4", "udp6"} {
		var pc net.PacketConn
		var err error
		ns.Do(t, func() { pc, err = net.ListenPacket(network, ":"+strconv.Itoa(port)) })
		if err != nil {
			t.Fatalf("listen %s/%d in %s: %v", network, port, ns.Name, err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 2048)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				s.mu.Lock()
				s.from = append(s.from, from.(*net.UDPAddr).AddrPort())
				s.mu.Unlock()
			}
		}()
	}
	return s
}

func (s *udpSink) sources() []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netip.Addr
	for _, f := range s.from {
		out = append(out, f.Addr().Unmap())
	}
	return out
}

// TestNetnsSpoofedSourceDropped: on a node where no pod is isolated (no
// policy state at all), a pod sends raw UDP datagrams with sources that
// are not its own (another pod's, an unused pod address, the hairpin
// address; IPv4 and IPv6)
// to a UDP listener in another pod: none arrives, and each is counted as
// spoofed_source at from_pod. The same datagrams from its own addresses
// arrive: the packets are well formed, and what stops the others is the
// source check.
func TestNetnsSpoofedSourceDropped(t *testing.T) {
	d := loadTest(t, Config{})
	pn := newPodNode(t, d, 3)
	client, server, peer := pn.pods[0], pn.pods[1], pn.pods[2]
	sink := newUDPSink(t, server.ns, 9000)
	datagram := func(src, dst netip.Addr, sport uint16) []byte {
		l4 := withL4Checksum(src, dst, unix.IPPROTO_UDP, udpDatagram(sport, 9000, []byte("spoof?")))
		return rawPkt{src: src, dst: dst, proto: unix.IPPROTO_UDP, l4: l4}.bytes()[14:]
	}
	spoofed := map[string]netip.Addr{
		"another pod's address":      peer.addr4,
		"an unused pod address":      netip.MustParseAddr("10.200.1.99"),
		"another pod's IPv6 address": peer.addr6,
		"an unused pod IPv6 address": netip.MustParseAddr("fd00:200:1::99"),
		"the hairpin address":        HairpinAddr4,
	}
	before := dropsAt(t, d, DropSpoofedSource, HookFromPod)
	var sendErr error
	client.ns.Do(t, func() {
		for _, src := range spoofed {
			if sendErr = sendRawIP(server.addr(src.Is6()), datagram(src, server.addr(src.Is6()), 40001)); sendErr != nil {
				return
			}
		}
		// The control, after the spoofed ones on the same path.
		for _, src := range []netip.Addr{client.addr4, client.addr6} {
			if sendErr = sendRawIP(server.addr(src.Is6()), datagram(src, server.addr(src.Is6()), 40002)); sendErr != nil {
				return
			}
		}
	})
	if sendErr != nil {
		t.Fatalf("send raw datagram: %v", sendErr)
	}
	deadline := time.Now().Add(3 * time.Second)
	for len(sink.sources()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // anything else in flight
	got := sink.sources()
	for name, src := range spoofed {
		for _, g := range got {
			if g == src {
				t.Errorf("a datagram from %s (%v) reached the server, want it dropped at from_pod", name, src)
			}
		}
	}
	for _, src := range []netip.Addr{client.addr4, client.addr6} {
		found := false
		for _, g := range got {
			found = found || g == src
		}
		if !found {
			t.Errorf("control: the raw datagram from the client's own address %v did not arrive (server saw %v)", src, got)
		}
	}
	if n := dropsAt(t, d, DropSpoofedSource, HookFromPod) - before; n != uint64(len(spoofed)) {
		t.Errorf("spoofed_source drops at from_pod grew by %d, want %d", n, len(spoofed))
	} else {
		t.Logf("no policy on the node: %d spoofed datagrams dropped (spoofed_source at from_pod +%d); the server got only %v", len(spoofed), n, got)
	}
	var state PolicyState
	if err := d.PolicyState.Lookup(uint32(0), &state); err == nil && state.IsolatedEndpoints != 0 {
		t.Errorf("policy state %+v: the test needs a node without isolated endpoints", state)
	}
}

// setNoPMTUDisc makes a UDP socket fragment what exceeds the MTU (DF off)
// rather than fail with EMSGSIZE.
func setNoPMTUDisc(pc net.PacketConn, v6 bool) error {
	raw, err := pc.(*net.UDPConn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		if v6 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DONT)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT)
		}
	})
	return errors.Join(err, serr)
}

// pattern is n bytes that differ per position and per seed: a missing,
// repeated or misplaced fragment changes them.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i/251) + seed
	}
	return b
}

// fragsCreated reads how many fragments the calling thread's namespace
// has made (IPv4 FragCreates, IPv6 Ip6FragCreates).
func fragsCreated(v6 bool) (uint64, error) {
	file, key := "/proc/thread-self/net/snmp", "Ip:"
	if v6 {
		file = "/proc/thread-self/net/snmp6"
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	if v6 {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "Ip6FragCreates" {
				return strconv.ParseUint(f[1], 10, 64)
			}
		}
		return 0, fmt.Errorf("no Ip6FragCreates in %s", file)
	}
	// Two "Ip:" lines: names, then values.
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != key {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "FragCreates" && i < len(f) {
				return strconv.ParseUint(f[i], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no FragCreates in %s", file)
}

// TestNetnsLargeUDPThroughClusterIP: a 4000-byte UDP datagram (DF off,
// pod MTU 1500, so three fragments) from a pod to a ClusterIP reaches the
// backend whole and from the client's own address, and the backend's
// 4000-byte reply comes back whole from the service address, for IPv4 and
// IPv6. Only the first fragment carries the ports: the later ones must get
// the first one's translation from the fragment map. Before the fragment
// tracking (commit 9dc9f6a) they were not translated, went to the
// service address, and the datagram never reassembled.
func TestNetnsLargeUDPThroughClusterIP(t *testing.T) {
	d := loadTest(t, Config{})
	pn := newPodNode(t, d, 2)
	client, server := pn.pods[0], pn.pods[1]
	const size = 4000
	type received struct {
		from netip.AddrPort
		data []byte
	}
	got := make(chan received, 8)
	for _, network := range []string{"udp4", "udp6"} {
		var pc net.PacketConn
		var err error
		server.ns.Do(t, func() {
			if pc, err = net.ListenPacket(network, ":8080"); err == nil {
				err = setNoPMTUDisc(pc, network == "udp6")
			}
		})
		if err != nil {
			t.Fatalf("listen %s/8080 in the server: %v", network, err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 65536)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				got <- received{from.(*net.UDPAddr).AddrPort(), bytes.Clone(buf[:n])}
				_, _ = pc.WriteTo(pattern(size, 'r'), from)
			}
		}()
	}
	for _, c := range []struct {
		name    string
		vip     netip.AddrPort
		backend netip.AddrPort
		client  netip.Addr
		network string
	}{
		{"ipv4", ap("10.96.0.10:53"), netip.AddrPortFrom(server.addr4, 8080), client.addr4, "udp4"},
		{"ipv6", ap("[fd00:96::10]:53"), netip.AddrPortFrom(server.addr6, 8080), client.addr6, "udp6"},
	} {
		t.Run(c.name, func(t *testing.T) {
			id := uint32(10)
			if c.vip.Addr().Is6() {
				id = 11
			}
			install(t, d, oneBackend(id, c.vip, unix.IPPROTO_UDP, c.backend))
			v6 := c.network == "udp6"
			var (
				reply   []byte
				from    netip.AddrPort
				mtu     int
				frags   uint64
				sendErr error
			)
			req := pattern(size, 'q')
			client.ns.Do(t, func() {
				l, err := net.InterfaceByName("eth0")
				if err != nil {
					sendErr = err
					return
				}
				mtu = l.MTU
				pc, err := net.ListenPacket(c.network, ":0")
				if err != nil {
					sendErr = err
					return
				}
				defer pc.Close()
				if sendErr = setNoPMTUDisc(pc, v6); sendErr != nil {
					return
				}
				before, err := fragsCreated(v6)
				if err != nil {
					sendErr = err
					return
				}
				if _, sendErr = pc.WriteTo(req, net.UDPAddrFromAddrPort(c.vip)); sendErr != nil {
					return
				}
				after, err := fragsCreated(v6)
				if err != nil {
					sendErr = err
					return
				}
				frags = after - before
				_ = pc.SetReadDeadline(time.Now().Add(3 * time.Second))
				buf := make([]byte, 65536)
				n, f, err := pc.ReadFrom(buf)
				if err != nil {
					return // reported below, after what the server saw
				}
				reply, from = bytes.Clone(buf[:n]), f.(*net.UDPAddr).AddrPort()
			})
			if sendErr != nil {
				t.Fatalf("client: %v", sendErr)
			}
			if mtu != 1500 {
				t.Fatalf("client MTU %d, want 1500", mtu)
			}
			if frags < 2 {
				t.Errorf("the client made %d fragments of the %d-byte datagram, want it fragmented", frags, size)
			}
			select {
			case r := <-got:
				switch {
				case r.from.Addr().Unmap() != c.client:
					t.Errorf("server saw the datagram from %v, want the client %v", r.from, c.client)
				case len(r.data) != size:
					t.Errorf("server received %d bytes, want %d", len(r.data), size)
				case !bytes.Equal(r.data, req):
					t.Errorf("server received %d bytes that differ from what was sent", len(r.data))
				default:
					t.Logf("server received the %d-byte datagram whole (%d fragments) from %v", len(r.data), frags, r.from)
				}
			default:
				t.Errorf("server received nothing of the %d-byte datagram sent to %v in %d fragments (later fragments not translated?)", size, c.vip, frags)
			}
			switch {
			case reply == nil:
				t.Errorf("client got no reply from %v", c.vip)
			case from.Addr().Unmap() != c.vip.Addr() || from.Port() != c.vip.Port():
				t.Errorf("reply came from %v, want the service %v", from, c.vip)
			case len(reply) != size || !bytes.Equal(reply, pattern(size, 'r')):
				t.Errorf("reply of %d bytes, want the server's %d bytes unchanged", len(reply), size)
			default:
				t.Logf("client received the server's %d-byte reply whole from %v", len(reply), from)
			}
		})
	}
}
