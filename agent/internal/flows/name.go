package flows

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/observeapi"
)

// Lookup answers the naming questions from the agent's caches. Every
// method returns "" or nil when it does not know.
type Lookup interface {
	// Pod is the pod with the address, as NAMESPACE/NAME.
	Pod(addr netip.Addr) string
	// Node is the node with the address.
	Node(addr netip.Addr) string
	// Service is the Service of frontend svcID as NAMESPACE/NAME:PORT
	// (the port's name; NAMESPACE/NAME when it has none).
	Service(svcID uint32) string
	// Isolating are the NetworkPolicies isolating policy endpoint ep in
	// direction dir (bpf.PolicyIngress, bpf.PolicyEgress), NAMESPACE/NAME.
	Isolating(ep uint32, dir uint8) []string
	// Allowing are the NetworkPolicy rules allowing endpoint ep traffic in
	// direction dir with the remote address, protocol and port (the
	// destination port), given the identity the datapath matched, as
	// NAMESPACE/NAME[DIRECTION INDEX].
	Allowing(ep uint32, dir uint8, remote netip.Addr, proto uint8, port uint16, matched uint32) []string
}

// Clock reads the wall clock and the datapath's (CLOCK_MONOTONIC, in
// nanoseconds).
type Clock interface {
	Now() time.Time
	Monotonic() uint64
}

type realClock struct{}

func (realClock) Now() time.Time    { return time.Now() }
func (realClock) Monotonic() uint64 { return bpf.MonotonicNow() }

// HookSocket names the hook of a pod's connection translated at its socket
// (socket-level load balancing) rather than on its veth.
const HookSocket = "socket"

// Namer names events as flows of one node.
type Namer struct {
	node   string
	lookup Lookup
	clock  Clock
}

// NewNamer returns a Namer for node; clock nil is the real one.
func NewNamer(node string, lookup Lookup, clock Clock) *Namer {
	if clock == nil {
		clock = realClock{}
	}
	return &Namer{node: node, lookup: lookup, clock: clock}
}

// wall converts a monotonic timestamp to wall time, against the clocks
// read now (so a wall clock step moves later events, never the order of
// those read together).
func (n *Namer) wall(mono uint64) time.Time {
	now, nowMono := n.clock.Now(), n.clock.Monotonic()
	if mono <= nowMono {
		return now.Add(-time.Duration(nowMono - mono))
	}
	return now.Add(time.Duration(mono - nowMono))
}

// Name names one event.
func (n *Namer) Name(ev Event) observeapi.Flow {
	fl := observeapi.Flow{
		Time:       n.wall(ev.Time),
		Node:       n.node,
		Hook:       bpf.HookName(ev.Hook),
		Proto:      ProtoName(ev.Proto),
		Src:        n.addr(ev.Src),
		Dst:        n.addr(ev.Dst),
		Suppressed: ev.Suppressed,
	}
	if ev.Flags&FlagSocket != 0 {
		fl.Hook = HookSocket
	}
	switch {
	case ev.Type == EventDrop:
		fl.Verdict = observeapi.VerdictDropped
		fl.Reason = bpf.DropReasonName(ev.Reason)
	case ev.Type == EventTrace && ev.Reason == TraceService:
		fl.Verdict = observeapi.VerdictTranslated
	default:
		fl.Verdict = observeapi.VerdictForwarded
	}
	if ev.SvcID != 0 {
		fl.Service = n.lookup.Service(ev.SvcID)
	}
	if ev.NAT.Addr().IsValid() && !ev.NAT.Addr().IsUnspecified() {
		b := n.addr(ev.NAT)
		fl.Backend = &b
	}
	if ev.Flags&FlagPolicy == 0 {
		return fl
	}
	dir := "ingress"
	if ev.Dir == bpf.PolicyEgress {
		dir = "egress"
	}
	fl.Direction = dir
	if ev.Flags&FlagIsolated == 0 {
		return fl
	}
	if ev.Type == EventDrop {
		fl.Policies = n.lookup.Isolating(ev.Endpoint, ev.Dir)
		return fl
	}
	if ev.Matched == bpf.IdentityHost {
		return fl // the node is always let in: no policy decides
	}
	remote, port := ev.Src.Addr(), ev.Dst.Port()
	if ev.Dir == bpf.PolicyEgress {
		// Egress is judged on the translated packet: the backend.
		to := ev.Dst
		if fl.Backend != nil {
			to = ev.NAT
		}
		remote, port = to.Addr(), to.Port()
	}
	fl.Policies = n.lookup.Allowing(ev.Endpoint, ev.Dir, remote, ev.Proto, port, ev.Matched)
	return fl
}

func (n *Namer) addr(ap netip.AddrPort) observeapi.Addr {
	a := observeapi.Addr{IP: ap.Addr().String(), Port: ap.Port()}
	if !ap.Addr().IsValid() {
		a.IP = ""
		return a
	}
	if a.Pod = n.lookup.Pod(ap.Addr()); a.Pod == "" {
		a.Node = n.lookup.Node(ap.Addr())
	}
	return a
}

// ProtoName names an IP protocol number as the observer API does: tcp,
// udp, sctp, icmp, icmpv6, else proto-N.
func ProtoName(p uint8) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 58:
		return "icmpv6"
	case 132:
		return "sctp"
	}
	return fmt.Sprintf("proto-%d", p)
}
