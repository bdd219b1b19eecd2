/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* maps.h: every map of the datapath, in one place. Layouts are in
 * sluice.h; the loader resizes them from its Config. */
#ifndef SLUICE_LIB_MAPS_H
#define SLUICE_LIB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "sluice.h"
#include "parse.h"

/* Capacities the loader sets from bpf.Config (bpf.DefaultConfig holds the
 * defaults), so no number here can disagree with it. */
#define SIZED_BY_LOADER 1

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SIZED_BY_LOADER);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_services_v1 SEC(".maps");

/* Backend IDs are allocated per (service, endpoint): removing an endpoint
 * from a service deletes its ID, which is what ends the flows using it. A
 * terminating endpoint keeps its ID (for its flows) while it serves. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SIZED_BY_LOADER);
	__type(key, __u32);
	__type(value, struct backend_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_backends_v2 SEC(".maps");

/* Per service (keyed by svc_value.id) its Maglev lookup table, in the
 * map of its size class (svc_value.flags, enum maglev_class): one value of
 * <size> backend IDs. One hash value per table, rather than a map per
 * service, keeps installs cheap (no map-in-map RCU wait per update) and
 * costs one lookup per new flow; values are allocated only for services
 * that exist (BPF_F_NO_PREALLOC), so the kernel memory is the sum of the
 * tables' sizes. A table replaced while packets read it is swapped whole
 * by the kernel's hash update. Classes above the configured largest size
 * get max_entries 1 from the loader. */
#define MAGLEV_MAP(size)                                                                                     \
	struct {                                                                                             \
		__uint(type, BPF_MAP_TYPE_HASH);                                                             \
		__uint(max_entries, SIZED_BY_LOADER);                                                        \
		__uint(map_flags, BPF_F_NO_PREALLOC);                                                        \
		__uint(key_size, sizeof(__u32));                                                             \
		__uint(value_size, (size) * sizeof(__u32));                                                  \
		__uint(pinning, LIBBPF_PIN_BY_NAME);                                                         \
	} sluice_maglev_##size##_v1 SEC(".maps")

MAGLEV_MAP(251);
MAGLEV_MAP(509);
MAGLEV_MAP(1021);
MAGLEV_MAP(2039);
MAGLEV_MAP(4093);
MAGLEV_MAP(8191);
MAGLEV_MAP(16381);
MAGLEV_MAP(32749);
MAGLEV_MAP(65521);
MAGLEV_MAP(131071);

/* The single-size table map of earlier releases (MAGLEV_CLASS_LEGACY,
 * maglev_size slots). The loader reuses it when pinned, so that the
 * services an earlier agent wrote are served until the first sync moves
 * their tables to the size classes; otherwise it makes a 1-entry map that
 * is not pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SIZED_BY_LOADER);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, SIZED_BY_LOADER * sizeof(__u32));
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_maglev_v1 SEC(".maps");

/* Conntrack, one LRU map for TCP and one for every other protocol, so that
 * a burst of DNS or other datagrams cannot evict TCP connections (and the
 * other way round). Same layout in both; ct_map() picks. */
struct ct_map {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SIZED_BY_LOADER);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
};
struct ct_map sluice_ct_tcp_v1 SEC(".maps");
struct ct_map sluice_ct_other_v1 SEC(".maps");

static __always_inline void *ct_map(__u8 proto)
{
	return proto == IPPROTO_TCP ? (void *)&sluice_ct_tcp_v1 : (void *)&sluice_ct_other_v1;
}

/* loadBalancerSourceRanges of the frontends flagged SVC_F_SOURCE_RANGES,
 * keyed by frontend and client prefix (struct lb_range_key). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SIZED_BY_LOADER);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_range_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_lb_ranges_v1 SEC(".maps");

/* LoadBalancer IPs and ExternalIPs that are none of this node's
 * addresses: they serve Services only, so traffic from outside to one of
 * their ports that no Service serves is dropped (DROP_NO_FRONTEND_PORT)
 * instead of going up the stack, to be routed on or answered by the node. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SIZED_BY_LOADER);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct node_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_frontend_addrs_v1 SEC(".maps");

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* fib_lookup_way asks the kernel's FIB for the way from src to dst
 * (16-byte addresses of one family) for a packet of protocol proto (0:
 * any) that came in on ifindex, and returns its answer
 * (BPF_FIB_LKUP_RET_*): on SUCCESS fib holds the device and the MAC
 * addresses; on NO_NEIGH the device and the next hop. ctx is the
 * program's context (xdp_md or __sk_buff). */
static __always_inline long fib_lookup_way(void *ctx, __u32 ifindex, const __u8 *dst, const __u8 *src,
					   __u8 proto, struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = ifindex;
	fib->l4_protocol = proto; /* for rules on it (ip rule ipproto) */
	if (is_v4_mapped(dst)) {
		fib->family = AF_INET;
		__builtin_memcpy(&fib->ipv4_src, src + 12, 4);
		__builtin_memcpy(&fib->ipv4_dst, dst + 12, 4);
	} else {
		fib->family = AF_INET6;
		__builtin_memcpy(fib->ipv6_src, src, 16);
		__builtin_memcpy(fib->ipv6_dst, dst, 16);
	}
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
}

/* frontend_unserved reports a packet from outside, which no Service entry
 * matched, to one of those addresses that the node would route on: it is
 * dropped. One the FIB delivers locally goes up the stack, as before: the
 * node holds that address too (a VIP kube-vip or keepalived added, a
 * cloud's local route for its load balancer, a health check on it). So
 * does what the FIB would not forward at all. ctx is the program's
 * context (xdp_md or __sk_buff), ifindex the device the packet came in on. */
static __always_inline int frontend_unserved(void *ctx, __u32 ifindex, const struct pkt *p)
{
	if (!bpf_map_lookup_elem(&sluice_frontend_addrs_v1, p->dst))
		return 0;
	struct bpf_fib_lookup fib;
	long rc = fib_lookup_way(ctx, ifindex, p->dst, p->src, p->proto, &fib);

	return rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH;
}

/* Other nodes' pod CIDRs -> the node's address: the tunnel endpoint
 * to_tunnel encapsulates to (routingMode vxlan), and the node xdp_netdev
 * sends a backend's packets on to (loadBalancerMode dsr). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SIZED_BY_LOADER);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cidr_key);
	__type(value, struct tunnel_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_tunnel_v1 SEC(".maps");

/* Direct server return: every node address of the cluster (the senders
 * xdp_netdev accepts sent-on packets from), and this node's own, IPv4 at
 * index 0 and IPv6 at 1 (the outer source of what it sends on; zero:
 * none). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SIZED_BY_LOADER);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct node_key);
	__type(value, struct node_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_nodes_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct node_key);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_node_addrs_v1 SEC(".maps");

/* node_addr is this node's address of family (4 or 6), or 0 before the
 * agent wrote it. */
static __always_inline const __u8 *node_addr(__u8 family)
{
	__u32 idx = family == 4 ? 0 : 1;
	struct node_key *own = bpf_map_lookup_elem(&sluice_node_addrs_v1, &idx);

	if (!own || addr_is_zero(own->addr))
		return 0;
	return own->addr;
}

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SIZED_BY_LOADER);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_affinity_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SIZED_BY_LOADER);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_endpoints_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ENDPOINT_SLOTS);
	__type(key, __u32);
	__type(value, struct endpoint_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_endpoint_slots_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct node_cidr);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_node_cidrs_v1 SEC(".maps");

/* NetworkPolicy: every pod IP of the cluster (and the node's own) to its
 * identity; ipBlock prefixes to CIDR identities; local endpoints; rules. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SIZED_BY_LOADER);
	__type(key, struct endpoint_key);
	__type(value, struct ipcache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ipcache_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SIZED_BY_LOADER);
	__type(key, struct cidr_key);
	__type(value, struct ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_policy_cidrs_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SIZED_BY_LOADER);
	__type(key, struct endpoint_key);
	__type(value, struct policy_endpoint_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_policy_endpoints_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SIZED_BY_LOADER);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_policy_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sock_revnat_key);
	__type(value, struct sock_revnat_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sock_revnat_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SIZED_BY_LOADER);
	__type(key, __u64);
	__type(value, struct sock_netns_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sock_netns_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_REASON_MAX *HOOK_MAX);
	__type(key, __u32);
	__type(value, struct drop_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_drops_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_counters_v1 SEC(".maps");

static __always_inline void count(__u32 counter)
{
	__u64 *c = bpf_map_lookup_elem(&sluice_counters_v1, &counter);

	if (c)
		*c += 1;
}

/* Flow events (struct flow_event) for the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_events_v3 SEC(".maps");

/* The flow events' rate limit, per CPU (GCRA): tat is when the bucket is
 * full again, suppressed what was held back since the last sent event.
 * Not pinned: a new datapath starts with full buckets. */
struct event_bucket {
	__u64 tat;
	__u32 suppressed;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_bucket);
} sluice_event_bucket SEC(".maps");

/* Later fragments of a datagram get its first fragment's verdict and
 * translation. An entry lives for the reassembly timeout. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_frags_v1 SEC(".maps");

/* While no local endpoint is isolated, pod packets skip policy entirely
 * (one array lookup the verifier inlines). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct policy_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_policy_state_v1 SEC(".maps");

/* XDP's cache of bpf_fib_lookup answers (lib/xdp.h), direct-mapped by
 * the destination's hash. */
#define FIB_CACHE_SLOTS 256
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FIB_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct fib_cache_entry);
} sluice_fib_cache SEC(".maps");

/* Lookup keys and values built off the fast path (policy, stale replies)
 * live here rather than on the stack: from_pod's frame plus these would
 * pass the verifier's 512-byte limit. Per CPU, never pinned, no state
 * between packets. */
struct key_scratch {
	struct ct_key ct;
	struct ct_key ct2; /* a key kept while ct serves a callee (lib/masq.h) */
	struct ct_value ctv;
	struct policy_key rule;
	struct cidr_key cidr;
	struct frag_key frag;
	struct frag_value fragv;
	struct pkt inner; /* the packet an ICMP error quotes */
	/* nat_rewrite's old and new address: its frame comes on top of the
	 * hooks' own, which leave little room. */
	__u32 nat_old[4];
	__u32 nat_new[4];
	/* The way on of a packet tc sends on itself (lib/masq.h): a struct
	 * bpf_fib_lookup and a struct bpf_redir_neigh, as bytes (their
	 * anonymous unions have no Go type). */
	__u8 fib[sizeof(struct bpf_fib_lookup)] __attribute__((aligned(8)));
	__u8 nh[sizeof(struct bpf_redir_neigh)] __attribute__((aligned(8)));
	/* The flow event being made (lib/events.h); pending while its type
	 * is set. policy_enforce fills its policy part, the service path its
	 * service part, event_emit the rest. */
	struct flow_event ev;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct key_scratch);
} sluice_key_scratch SEC(".maps");

static __always_inline struct key_scratch *key_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sluice_key_scratch, &zero);
}

#endif
