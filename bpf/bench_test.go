package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/internal/testutil/bpffs"
)

// benchMaglevSize keeps 100,000 services' tables at ~400 MiB of kernel
// memory; the per-packet cost reads one slot and does not depend on it.
const benchMaglevSize = 1021

// benchMaglevClass is the size class of benchMaglevSize's tables.
const benchMaglevClass MaglevClass = 3

// loadServices fills the maps with n TCP services of two backends each,
// written in batches as the agent will.
func loadServices(b *testing.B, d *Datapath, n int) {
	b.Helper()
	keys := make([]ServiceKey, 0, n)
	vals := make([]ServiceValue, 0, n)
	bids := make([]uint32, 0, 2*n)
	bvals := make([]BackendValue, 0, 2*n)
	tables := map[uint32][]uint32{}
	for i := range n {
		id := uint32(i + 10)
		vip := netip.AddrFrom4([4]byte{10, 100 + byte(i>>16), byte(i >> 8), byte(i)})
		keys = append(keys, ServiceKey{Addr: Addr(vip), Port: Port(80), Proto: unix.IPPROTO_TCP})
		vals = append(vals, ServiceValue{Id: id, BackendCount: 2, Flags: benchMaglevClass.Flags()})
		for j := range uint32(2) {
			be := netip.AddrFrom4([4]byte{10, 200 + byte(j), byte(i >> 8), byte(i)})
			bids = append(bids, id*2+j)
			bvals = append(bvals, BackendValue{Addr: Addr(be), Port: Port(8080), SvcId: id})
		}
		table := make([]uint32, benchMaglevSize)
		for s := range table {
			table[s] = id*2 + uint32(s%2)
		}
		tables[id] = table
		if len(tables) == 1000 || i == n-1 {
			if err := d.SetMaglevTables(benchMaglevClass, tables); err != nil {
				b.Fatal(err)
			}
			clear(tables)
		}
	}
	if _, err := d.Backends.BatchUpdate(bids, bvals, nil); err != nil {
		b.Fatal(err)
	}
	if _, err := d.Services.BatchUpdate(keys, vals, nil); err != nil {
		b.Fatal(err)
	}
}

var benchSizes = []int{10, 1000, 10000, 100000}

func benchDatapath(b *testing.B, n int) *Datapath {
	d := loadTest(b, Config{MaglevSize: benchMaglevSize, MaxServices: 131072, MaxBackends: 262144, MaxConntrackTCP: 1 << 20})
	start := time.Now()
	loadServices(b, d, n)
	b.Logf("loaded %d services in %v", n, time.Since(start).Round(time.Millisecond))
	// Two extra services that translate into each other: a repeated test
	// run rewrites its packet in place, so each run meets the other
	// service and every run is a full established-flow hit with DNAT.
	install(b, d, oneBackend(1, ap("10.96.0.10:80"), unix.IPPROTO_TCP, ap("10.244.9.9:8080")))
	install(b, d, oneBackend(2, ap("10.244.9.9:8080"), unix.IPPROTO_TCP, ap("10.96.0.10:80")))
	return d
}

// BenchmarkFromPodEstablished: ns per packet of an established service flow
// (service lookup, conntrack hit, backend check, DNAT with checksums).
func BenchmarkFromPodEstablished(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			d := benchDatapath(b, n)
			pkt := build(b, flow{src: ap("10.244.0.2:40000"), dst: ap("10.96.0.10:80"), proto: unix.IPPROTO_TCP, tcpFlags: "A", payload: make([]byte, 64)})
			// Open the flow in both directions first.
			run(b, d.FromPod, pkt)
			b.ResetTimer()
			ret, per, err := d.FromPod.Benchmark(pkt, b.N, nil)
			if err != nil || ret != actOK {
				b.Fatalf("ret %d err %v", ret, err)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
		})
	}
}

// BenchmarkToPodReply: ns per reply packet of an established service
// flow (conntrack hit on the reply entry, the forward entry checked,
// reverse NAT). The flows to the two mirrored services are opened, so each
// repeated run rewrites the reply into the other flow's reply.
func BenchmarkToPodReply(b *testing.B) {
	for _, n := range []int{10, 100000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			d := benchDatapath(b, n)
			client := ap("10.244.0.2:40000")
			for _, vip := range []netip.AddrPort{ap("10.96.0.10:80"), ap("10.244.9.9:8080")} {
				run(b, d.FromPod, build(b, flow{src: client, dst: vip, proto: unix.IPPROTO_TCP, tcpFlags: "S"}))
			}
			pkt := build(b, flow{src: ap("10.244.9.9:8080"), dst: client, proto: unix.IPPROTO_TCP, tcpFlags: "A", payload: make([]byte, 64)})
			if _, out := run(b, d.ToPod, pkt); netip.AddrFrom4([4]byte(out[26:30])) != netip.MustParseAddr("10.96.0.10") {
				b.Fatalf("the reply is not translated: %s", describe(out))
			}
			b.ResetTimer()
			ret, per, err := d.ToPod.Benchmark(pkt, b.N, nil)
			if err != nil || ret != actOK {
				b.Fatalf("ret %d err %v", ret, err)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
		})
	}
}

// BenchmarkFromPodNewFlow: ns per first packet of a connection (service
// lookup, conntrack miss, Maglev choice, two conntrack inserts, DNAT).
// Each run uses a new source port; the time is the kernel's own measure
// of the program, without the syscall around it.
func BenchmarkFromPodNewFlow(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			d := benchDatapath(b, n)
			pkt := build(b, flow{src: ap("10.244.0.2:1"), dst: ap("10.96.0.10:80"), proto: unix.IPPROTO_TCP, tcpFlags: "S"})
			var total time.Duration
			b.ResetTimer()
			for i := range b.N {
				// A fresh tuple per run: a new source port (the pod may send
				// only from its own address); when the ports run out, the
				// flows of the last round are forgotten, untimed.
				if i > 0 && i%65535 == 0 {
					flushMap(b, d.ConntrackTCP)
				}
				binary.BigEndian.PutUint16(pkt[14+20:], uint16(i%65535)+1)
				ret, per, err := d.FromPod.Benchmark(pkt, 1, nil)
				if err != nil || ret != actOK {
					b.Fatalf("ret %d err %v", ret, err)
				}
				total += per
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/packet")
		})
	}
}

// BenchmarkFromPodNonService: ns per packet that is not for a service
// (parse plus one service map miss), the cost every pod packet pays.
func BenchmarkFromPodNonService(b *testing.B) {
	for _, n := range []int{10, 100000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			d := benchDatapath(b, n)
			pkt := build(b, flow{src: ap("10.244.0.2:40000"), dst: ap("10.244.1.2:80"), proto: unix.IPPROTO_TCP, tcpFlags: "A", payload: make([]byte, 64)})
			b.ResetTimer()
			_, per, err := d.FromPod.Benchmark(pkt, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
		})
	}
}

// BenchmarkHelperCallCost measures what one BPF helper call costs on this
// machine (an empty program versus one making four bpf_ktime_get_ns calls),
// the unit that the datapath's per-packet cost is mostly made of.
func BenchmarkHelperCallCost(b *testing.B) {
	bpffs.Require(b)
	for _, calls := range []int{0, 4} {
		b.Run(fmt.Sprintf("calls=%d", calls), func(b *testing.B) {
			var ins asm.Instructions
			for range calls {
				ins = append(ins, asm.FnKtimeGetNs.Call())
			}
			ins = append(ins, asm.Mov.Imm(asm.R0, 0), asm.Return())
			prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: ins})
			if err != nil {
				b.Fatal(err)
			}
			defer prog.Close()
			pkt := build(b, flow{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "A"})
			b.ResetTimer()
			_, per, err := prog.Benchmark(pkt, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
		})
	}
}

// BenchmarkPolicyNewFlow: ns per first packet of an allowed flow into an
// ingress-isolated pod (endpoint lookup, conntrack miss, ipcache, CIDR LPM,
// rule LPM, conntrack insert) with 10 and 10,000 rules on the node. Each
// run uses a new source port, so every packet is judged.
func BenchmarkPolicyNewFlow(b *testing.B) {
	for _, rules := range []int{10, 10000} {
		b.Run(fmt.Sprintf("rules=%d", rules), func(b *testing.B) {
			d := loadTest(b, Config{})
			pod, client := netip.MustParseAddr("10.244.0.2"), netip.MustParseAddr("10.244.1.5")
			must := func(err error) {
				if err != nil {
					b.Fatal(err)
				}
			}
			must(d.PolicyEndpoints.Put(EndpointKey{Addr: Addr(pod)}, PolicyEndpointValue{Id: 1, Flags: PolicyIngressIsolated}))
			must(d.IPCache.Put(EndpointKey{Addr: Addr(client)}, IPCacheValue{Identity: 300}))
			must(d.PolicyState.Put(uint32(0), PolicyState{IsolatedEndpoints: 1}))
			// Rules of 100 endpoints for many identities and ports; the
			// packet matches the last one written.
			for i := range rules {
				ep, id := uint32(1+i%100), uint32(256+i/100)
				must(d.Policy.Put(PolicyRule(ep, id, PolicyIngress, unix.IPPROTO_TCP, uint16(1000+i%50), 16), PolicyValue{}))
			}
			must(d.Policy.Put(PolicyRule(1, 300, PolicyIngress, unix.IPPROTO_TCP, 8080, 16), PolicyValue{}))
			pkt := build(b, flow{src: netip.AddrPortFrom(client, 1), dst: netip.AddrPortFrom(pod, 8080), proto: unix.IPPROTO_TCP, tcpFlags: "S"})
			var total time.Duration
			b.ResetTimer()
			for i := range b.N {
				binary.BigEndian.PutUint16(pkt[14+20:], uint16(i)|1)
				ret, per, err := d.ToPod.Benchmark(pkt, 1, nil)
				if err != nil || ret != actOK {
					b.Fatalf("ret %d err %v", ret, err)
				}
				total += per
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/packet")
		})
	}
}

// flushMap deletes every entry of m.
func flushMap(b testing.TB, m *ebpf.Map) {
	b.Helper()
	var keys [][]byte
	k, v := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, append([]byte(nil), k...))
	}
	if err := it.Err(); err != nil {
		b.Fatal(err)
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil {
			b.Fatal(err)
		}
	}
}

// Flow event settings the event benchmarks compare: none sent, every one
// sent (a rate no run reaches), and every one held back by the rate limit
// (after the first).
var eventModes = []struct {
	name string
	cfg  Config
}{
	{"off", Config{EventsOff: true}},
	{"on", Config{EventRate: 1 << 30, EventBurst: 1 << 30}},
	{"suppressed", Config{EventRate: 1, EventBurst: 1}},
}

// eventRun is one side of an event benchmark: a datapath with its own
// packet, and next(pkt, i) to prepare the packet of run i.
type eventRun struct {
	name   string
	d      *Datapath
	prog   *ebpf.Program
	pkt    []byte
	r      *EventReader
	total  time.Duration
	events int
}

// benchEvents times the same packets through datapaths that differ only in
// their event settings, alternating between them chunk runs at a time so
// that the machine's load, which drifts, weighs on each alike. Between
// chunks it empties the event rings untimed, so that an event meets a ring
// with room, as with an agent that keeps up. Each side reports its own
// ns/packet.
func benchEvents(b *testing.B, runs []*eventRun, want uint32, chunk int, next func(pkt []byte, i int)) {
	for _, r := range runs {
		var err error
		if r.r, err = NewEventReader(r.d); err != nil {
			b.Fatal(err)
		}
		defer r.r.Close()
	}
	drain := func() {
		for _, r := range runs {
			r.r.SetDeadline(time.Now())
			for {
				if _, err := r.r.Read(); err != nil {
					break
				}
				r.events++
			}
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i += chunk {
		n := min(chunk, b.N-i)
		for _, r := range runs {
			if next != nil {
				next(r.pkt, i)
			}
			ret, per, err := r.prog.Benchmark(r.pkt, n, nil)
			if err != nil || ret != want {
				b.Fatalf("%s: ret %d err %v", r.name, ret, err)
			}
			r.total += per * time.Duration(n)
		}
		if i/chunk%64 == 63 || chunk >= 1024 {
			b.StopTimer()
			drain()
			b.StartTimer()
		}
	}
	b.StopTimer()
	drain()
	for _, r := range runs {
		b.ReportMetric(float64(r.total.Nanoseconds())/float64(b.N), r.name+"-ns/packet")
		if c, err := r.d.CounterValues(); err == nil && c[CounterEventsLost] > 0 {
			b.Errorf("%s: %d events lost: the ring was full", r.name, c[CounterEventsLost])
		}
	}
	for _, r := range runs {
		b.Logf("%s: %d events read in %d runs", r.name, r.events, b.N)
	}
}

// eventRuns loads a datapath per event mode (the first n of eventModes),
// each with setup's state and packet.
func eventRuns(b *testing.B, n int, prog func(*Datapath) *ebpf.Program, setup func(*Datapath) []byte) []*eventRun {
	var runs []*eventRun
	for _, m := range eventModes[:n] {
		d := benchEventDatapath(b, m.cfg)
		runs = append(runs, &eventRun{name: m.name, d: d, prog: prog(d), pkt: setup(d)})
	}
	return runs
}

func fromPod(d *Datapath) *ebpf.Program { return d.FromPod }
func toPod(d *Datapath) *ebpf.Program   { return d.ToPod }

// BenchmarkFlowEvents: what flow events cost, with events off, sent, and
// held back by the rate limit, side by side in one run:
//   - new-flow: the first packet of a service flow (TRACE_SERVICE);
//   - policy-new-flow: the first packet of a flow into an ingress-isolated
//     pod that a rule allows (TRACE_POLICY);
//   - drop: a packet that ingress policy drops (a drop event);
//   - established and reply: packets of a known service flow, which send
//     nothing: the same either way.
func BenchmarkFlowEvents(b *testing.B) {
	b.Run("new-flow", func(b *testing.B) {
		runs := eventRuns(b, 3, fromPod, func(d *Datapath) []byte {
			return build(b, flow{src: ap("10.244.0.2:1"), dst: ap("10.96.0.10:80"), proto: unix.IPPROTO_TCP, tcpFlags: "S"})
		})
		benchEvents(b, runs, actOK, 1, func(pkt []byte, i int) {
			if i > 0 && i%65535 == 0 && &pkt[0] == &runs[0].pkt[0] {
				b.StopTimer()
				for _, r := range runs {
					flushMap(b, r.d.ConntrackTCP)
				}
				b.StartTimer()
			}
			binary.BigEndian.PutUint16(pkt[14+20:], uint16(i%65535)+1)
		})
	})
	b.Run("policy-new-flow", func(b *testing.B) {
		runs := eventRuns(b, 3, toPod, func(d *Datapath) []byte { return benchPolicy(b, d) })
		benchEvents(b, runs, actOK, 1, func(pkt []byte, i int) {
			binary.BigEndian.PutUint16(pkt[14+20:], uint16(i)|1)
		})
	})
	b.Run("drop", func(b *testing.B) {
		runs := eventRuns(b, 3, toPod, func(d *Datapath) []byte {
			pkt := benchPolicy(b, d)
			binary.BigEndian.PutUint16(pkt[14+20+2:], 22) // no rule for port 22
			return pkt
		})
		benchEvents(b, runs, actShot, 4096, nil)
	})
	b.Run("established", func(b *testing.B) {
		runs := eventRuns(b, 2, fromPod, func(d *Datapath) []byte {
			pkt := build(b, flow{src: ap("10.244.0.2:40000"), dst: ap("10.96.0.10:80"), proto: unix.IPPROTO_TCP, tcpFlags: "A", payload: make([]byte, 64)})
			run(b, d.FromPod, pkt)
			return pkt
		})
		benchEvents(b, runs, actOK, 4096, nil)
	})
	b.Run("reply", func(b *testing.B) {
		runs := eventRuns(b, 2, toPod, func(d *Datapath) []byte {
			client := ap("10.244.0.2:40000")
			for _, vip := range []netip.AddrPort{ap("10.96.0.10:80"), ap("10.244.9.9:8080")} {
				run(b, d.FromPod, build(b, flow{src: client, dst: vip, proto: unix.IPPROTO_TCP, tcpFlags: "S"}))
			}
			return build(b, flow{src: ap("10.244.9.9:8080"), dst: client, proto: unix.IPPROTO_TCP, tcpFlags: "A", payload: make([]byte, 64)})
		})
		benchEvents(b, runs, actOK, 4096, nil)
	})
}

// benchEventDatapath is benchDatapath's setup at 10 services with the
// flow event settings of cfg.
func benchEventDatapath(b *testing.B, cfg Config) *Datapath {
	cfg.MaglevSize, cfg.MaxServices, cfg.MaxBackends, cfg.MaxConntrackTCP = benchMaglevSize, 131072, 262144, 1<<20
	d := loadTest(b, cfg)
	loadServices(b, d, 10)
	install(b, d, oneBackend(1, ap("10.96.0.10:80"), unix.IPPROTO_TCP, ap("10.244.9.9:8080")))
	install(b, d, oneBackend(2, ap("10.244.9.9:8080"), unix.IPPROTO_TCP, ap("10.96.0.10:80")))
	return d
}

// benchPolicy isolates the pod 10.244.0.2 for ingress with a rule for the
// client's identity on TCP port 8080, and returns a SYN of the client to
// it (source port 1).
func benchPolicy(b *testing.B, d *Datapath) []byte {
	pod, client := netip.MustParseAddr("10.244.0.2"), netip.MustParseAddr("10.244.1.5")
	for _, err := range []error{
		d.PolicyEndpoints.Put(EndpointKey{Addr: Addr(pod)}, PolicyEndpointValue{Id: 1, Flags: PolicyIngressIsolated}),
		d.IPCache.Put(EndpointKey{Addr: Addr(client)}, IPCacheValue{Identity: 300}),
		d.PolicyState.Put(uint32(0), PolicyState{IsolatedEndpoints: 1}),
		d.Policy.Put(PolicyRule(1, 300, PolicyIngress, unix.IPPROTO_TCP, 8080, 16), PolicyValue{}),
	} {
		if err != nil {
			b.Fatal(err)
		}
	}
	return build(b, flow{src: netip.AddrPortFrom(client, 1), dst: netip.AddrPortFrom(pod, 8080), proto: unix.IPPROTO_TCP, tcpFlags: "S"})
}
