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
	__be16 port;                 /* service port */
	__u8 proto;                  /* IPPROTO_TCP / UDP / SCTP */
	__u8 scope;                  /* enum svc_scope */
};

struct svc_value {
	__u32 id;               /* index into the Maglev outer map, affinity key */
	__u32 backend_count;    /* usable backends in the table; 0 rejects */
	__u32 affinity_timeout; /* ClientIP affinity in seconds; 0 disables it */
	__u32 flags;            /* enum svc_flags */
};

struct backend_value {
	__u8 addr[SLUICE_ADDR_LEN];
	__be16 port;
	__u8 flags; /* enum backend_flags */
	__u8 pad;
};

struct affinity_key {
	__u8 client[SLUICE_ADDR_LEN];
	__u32 svc_id;
};

struct affinity_value {
	__u64 last_used_ns; /* bpf_ktime_get_ns() of the last connection */
	__u32 backend_id;
	__u32 pad;
};

/* ct_key.dir */
enum ct_dir {
	/* client -> service, as the client sent it (before DNAT). */
	CT_DIR_SERVICE = 0,
	/* backend -> client (or -> hairpin address), as the backend replies. */
	CT_DIR_REPLY = 1,
};

/* ct_value.flags */
enum ct_flags {
	CT_F_ESTABLISHED = 1 << 0, /* traffic seen after the opening packet */
	CT_F_CLOSING = 1 << 1,     /* FIN or RST seen */
	CT_F_HAIRPIN = 1 << 2,     /* client is its own backend: source NATed */
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
	__u32 pad2;
	/* bpf_ktime_get_ns() after which the entry is dead. The datapath
	 * ignores dead entries; the agent's GC deletes them. */
	__u64 expires_ns;
};

/* Socket-level load balancing: what a translated socket talks to, so that
 * replies (recvmsg) and getpeername show the service again. */
struct sock_revnat_key {
	__u64 cookie; /* bpf_get_socket_cookie() of the socket */
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

/* Local pod endpoints, written by the CNI plugin. */
struct endpoint_key {
	__u8 addr[SLUICE_ADDR_LEN];
};

struct endpoint_value {
	__u32 ifindex;  /* host-side veth */
	__u32 identity; /* policy identity of the pod's labels */
	__u8 mac[6];    /* pod-side MAC */
	__u8 host_mac[6];
	__u16 flags;
	__u16 pad;
};

/* Why a packet was dropped or rejected; the index of sluice_drops. */
enum drop_reason {
	DROP_UNKNOWN = 0,
	DROP_NO_BACKEND = 1,       /* service without usable backend: rejected */
	DROP_BACKEND_MISSING = 2,  /* Maglev slot names a backend not in the map */
	DROP_SCTP_PORT_NAT = 3,    /* SCTP with port translation: unsupported */
	DROP_NAT_FAILED = 4,       /* a rewrite helper failed */
	DROP_REJECT_FAILED = 5,    /* could not build the reject reply */
	DROP_REASON_MAX = 64,
};

struct drop_counter {
	__u64 packets;
	__u64 bytes;
};

/* Sent on sluice_events for every dropped or rejected packet. */
struct drop_event {
	__u64 timestamp_ns;
	__u32 ifindex;
	__u16 reason; /* enum drop_reason */
	__u8 proto;
	__u8 hook; /* enum hook */
	__u8 src[SLUICE_ADDR_LEN];
	__u8 dst[SLUICE_ADDR_LEN];
	__be16 sport;
	__be16 dport;
	__u32 svc_id;
};

enum hook {
	HOOK_FROM_POD = 0,
	HOOK_TO_POD = 1,
};

#endif /* SLUICE_H */
