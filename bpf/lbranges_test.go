package bpf

import (
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/internal/testutil/cgrouptest"
)

// TestLoadBalancerSourceRanges: a LoadBalancer IP flagged with source
// ranges answers clients inside them and drops the rest, from outside
// (from_netdev) and from pods (from_pod), in both families; removing a
// range cuts the flows it let in; an unflagged frontend ignores the map.
func TestLoadBalancerSourceRanges(t *testing.T) {
	d := loadTest(t, Config{})
	lb4 := ap("192.168.77.50:80")
	lb6 := ap("[fd00:77::50]:80")
	open4 := ap("192.168.77.51:80")
	be4, be6 := ap("10.244.1.5:8080"), ap("[fd00:244:1::5]:8080")
	for i, s := range []struct {
		vip, be netip.AddrPort
		flags   uint32
	}{{lb4, be4, ServiceSourceRanges}, {lb6, be6, ServiceSourceRanges}, {open4, be4, 0}} {
		for _, scope := range []uint8{ScopeExternal, ScopeInternal} {
			id := uint32(80 + 2*i + int(scope))
			install(t, d, testService{id: id, vip: s.vip, proto: unix.IPPROTO_TCP, scope: scope, flags: s.flags,
				backends: []testBackend{{id: 8000 + id, addr: s.be, flags: BackendLocal}}})
		}
	}
	office4, office6 := netip.MustParsePrefix("192.168.77.0/28"), netip.MustParsePrefix("fd00:77::/120")
	pods4 := netip.MustParsePrefix("10.244.0.0/24")
	for _, r := range []struct {
		f LBFrontend
		p netip.Prefix
	}{{LBFrontend{lb4, unix.IPPROTO_TCP}, office4}, {LBFrontend{lb6, unix.IPPROTO_TCP}, office6}} {
		if err := d.PutLBRange(r.f, r.p); err != nil {
			t.Fatal(err)
		}
	}
	syn := func(src, dst netip.AddrPort) []byte {
		return build(t, flow{src: src, dst: dst, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1})
	}
	for _, c := range []struct {
		name     string
		src, dst netip.AddrPort
		pod      bool
		want     uint32
	}{
		{"outside, IPv4 client in the range", ap("192.168.77.1:40000"), lb4, false, actOK},
		{"outside, IPv4 client out of the range", ap("192.168.77.100:40000"), lb4, false, actShot},
		{"outside, IPv6 client in the range", ap("[fd00:77::9]:40000"), lb6, false, actOK},
		{"outside, IPv6 client out of the range", ap("[fd00:77::1:9]:40000"), lb6, false, actShot},
		{"outside, any client of a frontend without ranges", ap("192.168.77.100:40000"), open4, false, actOK},
		{"a pod out of the range", ap("10.244.0.3:40000"), lb4, true, actShot},
	} {
		t.Run(c.name, func(t *testing.T) {
			prog := d.FromNetdev
			if c.pod {
				prog = d.FromPod
			}
			if ret, _ := run(t, prog, syn(c.src, c.dst)); ret != c.want {
				t.Errorf("verdict %d, want %d", ret, c.want)
			}
		})
	}
	if got := dropsAt(t, d, DropSourceRange, HookFromNetdev); got != 2 {
		t.Errorf("source_range drops at from_netdev: %d, want 2", got)
	}
	if got := dropsAt(t, d, DropSourceRange, HookFromPod); got != 1 {
		t.Errorf("source_range drops at from_pod: %d, want 1", got)
	}

	t.Run("a pod let in by a range for pods", func(t *testing.T) {
		if err := d.PutLBRange(LBFrontend{lb4, unix.IPPROTO_TCP}, pods4); err != nil {
			t.Fatal(err)
		}
		ret, out := run(t, d.FromPod, syn(ap("10.244.0.3:40000"), lb4))
		if ret != actOK {
			t.Fatalf("verdict %d, want translated", ret)
		}
		samePacket(t, "request", out, syn(ap("10.244.0.3:40000"), be4))
	})

	t.Run("a range removed cuts the flows it let in", func(t *testing.T) {
		client := ap("192.168.77.2:40001")
		if ret, _ := run(t, d.FromNetdev, syn(client, lb4)); ret != actOK {
			t.Fatalf("SYN verdict %d, want translated", ret)
		}
		ack := build(t, flow{src: client, dst: lb4, proto: unix.IPPROTO_TCP, tcpFlags: "A", seq: 2})
		if ret, _ := run(t, d.FromNetdev, ack); ret != actOK {
			t.Fatalf("ACK verdict %d before the range went, want translated", ret)
		}
		if err := d.DeleteLBRange(LBFrontend{lb4, unix.IPPROTO_TCP}, office4); err != nil {
			t.Fatal(err)
		}
		if ret, _ := run(t, d.FromNetdev, ack); ret != actShot {
			t.Errorf("ACK verdict %d after the range went, want dropped", ret)
		}
	})

	entries, err := d.LBRangeEntries()
	if err != nil {
		t.Fatal(err)
	}
	if got := entries[LBFrontend{lb4, unix.IPPROTO_TCP}]; len(got) != 1 || got[0] != pods4 {
		t.Errorf("ranges of %s read back: %v, want [%s]", lb4, got, pods4)
	}
	if got := entries[LBFrontend{lb6, unix.IPPROTO_TCP}]; len(got) != 1 || got[0] != office6 {
		t.Errorf("ranges of %s read back: %v, want [%s]", lb6, got, office6)
	}
}

// TestLoadBalancerSourceRangesAtSockets: socket LB judges a pod's connect
// by the pod's address, and lets the node's own sockets through only when
// the frontend says a node address is in its ranges; a refused connect
// fails at once with EPERM rather than leaving for the load balancer.
func TestLoadBalancerSourceRangesAtSockets(t *testing.T) {
	lb := ap("192.168.77.50:80")
	lbf := LBFrontend{lb, unix.IPPROTO_TCP}
	t.Run("pod", func(t *testing.T) {
		ns, pod, node := podClientNetns(t)
		d := loadTest(t, Config{HostNetnsCookie: node})
		install(t, d, testService{id: 1, vip: lb, proto: unix.IPPROTO_TCP, flags: ServiceSourceRanges,
			backends: []testBackend{{id: 11, addr: ap("10.200.0.2:8080")}}})
		if err := d.ServePodSockets(pod, PodSockets{Addrs: podAddrs, On: true}); err != nil {
			t.Fatal(err)
		}
		cgroup := cgrouptest.New(t)
		if err := d.AttachSocketLB(cgroup); err != nil {
			t.Fatal(err)
		}
		if got := runInCgroup(t, ns, cgroup, "tcp", lb.String()); !strings.Contains(got.Err, "operation not permitted") {
			t.Errorf("out of the ranges: got %+v, want the connect refused with EPERM", got)
		}
		if err := d.PutLBRange(lbf, netip.MustParsePrefix("10.200.0.0/24")); err != nil {
			t.Fatal(err)
		}
		if got := runInCgroup(t, ns, cgroup, "tcp", lb.String()); got.Err != "" || got.Answer != "10.200.0.2" {
			t.Errorf("in the ranges: got %+v, want the backend answering", got)
		}
	})
	t.Run("node", func(t *testing.T) {
		ns, _, _ := podClientNetns(t)
		d := loadTest(t, Config{}) // every namespace counts as the node's
		cgroup := cgrouptest.New(t)
		if err := d.AttachSocketLB(cgroup); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			flags uint32
			ok    bool
		}{{ServiceSourceRanges, false}, {ServiceSourceRanges | ServiceSourceRangesNode, true}} {
			install(t, d, testService{id: 1, vip: lb, proto: unix.IPPROTO_TCP, flags: c.flags,
				backends: []testBackend{{id: 11, addr: ap("10.200.0.2:8080")}}})
			got := runInCgroup(t, ns, cgroup, "tcp", lb.String())
			if ok := got.Err == "" && got.Answer == "10.200.0.2"; ok != c.ok {
				t.Errorf("flags %#x: got %+v, want served=%v", c.flags, got, c.ok)
			}
		}
	})
}
