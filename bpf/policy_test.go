package bpf

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// Policy verdicts with real packets through from_pod and to_pod. The
// endpoint under test is the local pod 10.244.0.2 (policy endpoint 7).
var (
	polPod    = netip.MustParseAddr("10.244.0.2")
	polRemote = netip.MustParseAddr("10.244.1.5") // a pod on another node, identity 300
	polOther  = netip.MustParseAddr("10.244.1.6") // a pod with identity 301
	polWorld  = netip.MustParseAddr("192.168.3.4")
	polExcept = netip.MustParseAddr("192.168.9.9")
	polHost   = netip.MustParseAddr("10.0.0.1")
)

const (
	polEndpoint = 7
	idRemote    = 300
	idOther     = 301
	idCIDR      = 1 << 24
)

func policyDatapath(t *testing.T, flags uint32) *Datapath {
	t.Helper()
	d := loadTest(t, Config{})
	put := func(what string, err error) {
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	for addr, id := range map[netip.Addr]uint32{polRemote: idRemote, polOther: idOther, polHost: IdentityHost} {
		put("ipcache", d.IPCache.Put(EndpointKey{Addr: Addr(addr)}, IPCacheValue{Identity: id}))
	}
	// ipBlock 192.168.0.0/16 except 192.168.9.0/24.
	put("cidr", d.PolicyCIDRs.Put(CIDR(netip.MustParsePrefix("192.168.0.0/16")), IPCacheValue{Identity: idCIDR}))
	put("cidr", d.PolicyCIDRs.Put(CIDR(netip.MustParsePrefix("192.168.9.0/24")), IPCacheValue{Identity: IdentityWorld}))
	put("endpoint", d.PolicyEndpoints.Put(EndpointKey{Addr: Addr(polPod)}, PolicyEndpointValue{Id: polEndpoint, Flags: flags}))
	// The CNI's record of the pod's veth: BPF_PROG_TEST_RUN runs on the
	// loopback device, ifindex 1.
	put("pod endpoint", d.Endpoints.Put(EndpointKey{Addr: Addr(polPod)}, EndpointValue{Ifindex: 1}))
	put("state", d.PolicyState.Put(uint32(0), PolicyState{IsolatedEndpoints: 1}))
	return d
}

func allow(t *testing.T, d *Datapath, k PolicyKey) {
	t.Helper()
	if err := d.Policy.Put(k, PolicyValue{}); err != nil {
		t.Fatalf("rule %+v: %v", k, err)
	}
}

func verdict(t *testing.T, d *Datapath, f flow) uint32 {
	t.Helper()
	prog := d.ToPod
	if f.src.Addr() == polPod {
		prog = d.FromPod
	}
	ret, _ := run(t, prog, build(t, f))
	return ret
}

func syn(src, dst netip.Addr, port uint16) flow {
	return flow{src: netip.AddrPortFrom(src, 40000), dst: netip.AddrPortFrom(dst, port), proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}
}

func udp(src, dst netip.Addr, port uint16) flow {
	return flow{src: netip.AddrPortFrom(src, 40001), dst: netip.AddrPortFrom(dst, port), proto: unix.IPPROTO_UDP, payload: []byte("q")}
}

func TestPolicyIngressVerdicts(t *testing.T) {
	d := policyDatapath(t, PolicyIngressIsolated)
	allow(t, d, PolicyRule(polEndpoint, idRemote, PolicyIngress, unix.IPPROTO_TCP, 8080, 16))
	allow(t, d, PolicyRule(polEndpoint, idOther, PolicyIngress, unix.IPPROTO_TCP, 0x2000, 8)) // ports 8192-8447
	allow(t, d, PolicyRule(polEndpoint, idCIDR, PolicyIngress, 0, 0, 0))                      // any protocol
	for _, c := range []struct {
		name string
		f    flow
		want uint32
	}{
		{"allowed pod, allowed port", syn(polRemote, polPod, 8080), actOK},
		{"allowed pod, other port", syn(polRemote, polPod, 8081), actShot},
		{"allowed pod, other protocol", udp(polRemote, polPod, 8080), actShot},
		{"port range, low edge", syn(polOther, polPod, 8192), actOK},
		{"port range, high edge", syn(polOther, polPod, 8447), actOK},
		{"port range, past the high edge", syn(polOther, polPod, 8448), actShot},
		{"port range, below the low edge", syn(polOther, polPod, 8191), actShot},
		{"ipBlock, any protocol: udp", udp(polWorld, polPod, 53), actOK},
		{"ipBlock, any protocol: tcp", syn(polWorld, polPod, 1), actOK},
		{"ipBlock except", syn(polExcept, polPod, 8080), actShot},
		{"outside every ipBlock", syn(netip.MustParseAddr("172.16.0.1"), polPod, 8080), actShot},
		{"the node itself", syn(polHost, polPod, 9999), actOK},
		{"egress is not isolated", syn(polPod, polOther, 5432), actOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := verdict(t, d, c.f); got != c.want {
				t.Errorf("verdict %d, want %d", got, c.want)
			}
		})
	}
	counts, err := d.DropCounts()
	if err != nil {
		t.Fatal(err)
	}
	if got := counts[DropPolicyIngress].Packets; got != 6 {
		t.Errorf("policy_ingress drops = %d, want 6", got)
	}
}

func TestPolicyAnyRemoteAndAllowedEverywhere(t *testing.T) {
	d := policyDatapath(t, PolicyIngressIsolated)
	allow(t, d, PolicyRule(polEndpoint, IdentityAny, PolicyIngress, unix.IPPROTO_UDP, 53, 16))
	for _, src := range []netip.Addr{polRemote, polWorld, polExcept} {
		if got := verdict(t, d, udp(src, polPod, 53)); got != actOK {
			t.Errorf("udp from %v to port 53: verdict %d, want allowed (any remote)", src, got)
		}
		if got := verdict(t, d, udp(src, polPod, 54)); got != actShot {
			t.Errorf("udp from %v to port 54: verdict %d, want dropped", src, got)
		}
	}
}

// TestPolicyIsStateful: replies of an allowed flow pass through the other,
// isolated, direction; a new flow the other way does not.
func TestPolicyIsStateful(t *testing.T) {
	d := policyDatapath(t, PolicyIngressIsolated|PolicyEgressIsolated)
	allow(t, d, PolicyRule(polEndpoint, idRemote, PolicyIngress, unix.IPPROTO_TCP, 8080, 16))
	events := eventReader(t, d)

	in := syn(polRemote, polPod, 8080)
	if got := verdict(t, d, in); got != actOK {
		t.Fatalf("allowed SYN in: verdict %d", got)
	}
	reply := flow{src: in.dst, dst: in.src, proto: unix.IPPROTO_TCP, tcpFlags: "SA", seq: 9, ack: 2}
	if got := verdict(t, d, reply); got != actOK {
		t.Errorf("SYN-ACK out of an egress-isolated pod: verdict %d, want allowed as a reply", got)
	}
	more := in
	more.tcpFlags, more.seq, more.ack = "A", 2, 10
	if got := verdict(t, d, more); got != actOK {
		t.Errorf("the flow's next packet in: verdict %d, want allowed", got)
	}
	out := syn(polPod, polRemote, 8080)
	if got := verdict(t, d, out); got != actShot {
		t.Errorf("a new flow out: verdict %d, want dropped (egress isolated, no rule)", got)
	}

	ev := nextEvent(t, events, EventDrop)
	if DropReason(ev.Reason) != DropPolicyEgress || ev.Endpoint != polEndpoint || AddrFrom(ev.Dst) != polRemote || PortFrom(ev.Dport) != 8080 {
		t.Errorf("drop event %+v, want policy_egress of endpoint %d to %v:8080", ev, polEndpoint, polRemote)
	}
}

// TestPolicyJudgesServiceBackend: egress through a Service is judged
// against the backend the flow is sent to, not the service address.
func TestPolicyJudgesServiceBackend(t *testing.T) {
	d := policyDatapath(t, PolicyEgressIsolated)
	vip := netip.MustParseAddrPort("10.96.0.50:80")
	install(t, d, oneBackend(60, vip, unix.IPPROTO_TCP, netip.AddrPortFrom(polRemote, 8080)))
	req := flow{src: netip.AddrPortFrom(polPod, 40000), dst: vip, proto: unix.IPPROTO_TCP, tcpFlags: "S", seq: 1}
	if got, _ := run(t, d.FromPod, build(t, req)); got != actShot {
		t.Fatalf("to the service without an egress rule: verdict %d, want dropped", got)
	}
	allow(t, d, PolicyRule(polEndpoint, idRemote, PolicyEgress, unix.IPPROTO_TCP, 8080, 16))
	req.src = netip.AddrPortFrom(polPod, 40002)
	got, out := run(t, d.FromPod, build(t, req))
	want := req
	want.dst = netip.AddrPortFrom(polRemote, 8080)
	if got != actOK {
		t.Fatalf("with a rule for the backend's identity and port: verdict %d, want allowed", got)
	}
	samePacket(t, "DNATed request", out, build(t, want))
}

// TestPolicySameNodePods: two pods of one node share the conntrack map; a
// flow one pod let out must still be judged on the way into the other.
func TestPolicySameNodePods(t *testing.T) {
	d := policyDatapath(t, PolicyIngressIsolated)
	server := netip.MustParseAddr("10.244.0.3")
	if err := d.PolicyEndpoints.Put(EndpointKey{Addr: Addr(server)}, PolicyEndpointValue{Id: 8, Flags: PolicyIngressIsolated}); err != nil {
		t.Fatal(err)
	}
	f := syn(polPod, server, 8080)
	if got, _ := run(t, d.FromPod, build(t, f)); got != actOK {
		t.Fatalf("out of the client (egress not isolated): verdict %d, want allowed", got)
	}
	if got, _ := run(t, d.ToPod, build(t, f)); got != actShot {
		t.Errorf("into the isolated server without a rule: verdict %d, want dropped", got)
	}
}

// TestPolicyRefusesSpoofedSources: under policy a pod may only send from
// its own addresses; otherwise it could borrow another pod's identity.
func TestPolicyRefusesSpoofedSources(t *testing.T) {
	d := policyDatapath(t, PolicyIngressIsolated)
	spoofed := syn(polRemote, polOther, 8080) // from another pod's address
	if ret, _ := run(t, d.FromPod, build(t, spoofed)); ret != actShot {
		t.Errorf("spoofed source: verdict %d, want dropped", ret)
	}
	counts, err := d.DropCounts()
	if err != nil {
		t.Fatal(err)
	}
	if got := counts[DropSpoofedSource].Packets; got != 1 {
		t.Errorf("spoofed_source drops = %d, want 1", got)
	}
}

// TestPolicyLetsBouncedPacketsIn: what from_pod turns around into the pod
// (a hairpin reply from the service address, a reject) meets to_pod, and
// must not be judged as new ingress from the service address.
func TestPolicyLetsBouncedPacketsIn(t *testing.T) {
	d := policyDatapath(t, PolicyIngressIsolated)
	reply := flow{src: vip4, dst: netip.AddrPortFrom(polPod, 40200), proto: unix.IPPROTO_TCP, tcpFlags: "SA", seq: 3, ack: 2}
	if got, _, _ := skbMarkIn(t, d.ToPod, build(t, reply), 0); got != actShot {
		t.Fatalf("unmarked packet from the service address into the isolated pod: verdict %d, want dropped (setup)", got)
	}
	got, _, mark := skbMarkIn(t, d.ToPod, build(t, reply), MarkBounced)
	if got != actOK || mark != 0 {
		t.Errorf("bounced packet: verdict %d mark %#x, want passed with the mark cleared", got, mark)
	}
}
