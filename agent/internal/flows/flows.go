// Package flows turns the datapath's flow events into named flows: it reads
// the event ring, names each event from the agent's caches (pods, nodes,
// Services, the NetworkPolicies that isolate an endpoint or allowed a
// flow), keeps the last flows in memory and hands them, and the ones that
// follow, to observers. Naming is pure (Namer, with a Lookup of the
// caches); the ring reader (Run) is a thin loop around it.
package flows

import (
	"net/netip"

	"github.com/sluice-net/sluice/bpf"
)

// Event is one datapath flow event, decoded (bpf.FlowEvent with its
// addresses and ports in Go form; FromBPF converts).
type Event struct {
	Time    uint64 // bpf_ktime_get_ns(): CLOCK_MONOTONIC
	Ifindex uint32
	Type    uint8  // EventDrop, EventTrace
	Hook    uint8  // bpf.Hook
	Proto   uint8  // IPPROTO_*
	Dir     uint8  // with FlagPolicy: bpf.PolicyIngress or bpf.PolicyEgress
	Reason  uint16 // EventDrop: bpf.DropReason; EventTrace: TraceService, TracePolicy
	Flags   uint16 // FlagPolicy, FlagIsolated, FlagSocket
	// Suppressed counts events of this CPU the rate limit held back
	// since its previous one.
	Suppressed uint32
	// Src and Dst are the packet as the hook saw it, before translation.
	Src, Dst netip.AddrPort
	// NAT is the chosen backend of a TraceService event; invalid when
	// none.
	NAT       netip.AddrPort
	SvcID     uint32
	BackendID uint32
	// With FlagPolicy: the local endpoint's policy ID and the remote's
	// identity as judged; with FlagIsolated on a trace event, Matched is
	// the remote of the rule that let the flow through.
	Endpoint, Identity, Matched uint32
}

// Event types, trace points and flags: the datapath's (bpf.EventDrop, ...).
const (
	EventDrop  = bpf.EventDrop
	EventTrace = bpf.EventTrace

	TraceService = bpf.TraceService
	TracePolicy  = bpf.TracePolicy

	FlagPolicy   = bpf.EventFPolicy
	FlagIsolated = bpf.EventFIsolated
	FlagSocket   = bpf.EventFSocket
)

// FromBPF converts a record of the ring.
func FromBPF(ev bpf.FlowEvent) Event {
	ap := func(a [16]uint8, port uint16) netip.AddrPort {
		return netip.AddrPortFrom(bpf.AddrFrom(a), bpf.PortFrom(port))
	}
	out := Event{
		Time: ev.TimestampNs, Ifindex: ev.Ifindex, Type: ev.Type, Hook: ev.Hook, Proto: ev.Proto, Dir: ev.Dir,
		Reason: ev.Reason, Flags: ev.Flags, Suppressed: ev.Suppressed,
		Src: ap(ev.Src, ev.Sport), Dst: ap(ev.Dst, ev.Dport),
		SvcID: ev.SvcId, BackendID: ev.BackendId, Endpoint: ev.Endpoint, Identity: ev.Identity, Matched: ev.Matched,
	}
	if ev.NatAddr != ([16]uint8{}) {
		out.NAT = ap(ev.NatAddr, ev.NatPort)
	}
	return out
}

// RingReader reads the datapath's ring (Reader of bpf.EventReader).
type RingReader struct{ R *bpf.EventReader }

// Read returns the next event.
func (r RingReader) Read() (Event, error) {
	ev, err := r.R.Read()
	if err != nil {
		return Event{}, err
	}
	return FromBPF(ev), nil
}

// Close releases the ring.
func (r RingReader) Close() error { return r.R.Close() }
