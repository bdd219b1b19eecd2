/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sluice.h: the single source of truth for every map layout shared between
 * the datapath and Go. Go receives these structs through bpf2go -type, so a
 * field change here changes both sides at once. Any change of a pinned map's
 * layout must bump its name suffix (_v1 -> _v2) so that an old pinned map is
 * never reused with a new meaning (see bpf/loader.go).
 *
 * Conventions:
 *  - Addresses are always 16 bytes. IPv4 is stored IPv4-mapped
 *    (::ffff:a.b.c.d), so one key layout serves both families.
 *  - Ports are in network byte order, exactly as on the wire.
 *  - Every struct has explicit padding so C and Go agree on size.
 */
#ifndef SLUICE_H
#define SLUICE_H

#include <linux/types.h>

#define SLUICE_ADDR_LEN 16

/* Service scope: which clients a service entry answers. Pods and host
 * processes use INTERNAL; traffic arriving from outside the node uses
 * EXTERNAL (NodePort/LoadBalancer with externalTrafficPolicy=Local can then
 * list only local backends there). */
enum svc_scope {
	SVC_SCOPE_INTERNAL = 0,
	SVC_SCOPE_EXTERNAL = 1,
};

/* svc_value.flags */
enum svc_flags {
	/* Only backends flagged BACKEND_F_LOCAL may serve (trafficPolicy=Local). */
	SVC_F_LOCAL_ONLY = 1 << 0,
	/* The Maglev table lists serving-but-terminating backends because no
	 * ready backend exists; affinity may then keep a terminating backend. */
	SVC_F_TERMINATING_FALLBACK = 1 << 1,
	/* A LoadBalancer IP restricted by loadBalancerSourceRanges: only
	 * clients in its sluice_lb_ranges_v1 entries may use it. */
	SVC_F_SOURCE_RANGES = 1 << 2,
	/* ... and a node address is in those ranges, so the node's own
	 * sockets (whose source is chosen after connect) may use it, as
	 * kube-proxy lets the node through. */
	SVC_F_SOURCE_RANGES_NODE = 1 << 3,
};

/* Maglev tables come in size classes, one map each
 * (sluice_maglev_<size>_v1), so that a service's table is sized to its
 * backends and the kernel memory follows the tables' sizes. Bits
 * MAGLEV_CLASS_SHIFT.. of svc_value.flags (MAGLEV_CLASS_MASK) name the
 * class of the service's table. Class 0 is the single-size map of
 * earlier releases (sluice_maglev_v1, maglev_size slots), read while an
 * upgrade's first sync moves the tables. */
enum maglev_class {
	MAGLEV_CLASS_LEGACY = 0,
	MAGLEV_CLASS_251 = 1,
	MAGLEV_CLASS_509 = 2,
	MAGLEV_CLASS_1021 = 3,
	MAGLEV_CLASS_2039 = 4,
	MAGLEV_CLASS_4093 = 5,
	MAGLEV_CLASS_8191 = 6,
	MAGLEV_CLASS_16381 = 7,
	MAGLEV_CLASS_32749 = 8,
	MAGLEV_CLASS_65521 = 9,
	MAGLEV_CLASS_131071 = 10,
	MAGLEV_CLASS_SHIFT = 8,
	MAGLEV_CLASS_MASK = 0xf << 8,
};

/* backend_value.flags */
enum backend_flags {
	/* The backend runs on this node. */
	BACKEND_F_LOCAL = 1 << 0,
	/* The endpoint is terminating (serving=true, ready=false). */
	BACKEND_F_TERMINATING = 1 << 1,
};

struct svc_key {
	__u8 addr[SLUICE_ADDR_LEN]; /* service IP (ClusterIP, ExternalIP, ...) */
	__be16 port;		    /* service port */
	__u8 proto;		    /* IPPROTO_TCP / UDP / SCTP */
	__u8 scope;		    /* enum svc_scope */
};

struct svc_value {
	__u32 id;		/* key of its Maglev table, affinity and conntrack */
	__u32 backend_count;	/* usable backends in the table; 0 rejects */
	__u32 affinity_timeout; /* ClientIP affinity in seconds; 0 disables it */
	__u32 flags;		/* enum svc_flags; the Maglev class (enum maglev_class) */
};

/* sluice_backends_v2 value. svc_id names the frontend the backend ID was
 * given for: an ID is per (frontend, endpoint), and whoever holds an ID
 * (a conntrack or affinity entry) checks it still belongs to its service,
 * so a freed and reused ID can never lead to another Service's pod. */
struct backend_value {
	__u8 addr[SLUICE_ADDR_LEN];
	__be16 port;
	__u8 flags; /* enum backend_flags */
	__u8 pad;
	__u32 svc_id;
};

struct affinity_key {
	__u8 client[SLUICE_ADDR_LEN];
	__u32 svc_id;
};

/* sluice_affinity_v2 value: the backend by ID and by address, both
 * checked on use against sluice_backends_v2 (with the key's svc_id). */
struct affinity_value {
	__u64 last_used_ns; /* bpf_ktime_get_ns() of the last connection */
	__u32 backend_id;
	__be16 port;
	__u16 pad;
	__u8 addr[SLUICE_ADDR_LEN];
};

/* ct_key.dir */
enum ct_dir {
	/* client -> service, as the client sent it (before DNAT). */
	CT_DIR_SERVICE = 0,
	/* backend -> client (or -> hairpin address), as the backend replies. */
	CT_DIR_REPLY = 1,
	/* A flow NetworkPolicy let out of (EGRESS) or into (INGRESS) a local
	 * pod, as first seen (after DNAT): its later packets that way and its
	 * replies the other way pass without a policy lookup. Which side made
	 * the entry matters: two pods of one node share the map. */
	CT_DIR_POLICY_EGRESS = 2,
	CT_DIR_POLICY_INGRESS = 3,
	/* XDP masquerade: backend -> this node's address and the flow's
	 * masquerade port, as the backend replies; its value names the client
	 * (nat_addr, nat_port) the reply goes back to. */
	CT_DIR_MASQ = 4,
};

/* ct_value.flags */
enum ct_flags {
	CT_F_ESTABLISHED = 1 << 0, /* traffic seen after the opening packet */
	CT_F_CLOSING = 1 << 1,	   /* FIN or RST seen */
	CT_F_HAIRPIN = 1 << 2,	   /* client is its own backend: source NATed */
	/* A reply was seen. Until then a flow other than TCP lives only
	 * ct_timeout_unreplied_ns, so one-way floods age out fast. */
	CT_F_REPLIED = 1 << 3,
	/* Direct server return: on the node that received the flow, the
	 * forward entry of a flow sent on to the backend's node; on the
	 * backend's node, the reply entry that turns replies back into the
	 * service's. */
	CT_F_DSR = 1 << 4,
	/* XDP masquerade (loadBalancerMode snat with acceleration): the
	 * forward entry of a flow from outside that xdp_netdev sends on to a
	 * remote backend from this node's address and masq_port, where
	 * netfilter's masquerade would otherwise have taken it. */
	CT_F_MASQ = 1 << 5,
};

struct ct_key {
	__u8 src[SLUICE_ADDR_LEN];
	__u8 dst[SLUICE_ADDR_LEN];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir; /* enum ct_dir */
	__u16 pad;
};

struct ct_value {
	/* SERVICE entries: the chosen backend. REPLY entries: the service
	 * address and port that replies are rewritten back to. */
	__u8 nat_addr[SLUICE_ADDR_LEN];
	__be16 nat_port;
	__u8 flags; /* enum ct_flags */
	__u8 pad;
	__u32 backend_id;
	__u32 svc_id;
	__be16 masq_port; /* CT_F_MASQ entries (forward, reply): the flow's source port */
	__u16 pad2;
	/* bpf_ktime_get_ns() after which the entry is dead. The datapath
	 * ignores dead entries; the agent's GC deletes them. */
	__u64 expires_ns;
};

/* Socket-level load balancing: what a translated socket talks to, so that
 * replies (recvmsg) and getpeername show the service again. */
struct sock_revnat_key {
	__u64 cookie;		    /* bpf_get_socket_cookie() of the socket */
	__u8 addr[SLUICE_ADDR_LEN]; /* backend */
	__be16 port;
	__u16 pad;
	__u32 pad2;
};

struct sock_revnat_value {
	__u8 addr[SLUICE_ADDR_LEN]; /* service */
	__be16 port;
	__u16 pad;
};

/* sluice_sock_netns_v1, keyed by a pod's network namespace cookie
 * (bpf_get_netns_cookie): the pods socket-level load balancing serves, and
 * their addresses, the client that ClientIP affinity is keyed on, as the tc
 * path sees it. Written by the agent as the CNI plugin wires each pod. */
enum sock_netns_flags {
	SOCK_NETNS_F_LB = 1 << 0, /* translate at the socket (not opted out) */
};

struct sock_netns_value {
	__u8 addr4[SLUICE_ADDR_LEN]; /* the pod's IPv4 address, v4-mapped; zero: none */
	__u8 addr6[SLUICE_ADDR_LEN]; /* the pod's IPv6 address; zero: none */
	__u32 flags;		     /* enum sock_netns_flags */
	__u32 pad;
};

/* Local pod endpoints, written by the CNI plugin. */
struct endpoint_key {
	__u8 addr[SLUICE_ADDR_LEN];
};

struct endpoint_value {
	__u32 ifindex;	/* host-side veth */
	__u32 identity; /* policy identity of the pod's labels */
	__u8 mac[6];	/* pod-side MAC */
	__u8 host_mac[6];
	__u16 flags;
	__u16 pad;
};

/* sluice_endpoint_slots_v1, indexed by the host veth's ifindex modulo
 * ENDPOINT_SLOTS: the pod's addresses, so that from_pod checks a source
 * with one array lookup. A slot holds one veth (ifindex tells which); a
 * veth whose slot another holds is checked through sluice_endpoints_v1. */
enum endpoint_slots {
	ENDPOINT_SLOTS = 65536,
};

struct endpoint_slot {
	__u32 ifindex;	/* 0: free */
	__u8 addr4[4];	/* 0.0.0.0: none */
	__u8 addr6[16]; /* ::: none */
};

/* sluice_node_cidrs_v1, index 0 for IPv4, 1 for IPv6: this node's pod
 * CIDR of that family. No packet from outside may come from it. */
struct node_cidr {
	__u8 addr[SLUICE_ADDR_LEN];
	__u32 prefixlen; /* in the 128-bit (IPv4-mapped) space; 0: not set */
	__u32 pad;
};

/* Why a packet was dropped or rejected; the index of sluice_drops. */
enum drop_reason {
	DROP_UNKNOWN = 0,
	DROP_NO_BACKEND = 1,	      /* service without usable backend: rejected */
	DROP_BACKEND_MISSING = 2,     /* Maglev slot names a backend not in the map */
	DROP_SCTP_PORT_NAT = 3,	      /* SCTP with port translation: unsupported */
	DROP_NAT_FAILED = 4,	      /* a rewrite helper failed */
	DROP_REJECT_FAILED = 5,	      /* could not build the reject reply */
	DROP_POLICY_INGRESS = 6,      /* NetworkPolicy: not allowed into the pod */
	DROP_POLICY_EGRESS = 7,	      /* NetworkPolicy: not allowed out of the pod */
	DROP_SPOOFED_SOURCE = 8,      /* a pod sent from an address that is not its own */
	DROP_UNPARSEABLE = 9,	      /* an isolated endpoint's packet the parser cannot read */
	DROP_FRAG_NO_FLOW = 10,	      /* an isolated endpoint's later fragment without its first */
	DROP_FRAG_OVERLAP = 11,	      /* a fragment that would overwrite the L4 header */
	DROP_SPOOFED_UPLINK = 12,     /* from outside with a local pod's or the hairpin source */
	DROP_SOURCE_RANGE = 13,	      /* to a LoadBalancer IP from outside its loadBalancerSourceRanges */
	DROP_NO_TUNNEL_ENDPOINT = 14, /* into the overlay to an address of no node's pod CIDR */
	DROP_DSR_INVALID = 15, /* a DSR packet not from a node, or not for a local backend of a service */
	DROP_DSR_TOO_BIG = 16, /* a DSR flow's packet that would not fit the uplink once encapsulated */
	DROP_NO_FRONTEND_PORT = 17, /* from outside to a frontend address's port no Service serves */
	DROP_NO_ROUTE = 18,	    /* a masqueraded flow's packet, translated, with no route onwards */
	DROP_REASON_MAX = 64,
};

struct drop_counter {
	__u64 packets;
	__u64 bytes;
};

/* ---- Flow events ------------------------------------------------------------
 *
 * sluice_events_v3 carries one record type, struct flow_event: a drop event
 * for every dropped or rejected packet, and a trace event when a flow is
 * created (a service flow translated to its backend, or a flow NetworkPolicy
 * recorded). Nothing is sent per established packet. Each CPU sends at most
 * event_rate events per second with bursts of event_burst (lib/config.h);
 * what it holds back is counted (COUNTER_EVENTS_SUPPRESSED) and reported in
 * its next event's suppressed.
 */
enum event_type {
	EVENT_DROP = 1,
	EVENT_TRACE = 2,
};

/* flow_event.reason of EVENT_TRACE */
enum trace_point {
	/* A new service flow, translated to a backend (from_pod,
	 * from_netdev). */
	TRACE_SERVICE = 1,
	/* A new flow judged by NetworkPolicy and allowed (recorded in
	 * conntrack), other than a service flow of the same hook. */
	TRACE_POLICY = 2,
};

/* flow_event.flags */
enum event_flags {
	/* endpoint, identity, matched and dir are set: policy judged or
	 * dropped the flow. */
	EVENT_F_POLICY = 1 << 0,
	/* The endpoint is isolated in dir; without it the flow was recorded
	 * unjudged (identity and matched are then 0). */
	EVENT_F_ISOLATED = 1 << 1,
	/* Translated at the socket (connect, sendmsg) of a pod, not on its
	 * veth: ifindex is 0, the source port the socket's if bound, else 0. */
	EVENT_F_SOCKET = 1 << 2,
};

struct flow_event {
	__u64 timestamp_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u32 ifindex;
	__u8 type;    /* enum event_type */
	__u8 hook;    /* enum hook */
	__u8 proto;   /* IPPROTO_* */
	__u8 dir;     /* EVENT_F_POLICY: enum policy_dir */
	__u16 reason; /* EVENT_DROP: enum drop_reason; EVENT_TRACE: enum trace_point */
	__u16 flags;  /* enum event_flags */
	/* Events this CPU's rate limit held back since its last sent one. */
	__u32 suppressed;
	/* The packet as the hook saw it, before translation. */
	__u8 src[SLUICE_ADDR_LEN];
	__u8 dst[SLUICE_ADDR_LEN];
	__be16 sport;
	__be16 dport;
	__be16 nat_port; /* TRACE_SERVICE: the chosen backend */
	__u16 pad;
	__u8 nat_addr[SLUICE_ADDR_LEN];
	__u32 svc_id; /* service flows and service drops */
	__u32 backend_id;
	__u32 endpoint; /* EVENT_F_POLICY: the local endpoint's policy ID */
	__u32 identity; /* EVENT_F_POLICY: the remote's identity as judged */
	/* TRACE_POLICY and TRACE_SERVICE with EVENT_F_ISOLATED: the remote of
	 * the rule that matched (pod or CIDR identity, IDENTITY_ANY), or
	 * IDENTITY_HOST when the host was let in. */
	__u32 matched;
	__u32 pad2;
};

enum hook {
	HOOK_FROM_POD = 0,
	HOOK_TO_POD = 1,
	HOOK_FROM_NETDEV = 2,
	HOOK_TO_NETDEV = 3,
	HOOK_MAX = 4,
};

/* sluice_counters_v1 (per CPU): events of the datapath that are not drops,
 * for metrics. */
enum counter {
	/* A service flow's reply entry was missing (evicted) at a forward
	 * packet and was made again from the forward entry. */
	COUNTER_CT_REPLY_RESTORED = 0,
	/* A service flow's forward entry was missing at a reply and was made
	 * again from the reply entry. */
	COUNTER_CT_FORWARD_RESTORED = 1,
	/* A new TCP SYN reused the tuple of a closing service flow: the flow
	 * was opened afresh (backend chosen again). */
	COUNTER_CT_REOPENED = 2,
	/* An affinity entry named a backend no longer its service's: ignored. */
	COUNTER_AFFINITY_STALE = 3,
	/* A conntrack or affinity insert failed (map full of entries that
	 * cannot be evicted, or out of memory). */
	COUNTER_CT_INSERT_FAILED = 4,
	/* A flow event the per-CPU rate limit held back. */
	COUNTER_EVENTS_SUPPRESSED = 5,
	/* A flow event lost because the ring was full. */
	COUNTER_EVENTS_LOST = 6,
	/* Direct server return: a packet sent on to the backend's node
	 * (xdp_netdev), one received for a local backend, and a backend's
	 * reply sent straight to the client (to_netdev). */
	COUNTER_DSR_SENT = 7,
	COUNTER_DSR_RECEIVED = 8,
	COUNTER_DSR_REPLIES = 9,
	/* XDP masquerade: a packet from outside sent on to a remote backend
	 * from this node's address, a backend's reply sent back to its
	 * client, and a new flow left to netfilter's masquerade because none
	 * of the ports it tried was free. */
	COUNTER_MASQ_FORWARD = 10,
	COUNTER_MASQ_REPLY = 11,
	COUNTER_MASQ_PORTS_BUSY = 12,
	COUNTER_MAX = 16,
};

/* sluice_drops_v2 is indexed by hook * DROP_REASON_MAX + reason: a counter
 * per reason and direction. */

/* skb->mark from_netdev sets on NodePort/ExternalIP traffic it sends to a
 * backend on another node: the agent's nftables table masquerades such
 * packets to the node's address (the kernel picks the source port), so the
 * reply comes back through this node to be translated back. */
enum mark {
	MARK_SNAT = 0x534c,
	/* A packet from_pod turned around into the pod (hairpin, reject): it
	 * meets to_pod on its way back in, which must pass it untouched. The
	 * mark cannot come from a pod: crossing the veth clears it. */
	MARK_BOUNCED = 0x534d,
};

/* ---- NetworkPolicy ---------------------------------------------------------
 *
 * Identities: numbers for remote peers. Pods have one per (namespace,
 * namespace labels, pod labels); ipBlock prefixes one per set of ipBlocks
 * they fall in. A packet of an isolated endpoint is allowed when a rule for
 * the endpoint, the direction and the remote's pod identity, its CIDR
 * identity or IDENTITY_ANY matches its protocol and port.
 */
enum identity {
	IDENTITY_ANY = 0,   /* in rules: any remote */
	IDENTITY_HOST = 1,  /* this node: always allowed */
	IDENTITY_WORLD = 2, /* in no pod and no ipBlock prefix */
};

/* sluice_ipcache_v1 value: the identity of a pod IP (or the node's own). */
struct ipcache_value {
	__u32 identity;
	__u32 pad;
};

/* sluice_lb_ranges_v1 key: LPM whose prefix covers the frontend (address,
 * port and protocol: LB_RANGE_FRONTEND_BITS), then the client's address,
 * IPv4-mapped: a range of IPv4 length L has prefixlen 160 + 96 + L. One
 * set of entries serves both scopes of a frontend. */
struct lb_range_key {
	__u32 prefixlen;
	__u8 addr[SLUICE_ADDR_LEN];
	__be16 port;
	__u8 proto;
	__u8 pad;
	__u8 client[SLUICE_ADDR_LEN];
};

#define LB_RANGE_FRONTEND_BITS ((SLUICE_ADDR_LEN + 4) * 8)

/* sluice_policy_cidrs_v1 key: LPM over IPv4-mapped addresses (an IPv4
 * prefix of length L has prefixlen 96 + L). */
struct cidr_key {
	__u32 prefixlen;
	__u8 addr[SLUICE_ADDR_LEN];
};

/* The node behind a pod CIDR in the overlay (sluice_tunnel_v1): the outer
 * destination of its encapsulated packets, IPv4-mapped for IPv4. */
struct tunnel_endpoint {
	__u8 addr[SLUICE_ADDR_LEN];
};

/* The cluster's node addresses (sluice_nodes_v1): a packet sent on by
 * direct server return is accepted only from one of them. */
struct node_key {
	__u8 addr[SLUICE_ADDR_LEN];
};

struct node_value {
	__u32 flags; /* reserved */
};

/* Direct server return (xdp_netdev): the packet, its destination already
 * translated to the backend, travels to the backend's node in Geneve (RFC
 * 8926, UDP, protocol type = the inner packet's EtherType) with one option
 * naming the service address the client used, which the backend's node
 * restores on the replies. */
#define DSR_OPT_CLASS 0xfff5 /* Geneve's experimental range */
#define DSR_OPT_TYPE  0x01

struct dsr_opt {
	__be16 opt_class;
	__u8 type;
	__u8 len; /* 4-byte words after this header: 5 */
	__u8 vip[SLUICE_ADDR_LEN];
	__be16 vport;
	__u16 pad;
};

struct geneve_dsr {
	__u8 ver_optlen; /* version 0; option length in 4-byte words: 6 */
	__u8 flags;
	__be16 proto;
	__u8 vni[3];
	__u8 reserved;
	struct dsr_opt opt;
};

enum policy_endpoint_flags {
	POLICY_F_INGRESS_ISOLATED = 1 << 0,
	POLICY_F_EGRESS_ISOLATED = 1 << 1,
};

/* sluice_policy_endpoints_v1 value, keyed by a local pod's address. Pods
 * without an entry are not isolated. */
struct policy_endpoint_value {
	__u32 id;    /* the endpoint's number in policy rules */
	__u32 flags; /* enum policy_endpoint_flags */
};

enum policy_dir {
	POLICY_INGRESS = 0,
	POLICY_EGRESS = 1,
};

/* sluice_policy_v1 key: LPM whose prefix covers endpoint, remote and
 * direction (72 bits), then the protocol (80: 0 protocol bits means any
 * protocol) and the top bits of the port (80 + 16 = 96 for one port). */
struct policy_key {
	__u32 prefixlen;
	__u32 endpoint;
	__u32 remote; /* enum identity or an allocated identity */
	__u8 dir;     /* enum policy_dir */
	__u8 proto;
	__be16 port;
};

struct policy_value {
	__u32 pad;
};

/* sluice_frags_v1: what the first fragment of a datagram decided, for its
 * later fragments, which carry no L4 header. Keyed by the datagram as the
 * later fragments carry it (before any translation). */
struct frag_key {
	__u8 src[SLUICE_ADDR_LEN];
	__u8 dst[SLUICE_ADDR_LEN];
	__u32 id; /* IPv4 identification (zero-extended) or IPv6 fragment ID */
	__u8 proto;
	__u8 hook; /* enum hook: where the decision was taken */
	__u16 pad;
};

enum frag_flags {
	FRAG_F_NAT_DST = 1 << 0,   /* later fragments get nat_addr as destination */
	FRAG_F_NAT_SRC = 1 << 1,   /* later fragments get nat_addr as source */
	FRAG_F_SNAT_MARK = 1 << 2, /* from_netdev: mark for masquerade (MARK_SNAT) */
	/* from_netdev, the XDP masquerade's flows: later fragments are
	 * translated as their flow's entries say, and sent on (lib/masq.h). */
	FRAG_F_MASQ_FWD = 1 << 3,
	FRAG_F_MASQ_REPLY = 1 << 4,
};

/* sluice_fib_cache (per CPU, never pinned): the way on to dst from src,
 * for a packet in on in_ifindex, as bpf_fib_lookup last found it, until
 * expires_ns (lib/xdp.h). */
struct fib_cache_entry {
	__u8 dst[SLUICE_ADDR_LEN];
	__u8 src[SLUICE_ADDR_LEN];
	__u32 in_ifindex;
	__u32 ifindex; /* the device out */
	__u8 dmac[6];  /* the next hop's */
	__u8 smac[6];  /* the device's */
	__u64 expires_ns;
};

struct frag_value {
	__u8 nat_addr[SLUICE_ADDR_LEN];
	__be16 sport; /* the first fragment's ports, for events and metrics */
	__be16 dport;
	__u32 flags; /* enum frag_flags */
	__u64 expires_ns;
};

/* Prefix lengths of a policy_key: endpoint, remote and direction alone
 * (any protocol), with the protocol (any port), and the whole key (one
 * port). */
enum policy_key_bits {
	POLICY_KEY_PEER_BITS = 72,
	POLICY_KEY_PROTO_BITS = 80,
	POLICY_KEY_BITS = 96,
};

/* sluice_policy_state_v1, one slot: while no endpoint is isolated, pod
 * packets skip policy entirely (an array lookup the verifier inlines). */
struct policy_state {
	__u32 isolated_endpoints;
	__u32 pad;
};

#endif /* SLUICE_H */
