package bpf

import (
	"bufio"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/internal/testutil/cgrouptest"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

// TestMain lets the test binary double as the client process that the
// socket LB test starts inside a cgroup and a network namespace.
func TestMain(m *testing.M) {
	if network := os.Getenv("SLUICE_SOCKLB_CLIENT"); network != "" {
		json.NewEncoder(os.Stdout).Encode(sockClient(network, os.Getenv("SLUICE_SOCKLB_DST")))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type sockResult struct {
	Peer   string // the service as the socket reports its peer
	Answer string // what the server saw us as
	Err    string
}

func sockClient(network, dst string) (r sockResult) {
	if network == "tcp6-mapped" {
		return mappedClient(netip.MustParseAddrPort(dst))
	}
	if network == "tcp" {
		c, err := net.DialTimeout("tcp", dst, 3*time.Second)
		if err != nil {
			return sockResult{Err: err.Error()}
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return sockResult{Peer: c.RemoteAddr().String(), Answer: strings.TrimSpace(line)}
	}
	ap := netip.MustParseAddrPort(dst)
	fam := "udp4"
	if ap.Addr().Is6() {
		fam = "udp6"
	}
	pc, err := net.ListenPacket(fam, ":0")
	if err != nil {
		return sockResult{Err: err.Error()}
	}
	defer pc.Close()
	_ = pc.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := pc.WriteTo([]byte("?"), net.UDPAddrFromAddrPort(ap)); err != nil {
		return sockResult{Err: err.Error()}
	}
	buf := make([]byte, 64)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		return sockResult{Err: err.Error()}
	}
	return sockResult{Peer: from.String(), Answer: string(buf[:n])}
}

// mappedClient connects an IPv6 socket to an IPv4 address, v4-mapped, as
// dual-stack programs do (Go's own dialer would open an IPv4 socket).
func mappedClient(dst netip.AddrPort) sockResult {
	fail := func(what string, err error) sockResult { return sockResult{Err: what + ": " + err.Error()} }
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail("socket", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return fail("IPV6_V6ONLY", err)
	}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 3})
	if err := unix.Connect(fd, &unix.SockaddrInet6{Addr: netip.AddrFrom16(dst.Addr().As16()).As16(), Port: int(dst.Port())}); err != nil {
		return fail("connect", err)
	}
	peer, err := unix.Getpeername(fd)
	if err != nil {
		return fail("getpeername", err)
	}
	p := peer.(*unix.SockaddrInet6)
	buf := make([]byte, 64)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return fail("read", err)
	}
	return sockResult{Peer: netip.AddrPortFrom(netip.AddrFrom16(p.Addr), uint16(p.Port)).String(), Answer: strings.TrimSpace(string(buf[:n]))}
}

// TestSocketLB: a process in the cgroup connects (TCP) or sends (UDP) to a
// service address and is translated to the backend at the socket; the
// socket reports the service as its peer; a service without backends is
// refused at connect. The process runs in a cgroup and a network namespace
// the test creates; the backend is on that namespace's own addresses.
func TestSocketLB(t *testing.T) {
	d := loadTest(t, Config{})
	ns := netnstest.New(t, "sl-socklb")
	ns.IP(t, "link", "set", "lo", "up")
	ns.IP(t, "addr", "add", "10.200.0.2/32", "dev", "lo")
	ns.IP(t, "addr", "add", "fd00:200::2/128", "dev", "lo", "nodad")
	ns.ServeWhoAmI(t, 8080)

	install(t, d, oneBackend(1, ap("10.96.0.10:80"), unix.IPPROTO_TCP, ap("10.200.0.2:8080")))
	install(t, d, oneBackend(2, ap("10.96.0.10:53"), unix.IPPROTO_UDP, ap("10.200.0.2:8080")))
	install(t, d, oneBackend(3, ap("[fd00:96::10]:80"), unix.IPPROTO_TCP, ap("[fd00:200::2]:8080")))
	install(t, d, oneBackend(4, ap("[fd00:96::10]:53"), unix.IPPROTO_UDP, ap("[fd00:200::2]:8080")))
	install(t, d, testService{id: 5, vip: ap("10.96.0.11:80"), proto: unix.IPPROTO_TCP})

	cgroup := cgrouptest.New(t)
	if err := d.AttachSocketLB(cgroup); err != nil {
		t.Fatal(err)
	}
	if err := d.AttachSocketLB(cgroup); err != nil {
		t.Fatalf("attaching again: %v", err)
	}

	for _, c := range []struct{ network, dst, peer, answer, err string }{
		{"tcp", "10.96.0.10:80", "10.96.0.10:80", "10.200.0.2", ""},
		{"udp", "10.96.0.10:53", "10.96.0.10:53", "10.200.0.2", ""},
		{"tcp", "[fd00:96::10]:80", "[fd00:96::10]:80", "fd00:200::2", ""},
		{"udp", "[fd00:96::10]:53", "[fd00:96::10]:53", "fd00:200::2", ""},
		{"tcp", "10.96.0.11:80", "", "", "connection refused"},
	} {
		t.Run(c.network+" to "+c.dst, func(t *testing.T) {
			got := runInCgroup(t, ns, cgroup, c.network, c.dst)
			if c.err != "" {
				if !strings.Contains(got.Err, c.err) {
					t.Errorf("got %+v, want an error containing %q", got, c.err)
				}
				return
			}
			if got.Err != "" || got.Peer != c.peer || got.Answer != c.answer {
				t.Errorf("got %+v, want peer %s and the backend answering %s", got, c.peer, c.answer)
			}
		})
	}

	if err := DetachSocketLB(d.PinRoot()); err != nil {
		t.Fatal(err)
	}
	if got := runInCgroup(t, ns, cgroup, "tcp", "10.96.0.10:80"); got.Err == "" {
		t.Errorf("after detach the service still answers: %+v", got)
	}
}

// TestSocketLBOnlyInHostNamespace: with the node's namespace cookie set,
// sockets of that namespace are translated and sockets of any other the
// agent has not entered (TestSocketLBPods) are left alone for the tc
// programs.
func TestSocketLBOnlyInHostNamespace(t *testing.T) {
	ns := netnstest.New(t, "sl-socklb")
	ns.IP(t, "link", "set", "lo", "up")
	ns.IP(t, "addr", "add", "10.200.0.2/32", "dev", "lo")
	ns.ServeWhoAmI(t, 8080)
	var clientNetns uint64
	ns.Do(t, func() {
		var err error
		if clientNetns, err = NetnsCookie(); err != nil {
			t.Fatal(err)
		}
	})
	otherNetns, err := NetnsCookie() // the test's own namespace
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name       string
		host       uint64
		translated bool
	}{
		{"client in the host namespace", clientNetns, true},
		{"client in another namespace", otherNetns, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := loadTest(t, Config{HostNetnsCookie: c.host})
			install(t, d, oneBackend(1, ap("10.96.0.10:80"), unix.IPPROTO_TCP, ap("10.200.0.2:8080")))
			cgroup := cgrouptest.New(t)
			if err := d.AttachSocketLB(cgroup); err != nil {
				t.Fatal(err)
			}
			got := runInCgroup(t, ns, cgroup, "tcp", "10.96.0.10:80")
			if translated := got.Err == "" && got.Answer == "10.200.0.2"; translated != c.translated {
				t.Errorf("got %+v, want translated=%v", got, c.translated)
			}
		})
	}
}

// runInCgroup starts the test binary as a client inside the cgroup and the
// namespace, and waits for its result.
func runInCgroup(t *testing.T, ns *netnstest.NS, cgroup, network, dst string) sockResult {
	t.Helper()
	fd, err := unix.Open(cgroup, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var out []byte
	ns.Do(t, func() {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "SLUICE_SOCKLB_CLIENT="+network, "SLUICE_SOCKLB_DST="+dst)
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
		out, err = cmd.Output()
	})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	var r sockResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	return r
}

// podClientNetns makes a namespace standing for a pod, serving whoami on
// 8080 of its own addresses, and returns it with its cookie and the cookie
// of the test's namespace, which stands for the node's.
func podClientNetns(t *testing.T) (ns *netnstest.NS, pod, node uint64) {
	t.Helper()
	ns = netnstest.New(t, "sl-socklb")
	ns.IP(t, "link", "set", "lo", "up")
	ns.IP(t, "addr", "add", "10.200.0.2/32", "dev", "lo")
	ns.IP(t, "addr", "add", "fd00:200::2/128", "dev", "lo", "nodad")
	ns.ServeWhoAmI(t, 8080)
	ns.Do(t, func() {
		var err error
		if pod, err = NetnsCookie(); err != nil {
			t.Fatal(err)
		}
	})
	node, err := NetnsCookie()
	if err != nil {
		t.Fatal(err)
	}
	return ns, pod, node
}

var podAddrs = []netip.Addr{netip.MustParseAddr("10.200.0.2"), netip.MustParseAddr("fd00:200::2")}

// TestSocketLBPods: a pod's sockets are translated once the agent has
// entered its namespace, and not while it has not, has it opted out, or
// after the CNI plugin forgot the pod; the tc path serves them then.
func TestSocketLBPods(t *testing.T) {
	ns, pod, node := podClientNetns(t)
	d := loadTest(t, Config{HostNetnsCookie: node})
	install(t, d, oneBackend(1, ap("10.96.0.10:80"), unix.IPPROTO_TCP, ap("10.200.0.2:8080")))
	install(t, d, oneBackend(2, ap("10.96.0.10:53"), unix.IPPROTO_UDP, ap("10.200.0.2:8080")))
	install(t, d, oneBackend(3, ap("[fd00:96::10]:80"), unix.IPPROTO_TCP, ap("[fd00:200::2]:8080")))
	cgroup := cgrouptest.New(t)
	if err := d.AttachSocketLB(cgroup); err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, translated bool) {
		t.Helper()
		for _, c := range []struct{ network, dst, answer string }{
			{"tcp", "10.96.0.10:80", "10.200.0.2"},
			{"udp", "10.96.0.10:53", "10.200.0.2"},
			{"tcp", "[fd00:96::10]:80", "fd00:200::2"},
			{"tcp6-mapped", "10.96.0.10:80", "10.200.0.2"},
		} {
			got := runInCgroup(t, ns, cgroup, c.network, c.dst)
			if ok := got.Err == "" && got.Answer == c.answer; ok != translated {
				t.Errorf("%s to %s: got %+v, want translated=%v", c.network, c.dst, got, translated)
			}
		}
	}
	t.Run("not entered", func(t *testing.T) { check(t, false) })
	if err := d.ServePodSockets(pod, PodSockets{Addrs: podAddrs}); err != nil {
		t.Fatal(err)
	}
	t.Run("opted out", func(t *testing.T) { check(t, false) })
	if err := d.ServePodSockets(pod, PodSockets{Addrs: podAddrs, On: true}); err != nil {
		t.Fatal(err)
	}
	events := eventReader(t, d)
	t.Run("served", func(t *testing.T) { check(t, true) })
	// Each translation is reported as the tc path reports it, flagged as
	// the socket's: the UDP one (no connect) once per datagram.
	var translated []FlowEvent
	for _, ev := range drainEvents(t, events) {
		if ev.Type == EventTrace && ev.Reason == TraceService {
			translated = append(translated, ev)
		}
	}
	if len(translated) != 4 {
		t.Fatalf("%d service events for 4 translated sockets: %+v", len(translated), translated)
	}
	ev := translated[0]
	if ev.Flags != EventFSocket || Hook(ev.Hook) != HookFromPod || ev.Ifindex != 0 || ev.SvcId != 1 {
		t.Errorf("event %+v, want service 1's at from_pod flagged socket", ev)
	}
	wantTuple(t, ev, netip.AddrPortFrom(podAddrs[0], 0), ap("10.96.0.10:80"), unix.IPPROTO_TCP)
	if be := netip.AddrPortFrom(AddrFrom(ev.NatAddr), PortFrom(ev.NatPort)); be != ap("10.200.0.2:8080") {
		t.Errorf("event's backend %v, want 10.200.0.2:8080", be)
	}
	entries, err := d.PodSocketEntries()
	if err != nil {
		t.Fatal(err)
	}
	if got := entries[pod]; !got.On || !slices.Equal(got.Addrs, podAddrs) {
		t.Errorf("entry of the pod: got %+v, want %v served", got, podAddrs)
	}
	if err := d.ForgetPodSockets(podAddrs[1:]); err != nil {
		t.Fatal(err)
	}
	t.Run("forgotten", func(t *testing.T) { check(t, false) })
}

// TestSocketLBPodAffinity: ClientIP affinity at the socket is the tc
// path's: keyed on the pod's address (IPv4 also for an IPv6 socket to an
// IPv4 service), consulted at every connect and renewed by it. Of the two
// backends only one listens, so a connect that ignored the entry would
// fail about half of the time.
func TestSocketLBPodAffinity(t *testing.T) {
	ns, pod, node := podClientNetns(t)
	d := loadTest(t, Config{HostNetnsCookie: node})
	listening := testBackend{id: 11, addr: ap("10.200.0.2:8080")}
	silent := testBackend{id: 12, addr: ap("10.200.0.2:8081")}
	svc := testService{id: 10, vip: ap("10.96.0.20:80"), proto: unix.IPPROTO_TCP,
		backends: []testBackend{listening, silent}, affinity: 600}
	install(t, d, svc)
	if err := d.ServePodSockets(pod, PodSockets{Addrs: podAddrs, On: true}); err != nil {
		t.Fatal(err)
	}
	cgroup := cgrouptest.New(t)
	if err := d.AttachSocketLB(cgroup); err != nil {
		t.Fatal(err)
	}
	key := AffinityKey{Client: Addr(podAddrs[0]), SvcId: svc.id}

	runInCgroup(t, ns, cgroup, "tcp", "10.96.0.20:80")
	var got AffinityValue
	if err := d.Affinity.Lookup(key, &got); err != nil {
		t.Fatalf("no affinity entry keyed on the pod's address after a connect: %v", err)
	}
	if got.BackendId != listening.id && got.BackendId != silent.id {
		t.Errorf("affinity entry names backend %d, want one of the service's", got.BackendId)
	}

	for _, c := range []struct {
		to     testBackend
		answer bool
	}{{listening, true}, {silent, false}} {
		seeded := MonotonicNow()
		if err := d.Affinity.Put(key, affinityTo(seeded, c.to)); err != nil {
			t.Fatal(err)
		}
		for i := range 8 {
			network := []string{"tcp", "tcp6-mapped"}[i%2]
			got := runInCgroup(t, ns, cgroup, network, "10.96.0.20:80")
			if answered := got.Err == ""; answered != c.answer {
				t.Fatalf("affinity to %s, %s connect %d: got %+v, want answered=%v", c.to.addr, network, i, got, c.answer)
			}
		}
		var after AffinityValue
		if err := d.Affinity.Lookup(key, &after); err != nil {
			t.Fatal(err)
		}
		if after.BackendId != c.to.id || after.LastUsedNs <= seeded {
			t.Errorf("affinity to %s after the connects: got %+v, want it kept and renewed past %d", c.to.addr, after, seeded)
		}
	}
}
