package bpf

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// eventReader opens the datapath's flow events for the test.
func eventReader(t testing.TB, d *Datapath) *EventReader {
	t.Helper()
	r, err := NewEventReader(d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// nextEvent reads events until one of type typ, failing after a second.
func nextEvent(t testing.TB, r *EventReader, typ uint8) FlowEvent {
	t.Helper()
	r.SetDeadline(time.Now().Add(time.Second))
	for {
		ev, err := r.Read()
		if err != nil {
			t.Fatalf("read a flow event of type %d: %v", typ, err)
		}
		if ev.Type == typ {
			return ev
		}
	}
}

// drainEvents reads every event already sent.
func drainEvents(t testing.TB, r *EventReader) []FlowEvent {
	t.Helper()
	var out []FlowEvent
	r.SetDeadline(time.Now().Add(50 * time.Millisecond))
	for {
		ev, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
}

// onlyEvent reads the events sent so far and wants exactly one.
func onlyEvent(t testing.TB, r *EventReader, what string) FlowEvent {
	t.Helper()
	evs := drainEvents(t, r)
	if len(evs) != 1 {
		t.Fatalf("%s: %d events %+v, want one", what, len(evs), evs)
	}
	return evs[0]
}

// noEvent fails when an event was sent.
func noEvent(t testing.TB, r *EventReader, what string) {
	t.Helper()
	if evs := drainEvents(t, r); len(evs) > 0 {
		t.Errorf("%s: %d events %+v, want none", what, len(evs), evs)
	}
}

// wantTuple checks the event's packet: as the hook saw it.
func wantTuple(t testing.TB, ev FlowEvent, src, dst netip.AddrPort, proto uint8) {
	t.Helper()
	got := [2]netip.AddrPort{netip.AddrPortFrom(AddrFrom(ev.Src), PortFrom(ev.Sport)), netip.AddrPortFrom(AddrFrom(ev.Dst), PortFrom(ev.Dport))}
	if got != [2]netip.AddrPort{src, dst} || ev.Proto != proto {
		t.Errorf("event of %v -> %v proto %d, want %v -> %v proto %d", got[0], got[1], ev.Proto, src, dst, proto)
	}
}

// onOneCPU keeps the test's thread, and so its test runs and the per-CPU
// rate limit they meet, on one CPU until the test ends.
func onOneCPU(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	var one unix.CPUSet
	for cpu := range 1024 {
		if old.IsSet(cpu) {
			one.Set(cpu)
			break
		}
	}
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = unix.SchedSetaffinity(0, &old)
		runtime.UnlockOSThread()
	})
}

// TestEventTraceService: the first packet of a service flow sends one
// TRACE_SERVICE event naming the service and the chosen backend, with the
// packet as the pod sent it; its next packets send none, and neither does
// a reply entry made again for a packet of the flow.
func TestEventTraceService(t *testing.T) {
	d := loadTest(t, Config{})
	events := eventReader(t, d)
	install(t, d, oneBackend(5, vip4, unix.IPPROTO_TCP, be4a))
	start := MonotonicNow()
	run(t, d.FromPod, build(t, flow{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}))

	ev := onlyEvent(t, events, "the first packet")
	if ev.Type != EventTrace || ev.Reason != TraceService || Hook(ev.Hook) != HookFromPod || ev.Flags != 0 {
		t.Errorf("event %+v, want a TRACE_SERVICE at from_pod without policy", ev)
	}
	wantTuple(t, ev, client4, vip4, unix.IPPROTO_TCP)
	if ev.SvcId != 5 || ev.BackendId != 500 || netip.AddrPortFrom(AddrFrom(ev.NatAddr), PortFrom(ev.NatPort)) != be4a {
		t.Errorf("event of service %d backend %d at %v:%d, want service 5 backend 500 at %v",
			ev.SvcId, ev.BackendId, AddrFrom(ev.NatAddr), PortFrom(ev.NatPort), be4a)
	}
	if ev.Ifindex != 1 || ev.TimestampNs < start || ev.TimestampNs > MonotonicNow() || ev.Suppressed != 0 {
		t.Errorf("event %+v: want ifindex 1, a timestamp of the run, nothing suppressed", ev)
	}

	// The reply entry evicted: the next packet (which establishes the
	// flow) makes it again, quietly; later packets send nothing either.
	var k CTKey
	var v CTValue
	for it := d.ConntrackTCP.Iterate(); it.Next(&k, &v); {
		if k.Dir == CTDirReply {
			if err := d.ConntrackTCP.Delete(k); err != nil {
				t.Fatal(err)
			}
		}
	}
	next := flow{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "A", seq: 2, payload: []byte("GET /")}
	run(t, d.FromPod, build(t, next))
	if c, err := d.CounterValues(); err != nil || c[CounterCTReplyRestored] != 1 {
		t.Fatalf("counters %v (%v), want the reply entry restored once", c, err)
	}
	noEvent(t, events, "a packet restoring the reply entry")
	for range 3 {
		run(t, d.FromPod, build(t, next))
	}
	noEvent(t, events, "established packets")
}

// TestEventServiceWithPolicy: a new service flow that egress policy judges
// sends one event, TRACE_SERVICE with the policy's part, or the drop with
// the service's part.
func TestEventServiceWithPolicy(t *testing.T) {
	d := policyDatapath(t, PolicyEgressIsolated)
	events := eventReader(t, d)
	vip := ap("10.96.0.50:80")
	backend := netip.AddrPortFrom(polRemote, 8080)
	install(t, d, oneBackend(60, vip, unix.IPPROTO_TCP, backend))
	client := netip.AddrPortFrom(polPod, 40000)
	req := flow{src: client, dst: vip, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}

	if got, _ := run(t, d.FromPod, build(t, req)); got != actShot {
		t.Fatalf("without an egress rule: verdict %d, want dropped", got)
	}
	ev := onlyEvent(t, events, "the dropped service flow")
	if ev.Type != EventDrop || DropReason(ev.Reason) != DropPolicyEgress || Hook(ev.Hook) != HookFromPod ||
		ev.Flags != EventFPolicy|EventFIsolated || ev.Dir != PolicyEgress || ev.Endpoint != polEndpoint || ev.Identity != idRemote {
		t.Errorf("event %+v, want a policy_egress drop of endpoint %d to identity %d", ev, polEndpoint, idRemote)
	}
	wantTuple(t, ev, client, vip, unix.IPPROTO_TCP)
	if ev.SvcId != 60 || ev.BackendId != 6000 || netip.AddrPortFrom(AddrFrom(ev.NatAddr), PortFrom(ev.NatPort)) != backend {
		t.Errorf("drop of service %d backend %d, want service 60 and backend 6000 at %v", ev.SvcId, ev.BackendId, backend)
	}

	allow(t, d, PolicyRule(polEndpoint, idRemote, PolicyEgress, unix.IPPROTO_TCP, 8080, 16))
	if got, _ := run(t, d.FromPod, build(t, req)); got != actOK {
		t.Fatalf("with the rule: verdict %d, want allowed", got)
	}
	ev = onlyEvent(t, events, "the allowed service flow")
	if ev.Type != EventTrace || ev.Reason != TraceService || ev.Flags != EventFPolicy|EventFIsolated || ev.Dir != PolicyEgress ||
		ev.Endpoint != polEndpoint || ev.Identity != idRemote || ev.Matched != idRemote || ev.SvcId != 60 || ev.BackendId != 6000 {
		t.Errorf("event %+v, want one TRACE_SERVICE of service 60 with the egress rule for identity %d", ev, idRemote)
	}
	wantTuple(t, ev, client, vip, unix.IPPROTO_TCP)
}

// TestEventTracePolicy: a new flow that policy lets in sends TRACE_POLICY
// with the remote's identity and the remote of the rule that matched;
// the flow's next packets and its replies send nothing.
func TestEventTracePolicy(t *testing.T) {
	d := policyDatapath(t, PolicyIngressIsolated)
	allow(t, d, PolicyRule(polEndpoint, idRemote, PolicyIngress, unix.IPPROTO_TCP, 8080, 16))
	allow(t, d, PolicyRule(polEndpoint, idCIDR, PolicyIngress, unix.IPPROTO_UDP, 53, 16))
	allow(t, d, PolicyRule(polEndpoint, IdentityAny, PolicyIngress, unix.IPPROTO_TCP, 9090, 16))
	events := eventReader(t, d)
	for _, c := range []struct {
		name              string
		f                 flow
		identity, matched uint32
	}{
		{"a pod's identity", syn(polRemote, polPod, 8080), idRemote, idRemote},
		{"an ipBlock", udp(polWorld, polPod, 53), idCIDR, idCIDR},
		{"any remote", syn(polOther, polPod, 9090), idOther, IdentityAny},
		{"the node", syn(polHost, polPod, 1234), IdentityHost, IdentityHost},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := verdict(t, d, c.f); got != actOK {
				t.Fatalf("verdict %d, want allowed", got)
			}
			ev := onlyEvent(t, events, "the new flow")
			if ev.Type != EventTrace || ev.Reason != TracePolicy || Hook(ev.Hook) != HookToPod || ev.Flags != EventFPolicy|EventFIsolated ||
				ev.Dir != PolicyIngress || ev.Endpoint != polEndpoint || ev.Identity != c.identity || ev.Matched != c.matched || ev.SvcId != 0 {
				t.Errorf("event %+v, want TRACE_POLICY into endpoint %d from identity %d by the rule for %d", ev, polEndpoint, c.identity, c.matched)
			}
			wantTuple(t, ev, c.f.src, c.f.dst, c.f.proto)
			next := c.f
			next.tcpFlags, next.seq = "A", 2
			verdict(t, d, next)
			reply := flow{src: c.f.dst, dst: c.f.src, proto: c.f.proto, tcpFlags: "A"}
			verdict(t, d, reply)
			noEvent(t, events, "the flow's next packet and reply")
		})
	}

	// Egress is not isolated: the flow is recorded unjudged.
	out := syn(polPod, polOther, 5432)
	if got := verdict(t, d, out); got != actOK {
		t.Fatalf("out of the pod: verdict %d, want allowed", got)
	}
	ev := onlyEvent(t, events, "a flow out of an endpoint not isolated that way")
	if ev.Reason != TracePolicy || ev.Flags != EventFPolicy || ev.Dir != PolicyEgress || ev.Identity != 0 || ev.Matched != 0 {
		t.Errorf("event %+v, want TRACE_POLICY recorded unjudged for egress", ev)
	}
}

// TestEventDropContents: a policy drop names the endpoint, the remote's
// identity and the direction; other drops name none of them.
func TestEventDropContents(t *testing.T) {
	d := policyDatapath(t, PolicyIngressIsolated)
	events := eventReader(t, d)
	in := syn(polRemote, polPod, 22)
	if got := verdict(t, d, in); got != actShot {
		t.Fatalf("verdict %d, want dropped", got)
	}
	ev := onlyEvent(t, events, "the policy drop")
	if ev.Type != EventDrop || DropReason(ev.Reason) != DropPolicyIngress || Hook(ev.Hook) != HookToPod || ev.Flags != EventFPolicy|EventFIsolated ||
		ev.Dir != PolicyIngress || ev.Endpoint != polEndpoint || ev.Identity != idRemote || ev.SvcId != 0 || ev.Ifindex != 1 {
		t.Errorf("event %+v, want a policy_ingress drop into endpoint %d from identity %d", ev, polEndpoint, idRemote)
	}
	wantTuple(t, ev, in.src, in.dst, unix.IPPROTO_TCP)

	// A source the pod does not own, after the policy drop on this CPU:
	// nothing of the policy part may stay.
	spoofed := syn(polRemote, polOther, 8080)
	if got, _ := run(t, d.FromPod, build(t, spoofed)); got != actShot {
		t.Fatalf("spoofed source: verdict %d, want dropped", got)
	}
	ev = onlyEvent(t, events, "the spoofed source")
	if DropReason(ev.Reason) != DropSpoofedSource || Hook(ev.Hook) != HookFromPod || ev.Flags != 0 || ev.Endpoint != 0 || ev.Identity != 0 {
		t.Errorf("event %+v, want a spoofed_source drop without policy part", ev)
	}
}

// TestEventRateLimit: a CPU sends at most EventBurst events at once; what
// it holds back is counted and reported by its next event, once the rate
// lets one through. EventsOff sends none and counts none.
func TestEventRateLimit(t *testing.T) {
	onOneCPU(t)
	const burst, flood = 5, 50
	d := loadTest(t, Config{EventRate: 10, EventBurst: burst})
	events := eventReader(t, d)
	// A source the pod does not own: dropped each time, unchanged.
	pkt := build(t, flow{src: ap("10.244.1.5:40000"), dst: ap("10.244.1.6:8080"), proto: unix.IPPROTO_TCP, tcpFlags: "S"})
	if _, _, err := d.FromPod.Benchmark(pkt, flood, nil); err != nil {
		t.Fatal(err)
	}
	if evs := drainEvents(t, events); len(evs) != burst {
		t.Errorf("a flood of %d drops sent %d events, want the burst of %d", flood, len(evs), burst)
	}
	c, err := d.CounterValues()
	if err != nil {
		t.Fatal(err)
	}
	if c[CounterEventsSuppressed] != flood-burst || c[CounterEventsLost] != 0 {
		t.Errorf("counters %v, want %d suppressed and none lost", c, flood-burst)
	}
	time.Sleep(150 * time.Millisecond) // a tenth of a second earns one event
	run(t, d.FromPod, pkt)
	if ev := onlyEvent(t, events, "the drop after the pause"); ev.Suppressed != flood-burst {
		t.Errorf("the next event reports %d suppressed, want %d", ev.Suppressed, flood-burst)
	}
	counts, err := d.DropCounts()
	if err != nil || counts[DropSpoofedSource].Packets != flood+1 {
		t.Errorf("spoofed_source drops %d (%v), want every one counted: %d", counts[DropSpoofedSource].Packets, err, flood+1)
	}

	off := loadTest(t, Config{EventsOff: true})
	offEvents := eventReader(t, off)
	if _, _, err := off.FromPod.Benchmark(pkt, flood, nil); err != nil {
		t.Fatal(err)
	}
	noEvent(t, offEvents, "events off")
	if c, err := off.CounterValues(); err != nil || c[CounterEventsSuppressed] != 0 {
		t.Errorf("events off: counters %v (%v), want nothing suppressed", c, err)
	}
}

// TestEventRingFull: events the ring has no room for are counted lost,
// and every event is either read or counted.
func TestEventRingFull(t *testing.T) {
	onOneCPU(t)
	const flood = 12000 // the 1 MiB ring holds 9,362 events of 112 bytes
	d := loadTest(t, Config{EventRate: 1 << 30, EventBurst: 1 << 30})
	events := eventReader(t, d)
	// A source the pod does not own: dropped each time, unchanged.
	pkt := build(t, flow{src: ap("10.244.1.5:40000"), dst: ap("10.244.1.6:8080"), proto: unix.IPPROTO_TCP, tcpFlags: "S"})
	if _, _, err := d.FromPod.Benchmark(pkt, flood, nil); err != nil {
		t.Fatal(err)
	}
	read := len(drainEvents(t, events))
	c, err := d.CounterValues()
	if err != nil {
		t.Fatal(err)
	}
	if c[CounterEventsLost] == 0 || uint64(read)+c[CounterEventsLost] != flood || c[CounterEventsSuppressed] != 0 {
		t.Errorf("read %d events, counters %v: want some lost and read + lost = %d", read, c, flood)
	}
}

// TestEventReaderClose: Close ends a pending Read with ErrClosed.
func TestEventReaderClose(t *testing.T) {
	d := loadTest(t, Config{})
	r, err := NewEventReader(d)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		_, err := r.Read()
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	r.Close()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("Read after Close: %v, want ErrClosed", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Read still blocked after Close")
	}
}

// TestEventReaderWakes: a Read blocked on an empty ring returns an event
// sent meanwhile, though the datapath does not wake it for one event.
func TestEventReaderWakes(t *testing.T) {
	d := loadTest(t, Config{})
	r := eventReader(t, d)
	got := make(chan FlowEvent, 1)
	go func() {
		if ev, err := r.Read(); err == nil {
			got <- ev
		}
	}()
	time.Sleep(2 * EventPollInterval)
	start := time.Now()
	run(t, d.FromPod, build(t, flow{src: ap("10.244.1.5:40000"), dst: ap("10.244.1.6:8080"), proto: unix.IPPROTO_TCP, tcpFlags: "S"}))
	select {
	case ev := <-got:
		if DropReason(ev.Reason) != DropSpoofedSource {
			t.Errorf("event %+v, want the spoofed_source drop", ev)
		}
		// The poll interval plus what a loaded machine adds.
		if waited := time.Since(start); waited > 10*EventPollInterval {
			t.Errorf("the event took %v to reach Read, want about the poll interval %v", waited, EventPollInterval)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a blocked Read did not return the event sent meanwhile")
	}
}

// TestFinishMigrationUnpinsOldRing: a node upgraded from the release just
// before, which has no map to migrate but pinned the drop event ring
// sluice_events_v2, has that pin removed once the new programs run.
func TestFinishMigrationUnpinsOldRing(t *testing.T) {
	d := loadTest(t, Config{})
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "sluice_events_v2", Type: ebpf.RingBuf, MaxEntries: 1 << 12})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	path := filepath.Join(mapsDir(d.PinRoot()), "sluice_events_v2")
	if err := old.Pin(path); err != nil {
		t.Fatal(err)
	}
	st, err := d.FinishMigration()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) || !slices.Equal(st.Unpinned, []string{"sluice_events_v2"}) {
		t.Errorf("after FinishMigration: %+v, stat %v; want sluice_events_v2 unpinned", st, err)
	}
}

// TestEventXDPDrop: a packet xdp_netdev drops is reported as from_netdev's
// drops are, with the packet as it arrived.
func TestEventXDPDrop(t *testing.T) {
	d := loadTest(t, Config{})
	runIn := frontendNode(t)
	events := eventReader(t, d)
	lb := ap("198.51.100.9:80")
	install(t, d, testService{id: 90, vip: lb, proto: unix.IPPROTO_TCP, scope: ScopeExternal,
		backends: []testBackend{{id: 9000, addr: be4a, flags: BackendLocal}}})
	if err := d.PutFrontendAddr(lb.Addr()); err != nil {
		t.Fatal(err)
	}
	src, dst := ap("192.0.2.1:40000"), ap("198.51.100.9:81")
	if ret := runIn(d.XDPNetdev, build(t, flow{src: src, dst: dst, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1})); ret != 1 {
		t.Fatalf("xdp_netdev verdict %d, want XDP_DROP", ret)
	}
	ev := onlyEvent(t, events, "the drop in XDP")
	if ev.Type != EventDrop || DropReason(ev.Reason) != DropNoFrontendPort || Hook(ev.Hook) != HookFromNetdev || ev.Flags != 0 || ev.SvcId != 0 {
		t.Errorf("event %+v, want a no_frontend_port drop at from_netdev", ev)
	}
	wantTuple(t, ev, src, dst, unix.IPPROTO_TCP)
}
