package bpf

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// The ratio benchmarks compare the three kinds of pod packet under equal
// conditions: each is timed over many runs of one BPF_PROG_TEST_RUN call,
// with the program and its maps warm. (BenchmarkFromPodNewFlow times one
// run per call, so each of its packets also pays for the caches a syscall
// leaves cold; its figure is not comparable with repeated runs.)
//
// A new flow per run without a syscall between runs: each run rewrites
// its packet in place, and here each service's one backend is the next
// service of a chain, so the packet a run leaves behind is the first
// packet of a flow to the next service.

// ratioChain is the number of services in the chain, the runs per call.
const ratioChain = 4096

func ratioDatapath(b *testing.B) *Datapath {
	d := loadTest(b, Config{MaxServices: 8192, MaxBackends: 8192, MaxConntrackTCP: 1 << 16})
	for i := range ratioChain {
		install(b, d, oneBackend(uint32(i+10), chainVIP(i), unix.IPPROTO_TCP, chainVIP(i+1)))
	}
	// Established: two services that translate into each other, so each
	// run's rewritten packet is again a hit of an open flow (as in
	// BenchmarkFromPodEstablished).
	install(b, d, oneBackend(1, ap("10.96.0.10:80"), unix.IPPROTO_TCP, ap("10.244.9.9:8080")))
	install(b, d, oneBackend(2, ap("10.244.9.9:8080"), unix.IPPROTO_TCP, ap("10.96.0.10:80")))
	return d
}

func chainVIP(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 97, byte(i >> 8), byte(i)}), 80)
}

// BenchmarkPodPacketRatio: ns per packet of a non-service packet, an
// established service packet and the first packet of a service flow, and
// the two ratios the tc path is held to (established and new flow against
// non-service), all from one datapath in one run.
func BenchmarkPodPacketRatio(b *testing.B) {
	d := ratioDatapath(b)
	client := ap("10.244.0.2:40000")
	timed := func(pkt []byte, prepare func()) float64 {
		var total, runs float64
		for i := 0; i < b.N; i += ratioChain {
			prepare()
			ret, per, err := d.FromPod.Benchmark(append([]byte(nil), pkt...), ratioChain, nil)
			if err != nil || ret != actOK {
				b.Fatalf("ret %d err %v", ret, err)
			}
			total += float64(per.Nanoseconds()) * ratioChain
			runs += ratioChain
		}
		return total / runs
	}
	syn := build(b, flow{src: client, dst: chainVIP(0), proto: unix.IPPROTO_TCP, tcpFlags: "S"})
	ack := build(b, flow{src: client, dst: ap("10.96.0.10:80"), proto: unix.IPPROTO_TCP, tcpFlags: "A", payload: make([]byte, 64)})
	other := build(b, flow{src: client, dst: ap("10.244.1.2:80"), proto: unix.IPPROTO_TCP, tcpFlags: "A", payload: make([]byte, 64)})
	flush := func() { flushMap(b, d.ConntrackTCP) }

	b.ResetTimer()
	nonService := timed(other, func() {})
	newFlow := timed(syn, flush)
	run(b, d.FromPod, ack)
	established := timed(ack, func() {})
	b.StopTimer()
	b.ReportMetric(nonService, "ns/non-service")
	b.ReportMetric(established, "ns/established")
	b.ReportMetric(newFlow, "ns/new-flow")
	b.ReportMetric(established/nonService, "established/non-service")
	b.ReportMetric(newFlow/nonService, "new-flow/non-service")
	b.Logf("non-service %.0f ns, established %.0f ns (%.1fx), new flow %.0f ns (%.1fx)",
		nonService, established, established/nonService, newFlow, newFlow/nonService)
}
