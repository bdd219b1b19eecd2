package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Map key and value types, generated from bpf/include/sluice.h by bpf2go.
type (
	ServiceKey    = datapathSvcKey
	ServiceValue  = datapathSvcValue
	BackendValue  = datapathBackendValue
	AffinityKey   = datapathAffinityKey
	AffinityValue = datapathAffinityValue
	CTKey         = datapathCtKey
	CTValue       = datapathCtValue
	EndpointKey   = datapathEndpointKey
	EndpointValue = datapathEndpointValue
	DropCounter   = datapathDropCounter
	FlowEvent     = datapathFlowEvent
	DropReason    = datapathDropReason

	IPCacheValue        = datapathIpcacheValue
	CIDRKey             = datapathCidrKey
	TunnelEndpoint      = datapathTunnelEndpoint
	NodeKey             = datapathNodeKey
	NodeValue           = datapathNodeValue
	PolicyEndpointValue = datapathPolicyEndpointValue
	PolicyKey           = datapathPolicyKey
	PolicyValue         = datapathPolicyValue
	PolicyState         = datapathPolicyState
	EndpointSlot        = datapathEndpointSlot
	NodeCIDR            = datapathNodeCidr
	SockNetnsValue      = datapathSockNetnsValue
	LBRangeKey          = datapathLbRangeKey
)

const endpointSlots = uint32(datapathEndpointSlotsENDPOINT_SLOTS)

// MarkSNAT is the skb mark from_netdev puts on external traffic sent to a
// backend on another node; the agent masquerades packets carrying it.
const MarkSNAT = uint32(datapathMarkMARK_SNAT)

// MarkBounced is the skb mark of packets from_pod sends back into the pod.
const MarkBounced = uint32(datapathMarkMARK_BOUNCED)

// Hairpin sources: a pod load-balanced to itself through a Service sees
// the connection come from one of these addresses (the pod would drop its
// own address as a martian). The loader writes them into the datapath, so
// this is their only definition.
var (
	HairpinAddr4 = netip.MustParseAddr("169.254.42.1")
	HairpinAddr6 = netip.MustParseAddr("fd73:6c75:6963:6500::1")
)

// L4 protocol numbers as the maps hold them (ServiceKey.Proto,
// PolicyKey.Proto, CTKey.Proto).
const (
	ProtoTCP  = uint8(unix.IPPROTO_TCP)
	ProtoUDP  = uint8(unix.IPPROTO_UDP)
	ProtoSCTP = uint8(unix.IPPROTO_SCTP)
)

// Reserved policy identities (IPCacheValue.Identity, PolicyKey.Remote).
const (
	IdentityAny   = uint32(datapathIdentityIDENTITY_ANY)
	IdentityHost  = uint32(datapathIdentityIDENTITY_HOST)
	IdentityWorld = uint32(datapathIdentityIDENTITY_WORLD)
)

// Policy endpoint flags (PolicyEndpointValue.Flags) and rule directions
// (PolicyKey.Dir).
const (
	PolicyIngressIsolated = uint32(datapathPolicyEndpointFlagsPOLICY_F_INGRESS_ISOLATED)
	PolicyEgressIsolated  = uint32(datapathPolicyEndpointFlagsPOLICY_F_EGRESS_ISOLATED)
	PolicyIngress         = uint8(datapathPolicyDirPOLICY_INGRESS)
	PolicyEgress          = uint8(datapathPolicyDirPOLICY_EGRESS)
	// PolicyKeyBits is the full prefix of a PolicyKey: endpoint, remote,
	// direction (72 bits), protocol (8) and port (16).
	PolicyKeyBits   = uint32(datapathPolicyKeyBitsPOLICY_KEY_BITS)
	policyPeerBits  = uint32(datapathPolicyKeyBitsPOLICY_KEY_PEER_BITS)
	policyProtoBits = uint32(datapathPolicyKeyBitsPOLICY_KEY_PROTO_BITS)
)

// Service scopes (ServiceKey.Scope).
const (
	ScopeInternal = uint8(datapathSvcScopeSVC_SCOPE_INTERNAL)
	ScopeExternal = uint8(datapathSvcScopeSVC_SCOPE_EXTERNAL)
)

// Service flags (ServiceValue.Flags).
const (
	ServiceLocalOnly           = uint32(datapathSvcFlagsSVC_F_LOCAL_ONLY)
	ServiceTerminatingFallback = uint32(datapathSvcFlagsSVC_F_TERMINATING_FALLBACK)
	// ServiceSourceRanges: only clients in the frontend's LBRanges may
	// use it; ServiceSourceRangesNode: the node's own sockets may too.
	ServiceSourceRanges     = uint32(datapathSvcFlagsSVC_F_SOURCE_RANGES)
	ServiceSourceRangesNode = uint32(datapathSvcFlagsSVC_F_SOURCE_RANGES_NODE)
)

// Backend flags (BackendValue.Flags).
const (
	BackendLocal       = uint8(datapathBackendFlagsBACKEND_F_LOCAL)
	BackendTerminating = uint8(datapathBackendFlagsBACKEND_F_TERMINATING)
)

// Conntrack directions (CTKey.Dir) and flags (CTValue.Flags).
const (
	CTDirService      = uint8(datapathCtDirCT_DIR_SERVICE)
	CTDirReply        = uint8(datapathCtDirCT_DIR_REPLY)
	CTDirMasq         = uint8(datapathCtDirCT_DIR_MASQ)
	CTFlagDSR         = uint8(datapathCtFlagsCT_F_DSR)
	CTFlagMasq        = uint8(datapathCtFlagsCT_F_MASQ)
	CTFlagEstablished = uint8(datapathCtFlagsCT_F_ESTABLISHED)
	CTFlagClosing     = uint8(datapathCtFlagsCT_F_CLOSING)
	CTFlagHairpin     = uint8(datapathCtFlagsCT_F_HAIRPIN)
)

// Drop reasons, the index of the drop counters.
const (
	DropNoBackend        = datapathDropReasonDROP_NO_BACKEND
	DropBackendMissing   = datapathDropReasonDROP_BACKEND_MISSING
	DropSCTPPortNAT      = datapathDropReasonDROP_SCTP_PORT_NAT
	DropNATFailed        = datapathDropReasonDROP_NAT_FAILED
	DropRejectFailed     = datapathDropReasonDROP_REJECT_FAILED
	DropPolicyIngress    = datapathDropReasonDROP_POLICY_INGRESS
	DropPolicyEgress     = datapathDropReasonDROP_POLICY_EGRESS
	DropSpoofedSource    = datapathDropReasonDROP_SPOOFED_SOURCE
	DropUnparseable      = datapathDropReasonDROP_UNPARSEABLE
	DropFragNoFlow       = datapathDropReasonDROP_FRAG_NO_FLOW
	DropFragOverlap      = datapathDropReasonDROP_FRAG_OVERLAP
	DropSpoofedUplink    = datapathDropReasonDROP_SPOOFED_UPLINK
	DropSourceRange      = datapathDropReasonDROP_SOURCE_RANGE
	DropNoTunnelEndpoint = datapathDropReasonDROP_NO_TUNNEL_ENDPOINT
	DropDSRInvalid       = datapathDropReasonDROP_DSR_INVALID
	DropDSRTooBig        = datapathDropReasonDROP_DSR_TOO_BIG
	DropNoFrontendPort   = datapathDropReasonDROP_NO_FRONTEND_PORT
	DropNoRoute          = datapathDropReasonDROP_NO_ROUTE
	dropReasonMax        = datapathDropReasonDROP_REASON_MAX
)

var dropReasonNames = map[DropReason]string{
	datapathDropReasonDROP_UNKNOWN: "unknown",
	DropNoBackend:                  "no_backend",
	DropBackendMissing:             "backend_missing",
	DropSCTPPortNAT:                "sctp_port_nat",
	DropNATFailed:                  "nat_failed",
	DropRejectFailed:               "reject_failed",
	DropPolicyIngress:              "policy_ingress",
	DropPolicyEgress:               "policy_egress",
	DropSpoofedSource:              "spoofed_source",
	DropUnparseable:                "unparseable",
	DropFragNoFlow:                 "frag_no_flow",
	DropFragOverlap:                "frag_overlap",
	DropSpoofedUplink:              "spoofed_uplink",
	DropSourceRange:                "source_range",
	DropNoTunnelEndpoint:           "no_tunnel_endpoint",
	DropDSRInvalid:                 "dsr_invalid",
	DropDSRTooBig:                  "dsr_too_big",
	DropNoFrontendPort:             "no_frontend_port",
	DropNoRoute:                    "no_route",
}

// Hook is where in the datapath a packet was seen.
type Hook = datapathHook

// Hooks. From a pod's point of view from_pod is egress and to_pod ingress.
const (
	HookFromPod    = datapathHookHOOK_FROM_POD
	HookToPod      = datapathHookHOOK_TO_POD
	HookFromNetdev = datapathHookHOOK_FROM_NETDEV
	HookToNetdev   = datapathHookHOOK_TO_NETDEV
	hookMax        = datapathHookHOOK_MAX
)

var hookNames = map[Hook]string{
	HookFromPod: "from_pod", HookToPod: "to_pod", HookFromNetdev: "from_netdev", HookToNetdev: "to_netdev",
}

// String names the hook as metrics and logs show it.
func (h Hook) String() string {
	if n, ok := hookNames[h]; ok {
		return n
	}
	return fmt.Sprintf("hook_%d", uint32(h))
}

// Direction is the hook's direction as a pod sees it: "egress" from a
// pod, "ingress" into one; the uplink hooks are "from_outside" and
// "to_outside".
func (h Hook) Direction() string {
	switch h {
	case HookFromPod:
		return "egress"
	case HookToPod:
		return "ingress"
	case HookFromNetdev:
		return "from_outside"
	case HookToNetdev:
		return "to_outside"
	}
	return h.String()
}

// String names the reason as metrics and logs show it.
func (r DropReason) String() string {
	if n, ok := dropReasonNames[r]; ok {
		return n
	}
	return fmt.Sprintf("reason_%d", uint32(r))
}

// DropReasonName names a drop reason (FlowEvent.Reason of an EventDrop)
// as the drop metrics do: "policy_ingress", "no_backend", ...; an unknown
// one as "reason_N".
func DropReasonName(r uint16) string { return DropReason(r).String() }

// HookName names a hook (FlowEvent.Hook) as logs do: "from_pod",
// "to_pod", "from_netdev", "to_netdev"; an unknown one as "hook_N".
func HookName(h uint8) string { return Hook(h).String() }

// Flow event types (FlowEvent.Type).
const (
	EventDrop  = uint8(datapathEventTypeEVENT_DROP)
	EventTrace = uint8(datapathEventTypeEVENT_TRACE)
)

// Trace points (FlowEvent.Reason of an EventTrace).
const (
	// TraceService: a new service flow, translated to the backend
	// NatAddr:NatPort (BackendId) of service SvcId, at from_pod or
	// from_netdev. When from_pod also judged it by egress policy, the
	// event carries that too (EventFPolicy).
	TraceService = uint16(datapathTracePointTRACE_SERVICE)
	// TracePolicy: a new flow NetworkPolicy let through and recorded
	// (other than a service flow judged with its TraceService event).
	TracePolicy = uint16(datapathTracePointTRACE_POLICY)
)

// Flow event flags (FlowEvent.Flags).
const (
	// EventFPolicy: Endpoint, Identity, Matched and Dir are set: policy
	// judged the flow (or dropped it).
	EventFPolicy = uint16(datapathEventFlagsEVENT_F_POLICY)
	// EventFIsolated: the endpoint is isolated in Dir, so the flow was
	// judged against its rules: Identity is the remote's identity and, for
	// a trace event, Matched the remote of the rule that let it through
	// (a pod or CIDR identity, IdentityAny, or IdentityHost for the node).
	// Without it the flow was recorded unjudged (Identity, Matched 0).
	EventFIsolated = uint16(datapathEventFlagsEVENT_F_ISOLATED)
	// EventFSocket: a pod's connection translated at its socket (socket
	// LB), reported as from_pod with ifindex 0; the source port is the
	// socket's if it was bound before connect, else 0.
	EventFSocket = uint16(datapathEventFlagsEVENT_F_SOCKET)
)

// TraceName names a trace point: "service", "policy"; an unknown one as
// "trace_N".
func TraceName(t uint16) string {
	switch t {
	case TraceService:
		return "service"
	case TracePolicy:
		return "policy"
	}
	return fmt.Sprintf("trace_%d", t)
}

// Addr converts an address to the datapath's 16-byte form (IPv4-mapped for
// IPv4).
func Addr(a netip.Addr) [16]uint8 {
	return a.As16()
}

// AddrFrom converts a datapath address back, unmapping IPv4.
func AddrFrom(b [16]uint8) netip.Addr {
	return netip.AddrFrom16(b).Unmap()
}

// Port converts a host-order port to the network-order value the maps hold.
func Port(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// PortFrom converts a network-order port from a map to host order.
func PortFrom(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}

// PolicyRule is the key of one allow rule: for endpoint, traffic in
// direction dir with the remote identity remote, protocol proto (0: any,
// and then any port) and ports whose top portBits bits equal port's.
func PolicyRule(endpoint, remote uint32, dir, proto uint8, port uint16, portBits uint8) PolicyKey {
	k := PolicyKey{Endpoint: endpoint, Remote: remote, Dir: dir, Prefixlen: policyPeerBits}
	if proto == 0 {
		return k
	}
	bits := min(portBits, 16)
	k.Proto = proto
	k.Prefixlen = policyProtoBits + uint32(bits)
	if bits > 0 {
		k.Port = Port(port &^ (1<<(16-bits) - 1))
	}
	return k
}

// PrefixFrom converts a CIDRKey back to the prefix CIDR made it from.
func PrefixFrom(k CIDRKey) netip.Prefix {
	a := netip.AddrFrom16(k.Addr)
	bits := int(k.Prefixlen)
	if a.Is4In6() && bits >= 96 {
		return netip.PrefixFrom(a.Unmap(), bits-96)
	}
	return netip.PrefixFrom(a, bits)
}

// CIDR is the key of an ipBlock prefix in the IPv4-mapped address space.
func CIDR(p netip.Prefix) CIDRKey {
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return CIDRKey{Prefixlen: uint32(bits), Addr: Addr(p.Addr())}
}
