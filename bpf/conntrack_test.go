package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Conntrack that keeps live flows: what happens to a service flow when
// its entries are evicted from a full map, when its tuple is reused after
// it closed, when affinity outlives a backend ID, and under a flood.

// serviceEntries are the keys of a client's service flow to vip whose
// backend is be: the forward entry and the reply entry.
func serviceEntries(client, vip, be netip.AddrPort, proto uint8) (fwd, rev CTKey) {
	fwd = CTKey{Src: Addr(client.Addr()), Dst: Addr(vip.Addr()), Sport: Port(client.Port()), Dport: Port(vip.Port()), Proto: proto, Dir: CTDirService}
	rev = CTKey{Src: Addr(be.Addr()), Dst: Addr(client.Addr()), Sport: Port(be.Port()), Dport: Port(client.Port()), Proto: proto, Dir: CTDirReply}
	return fwd, rev
}

func counter(t *testing.T, d *Datapath, c Counter) uint64 {
	t.Helper()
	v, err := d.CounterValues()
	if err != nil {
		t.Fatal(err)
	}
	return v[c]
}

// replyIsTranslated sends the backend's reply through to_pod and reports
// whether the client sees it come from the service.
func replyIsTranslated(t *testing.T, d *Datapath, client, vip, be netip.AddrPort, proto uint8) bool {
	t.Helper()
	reply := flow{src: be, dst: client, proto: proto, tcpFlags: "A", seq: 900, ack: 2, payload: []byte("answer")}
	_, out := run(t, d.ToPod, build(t, reply))
	want := reply
	want.src = vip
	return string(out) == string(build(t, want))
}

// TestEvictedEntriesRemade: a flow whose reply entry was evicted gets it
// back from its next forward packet, so the reply is still translated;
// one whose forward entry was evicted gets it back from its next reply,
// so it keeps its backend even after the service's backends changed.
func TestEvictedEntriesRemade(t *testing.T) {
	const idle = 1100 * time.Millisecond
	d := loadTest(t, Config{})
	for _, c := range []struct {
		name   string
		proto  uint8
		vip    netip.AddrPort
		client netip.AddrPort
	}{
		{"tcp4", unix.IPPROTO_TCP, vip4, client4},
		{"udp4", unix.IPPROTO_UDP, ap("10.96.0.10:53"), client4},
		{"tcp6", unix.IPPROTO_TCP, vip6, client6},
	} {
		t.Run(c.name, func(t *testing.T) {
			svc := testService{id: 30, vip: c.vip, proto: c.proto, backends: manyBackends(2, 31)}
			if c.client.Addr().Is6() {
				svc.backends = []testBackend{{id: 31, addr: be6a}, {id: 32, addr: ap("[fd00:244:2::5]:8080")}}
			}
			install(t, d, svc)
			_, out := run(t, d.FromPod, build(t, flow{src: c.client, dst: c.vip, proto: c.proto, tcpFlags: "S", seq: 1}))
			be := backendOf(t, out)
			fwd, rev := serviceEntries(c.client, c.vip, be, c.proto)
			ct := d.ConntrackMap(c.proto)

			// The flow idles, and its reply entry is evicted (the LRU
			// evicts idle flows: a flow that sent within the last second is
			// not checked again); the client's next packet makes it again.
			restored := counter(t, d, CounterCTReplyRestored)
			if err := ct.Delete(rev); err != nil {
				t.Fatalf("delete the reply entry: %v", err)
			}
			time.Sleep(idle)
			run(t, d.FromPod, build(t, flow{src: c.client, dst: c.vip, proto: c.proto, tcpFlags: "A", seq: 2}))
			if !replyIsTranslated(t, d, c.client, c.vip, be, c.proto) {
				t.Errorf("after the reply entry was evicted, the reply is not translated back to the service")
			}
			if got := counter(t, d, CounterCTReplyRestored) - restored; got != 1 {
				t.Errorf("reply entries restored: %d, want 1", got)
			}

			// The forward entry is evicted and the service's backends
			// change (its backend stays, terminating): the backend's next
			// reply makes the entry again, and the flow stays put.
			if err := ct.Delete(fwd); err != nil {
				t.Fatalf("delete the forward entry: %v", err)
			}
			time.Sleep(idle)
			if !replyIsTranslated(t, d, c.client, c.vip, be, c.proto) {
				t.Fatalf("reply not translated with the forward entry gone")
			}
			moved := svc
			moved.backends = nil
			for i := range 8 {
				moved.backends = append(moved.backends, testBackend{id: uint32(40 + i), addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(100 + i), 5}), 8080)})
			}
			if c.client.Addr().Is6() {
				moved.backends = []testBackend{{id: 40, addr: ap("[fd00:244:9::1]:8080")}}
			}
			install(t, d, moved)
			for _, b := range svc.backends {
				if b.addr == be {
					putBackend(t, d, svc.id, b, BackendTerminating)
				}
			}
			_, out = run(t, d.FromPod, build(t, flow{src: c.client, dst: c.vip, proto: c.proto, tcpFlags: "A", seq: 3}))
			if got := backendOf(t, out); got != be {
				t.Errorf("after its forward entry was evicted the flow went to %v, want its backend %v", got, be)
			}
		})
	}
}

// putBackend writes one backend of service svcID with flags.
func putBackend(t *testing.T, d *Datapath, svcID uint32, b testBackend, flags uint8) {
	t.Helper()
	v := BackendValue{Addr: Addr(b.addr.Addr()), Port: Port(b.addr.Port()), Flags: flags, SvcId: svcID}
	if err := d.Backends.Put(b.id, v); err != nil {
		t.Fatal(err)
	}
}

// TestClosedTupleReopened: after FIN or RST, a SYN on the same tuple is a
// new connection and is balanced afresh (its old backend may no longer be
// in the table); a retransmitted SYN or the closing handshake of a live
// flow keeps its backend.
func TestClosedTupleReopened(t *testing.T) {
	d := loadTest(t, Config{})
	a, b := testBackend{id: 51, addr: be4a}, testBackend{id: 52, addr: be4b}
	svc := testService{id: 50, vip: vip4, proto: unix.IPPROTO_TCP, backends: []testBackend{a}}
	install(t, d, svc)
	send := func(flags string) netip.AddrPort {
		_, out := run(t, d.FromPod, build(t, flow{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: flags, seq: 1}))
		return backendOf(t, out)
	}
	if got := send("S"); got != a.addr {
		t.Fatalf("SYN went to %v, want %v", got, a.addr)
	}
	// a is now terminating: out of the table, its flows kept.
	svc.backends = []testBackend{b}
	install(t, d, svc)
	putBackend(t, d, svc.id, a, BackendTerminating)
	for _, flags := range []string{"S", "A", "F", "A"} {
		if got := send(flags); got != a.addr {
			t.Errorf("%s on the live flow went to %v, want its backend %v", flags, got, a.addr)
		}
	}
	reopened := counter(t, d, CounterCTReopened)
	if got := send("S"); got != b.addr {
		t.Errorf("SYN after FIN went to %v, want the new choice %v", got, b.addr)
	}
	if counter(t, d, CounterCTReopened) != reopened+1 {
		t.Errorf("reopened counter did not count the SYN after FIN")
	}
	fwd, _ := serviceEntries(client4, vip4, b.addr, unix.IPPROTO_TCP)
	var v CTValue
	if err := d.ConntrackTCP.Lookup(fwd, &v); err != nil || v.Flags&CTFlagClosing != 0 || v.BackendId != b.id {
		t.Errorf("entry after the reopening SYN: %+v (%v), want backend %d and not closing", v, err, b.id)
	}
	if !replyIsTranslated(t, d, client4, vip4, b.addr, unix.IPPROTO_TCP) {
		t.Errorf("the reopened flow's reply is not translated")
	}
}

// TestAffinityCannotCrossServices: the agent restarted, and a backend ID
// that served service A now belongs to service B (another namespace,
// perhaps). A's client, with a fresh affinity naming that ID, must not be
// sent to B's pod, nor to a pod that took the ID within A.
func TestAffinityCannotCrossServices(t *testing.T) {
	d := loadTest(t, Config{})
	svcA := testService{id: 60, vip: vip4, proto: unix.IPPROTO_TCP, backends: []testBackend{{id: 61, addr: be4a}}, affinity: 600}
	install(t, d, svcA)
	otherPod := testBackend{id: 62, addr: ap("10.244.7.7:8080")}
	key := AffinityKey{Client: Addr(client4.Addr()), SvcId: svcA.id}
	probe := func(port uint16) netip.AddrPort {
		_, out := run(t, d.FromPod, build(t, flow{src: netip.AddrPortFrom(client4.Addr(), port), dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S"}))
		return backendOf(t, out)
	}
	for i, c := range []struct {
		name  string
		owner uint32 // the service ID 62 belongs to now
		pod   netip.AddrPort
	}{
		{"ID given to another service", 99, otherPod.addr},
		{"ID given to another pod of the service", svcA.id, otherPod.addr},
	} {
		t.Run(c.name, func(t *testing.T) {
			// The affinity remembers ID 62 as be4b, which it was before.
			putBackend(t, d, c.owner, testBackend{id: 62, addr: c.pod}, 0)
			if err := d.Affinity.Put(key, affinityTo(MonotonicNow(), testBackend{id: 62, addr: be4b})); err != nil {
				t.Fatal(err)
			}
			stale := counter(t, d, CounterAffinityStale)
			if got := probe(uint16(42000 + i)); got != be4a {
				t.Errorf("client went to %v, want its service's own backend %v", got, be4a)
			}
			if counter(t, d, CounterAffinityStale) != stale+1 {
				t.Errorf("stale affinity not counted")
			}
			var av AffinityValue
			if err := d.Affinity.Lookup(key, &av); err != nil || av.BackendId != 61 || AddrFrom(av.Addr) != be4a.Addr() {
				t.Errorf("affinity after the new choice: %+v (%v), want backend 61 at %v", av, err, be4a.Addr())
			}
		})
	}
}

// TestUnrepliedFlowsShortLived: a datagram flow lives CTTimeoutUnreplied
// until its first reply, CTTimeoutOther after; a later datagram of a flow
// that expired unreplied is translated again, fragments included.
func TestUnrepliedFlowsShortLived(t *testing.T) {
	d := loadTest(t, Config{CTTimeoutUnreplied: 300 * time.Millisecond, CTTimeoutOther: time.Hour})
	vip, backend := ap("10.96.0.53:53"), ap("10.244.1.5:5353")
	install(t, d, oneBackend(70, vip, unix.IPPROTO_UDP, backend))
	fwd, rev := serviceEntries(client4, vip, backend, unix.IPPROTO_UDP)
	lifetime := func(k CTKey) time.Duration {
		var v CTValue
		if err := d.ConntrackOther.Lookup(k, &v); err != nil {
			t.Fatalf("no entry %+v: %v", k, err)
		}
		return time.Duration(v.ExpiresNs - MonotonicNow())
	}
	query := flow{src: client4, dst: vip, proto: unix.IPPROTO_UDP, payload: []byte("q")}
	run(t, d.FromPod, build(t, query))
	if l := lifetime(fwd); l > 300*time.Millisecond {
		t.Errorf("unreplied flow lives %v, want at most the unreplied timeout", l)
	}
	if !replyIsTranslated(t, d, client4, vip, backend, unix.IPPROTO_UDP) {
		t.Fatal("reply not translated")
	}
	run(t, d.FromPod, build(t, query))
	if l, r := lifetime(fwd), lifetime(rev); l < 50*time.Minute || r < 50*time.Minute {
		t.Errorf("after a reply the flow lives %v / %v (forward / reply), want the other timeout (1h)", l, r)
	}

	// A flow that expired unreplied: its next datagram, fragmented, is
	// translated whole.
	lone := ap("10.244.0.2:41500")
	run(t, d.FromPod, build(t, flow{src: lone, dst: vip, proto: unix.IPPROTO_UDP, payload: []byte("q")}))
	time.Sleep(400 * time.Millisecond)
	udpAll := udpDatagram(lone.Port(), vip.Port(), make([]byte, 2000))
	first := rawPkt{src: lone.Addr(), dst: vip.Addr(), proto: unix.IPPROTO_UDP, l4: udpAll[:1480], frag: true, more: true, id: 77}
	second := rawPkt{src: lone.Addr(), dst: vip.Addr(), proto: unix.IPPROTO_UDP, l4: udpAll[1480:], frag: true, fragOff: 1480, id: 77}
	for i, p := range []rawPkt{first, second} {
		ret, out := run(t, d.FromPod, p.bytes())
		if got := netip.AddrFrom4([4]byte(out[30:34])); ret != actOK || got != backend.Addr() {
			t.Errorf("fragment %d after the flow expired: verdict %d, dst %v, want translated to %v", i+1, ret, got, backend.Addr())
		}
	}
}

// TestConntrackFloodKeepsEstablishedFlows: an established TCP flow sits
// idle while a flood of new flows passes many times the capacity of the
// conntrack maps (SYNs to the same service, and datagrams). Its next
// packet still reaches its backend and its replies are still translated;
// the datagram flood does not touch TCP entries at all.
func TestConntrackFloodKeepsEstablishedFlows(t *testing.T) {
	const capacity = 512
	d := loadTest(t, Config{MaxConntrackTCP: capacity, MaxConntrackOther: capacity})
	svc := testService{id: 80, vip: vip4, proto: unix.IPPROTO_TCP, backends: manyBackends(4, 81)}
	install(t, d, svc)
	dns := ap("10.96.0.53:53")
	install(t, d, oneBackend(90, dns, unix.IPPROTO_UDP, ap("10.244.1.5:53")))
	client := ap("10.244.0.2:40000")
	_, out := run(t, d.FromPod, build(t, flow{src: client, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}))
	be := backendOf(t, out)
	run(t, d.FromPod, build(t, flow{src: client, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "A", seq: 2}))

	tcpBefore := countEntries(t, d.ConntrackTCP)
	datagram := build(t, flow{src: client4, dst: dns, proto: unix.IPPROTO_UDP, payload: []byte("q")})
	for i := range 8 * capacity {
		binary.BigEndian.PutUint16(datagram[14+20:], uint16(1024+i))
		run(t, d.FromPod, datagram)
	}
	if got := countEntries(t, d.ConntrackTCP); got != tcpBefore {
		t.Errorf("a datagram flood changed the TCP conntrack map: %d entries, was %d", got, tcpBefore)
	}

	syn := build(t, flow{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S"})
	for i := range 8 * capacity {
		binary.BigEndian.PutUint16(syn[14+20:], uint16(1024+i))
		run(t, d.FromPod, syn)
	}
	_, out = run(t, d.FromPod, build(t, flow{src: client, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "A", seq: 3}))
	if got := backendOf(t, out); got != be {
		t.Errorf("after the flood the idle flow went to %v, want %v", got, be)
	}
	if !replyIsTranslated(t, d, client, vip4, be, unix.IPPROTO_TCP) {
		t.Errorf("after the flood the idle flow's reply is not translated")
	}
	if n := countEntries(t, d.ConntrackTCP); n > capacity {
		t.Errorf("TCP conntrack holds %d entries, capacity %d", n, capacity)
	}
}

// TestConntrackMapsSizedApart: the capacities are the configured ones.
func TestConntrackMapsSizedApart(t *testing.T) {
	d := loadTest(t, Config{MaxConntrackTCP: 4096, MaxConntrackOther: 1024})
	for _, c := range []struct {
		m    *ebpf.Map
		want uint32
	}{{d.ConntrackTCP, 4096}, {d.ConntrackOther, 1024}} {
		if got := c.m.MaxEntries(); got != c.want {
			t.Errorf("%s: capacity %d, want %d", fmt.Sprint(c.m), got, c.want)
		}
	}
}
