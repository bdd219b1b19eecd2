//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The Sluice pod datapath, attached to each pod's host-side veth:
 *   from_pod  tcx ingress (packets the pod sends): service load balancing,
 *             DNAT, conntrack, reject of services without backends, hairpin.
 *   to_pod    tcx egress (packets delivered to the pod): reverse NAT of
 *             replies and of ICMP errors about translated flows.
 *
 * Headers are read with bpf_skb_load_bytes and written with the csum helpers,
 * so non-linear and truncated packets are handled without direct packet
 * bounds juggling; anything the programs cannot parse passes untouched and is
 * left to the kernel's own checks.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sluice.h"

/* linux/icmp.h drags in libc's socket headers; these are all we need. */
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest;
};

char __license[] SEC("license") = "Dual BSD/GPL";

/* Load-time constants, set by the loader on the CollectionSpec. */
volatile const __u32 maglev_size = 16381;
volatile const __u64 ct_timeout_syn_ns = 60ULL * 1000000000ULL;
volatile const __u64 ct_timeout_tcp_ns = 21600ULL * 1000000000ULL;
volatile const __u64 ct_timeout_close_ns = 10ULL * 1000000000ULL;
volatile const __u64 ct_timeout_other_ns = 60ULL * 1000000000ULL;
/* Socket LB translates only sockets of this network namespace (the
 * node's); pods are left to from_pod, whose ClientIP affinity sees the
 * pod's address as kube-proxy's does. 0 translates every namespace. */
volatile const __u64 host_netns_cookie = 0;
/* Source address used when a pod is load-balanced to itself (hairpin). */
volatile const __u8 hairpin_addr4[SLUICE_ADDR_LEN] = {
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 169, 254, 42, 1};
volatile const __u8 hairpin_addr6[SLUICE_ADDR_LEN] = {
	0xfd, 0x73, 0x6c, 0x75, 0x69, 0x63, 0x65, 0, 0, 0, 0, 0, 0, 0, 0, 1};

/* Force the exported types into BTF so bpf2go -type can generate them. */
const struct drop_event *unused_drop_event __attribute__((unused));
const struct endpoint_key *unused_endpoint_key __attribute__((unused));
const struct endpoint_value *unused_endpoint_value __attribute__((unused));
const enum drop_reason *unused_drop_reason __attribute__((unused));
const enum svc_flags *unused_svc_flags __attribute__((unused));
const enum backend_flags *unused_backend_flags __attribute__((unused));
const enum ct_flags *unused_ct_flags __attribute__((unused));
const enum ct_dir *unused_ct_dir __attribute__((unused));
const enum svc_scope *unused_svc_scope __attribute__((unused));
const enum hook *unused_hook __attribute__((unused));
const enum mark *unused_mark __attribute__((unused));
const enum identity *unused_identity __attribute__((unused));
const enum policy_endpoint_flags *unused_policy_endpoint_flags __attribute__((unused));
const enum policy_dir *unused_policy_dir __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_services_v1 SEC(".maps");

/* Backend IDs are allocated per (service, endpoint): removing an endpoint
 * from a service deletes its ID, which is what ends the flows using it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, __u32);
	__type(value, struct backend_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_backends_v1 SEC(".maps");

/* Per service (keyed by svc_value.id) its Maglev lookup table: one value
 * of maglev_size backend IDs. The loader sets value_size to
 * maglev_size * 4. One hash value per table, rather than a map per
 * service, keeps installs cheap (no map-in-map RCU wait per update) and
 * costs one lookup per new flow; values are allocated only for services
 * that exist (BPF_F_NO_PREALLOC). A table replaced while packets read it
 * is swapped whole by the kernel's hash update. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 16381 * sizeof(__u32));
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_maglev_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ct_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_affinity_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_endpoints_v1 SEC(".maps");

/* NetworkPolicy: every pod IP of the cluster (and the node's own) to its
 * identity; ipBlock prefixes to CIDR identities; local endpoints; rules. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct endpoint_key);
	__type(value, struct ipcache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ipcache_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct cidr_key);
	__type(value, struct ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_policy_cidrs_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct endpoint_key);
	__type(value, struct policy_endpoint_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_policy_endpoints_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
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
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_REASON_MAX);
	__type(key, __u32);
	__type(value, struct drop_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_drops_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_events_v1 SEC(".maps");

/* ---- packet parsing ---------------------------------------------------- */

struct pkt {
	__u8 src[SLUICE_ADDR_LEN];
	__u8 dst[SLUICE_ADDR_LEN];
	__be16 sport;
	__be16 dport;
	__u32 l3_off;
	__u32 l4_off;
	__u32 l4_len; /* L4 header + payload, from the IP length fields */
	__u8 family;  /* 4 or 6 */
	__u8 proto;
	__u8 tcp_flags;
	__u8 frag; /* not the first fragment: no L4 header present */
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

static __always_inline void addr_from_v4(__u8 *dst, __be32 v4)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &v4, 4);
}

static __always_inline int addr_eq(const __u8 *a, const volatile __u8 *b)
{
	const __u64 *x = (const __u64 *)a;
	const volatile __u64 *y = (const volatile __u64 *)b;
	return x[0] == y[0] && x[1] == y[1];
}

static __always_inline int has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* Headers deeper than this are not parsed (the packet passes untouched). */
#define PARSE_MAX_OFF 512

/*
 * parse_l3 reads the IP header at off and, when present, the L4 ports, by
 * direct packet access: helper calls cost more than the whole parse. The
 * caller makes sure the headers are in the linear area (parse_pull).
 */
static __always_inline int parse_l3(struct __sk_buff *skb, __u32 off, __u8 family, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (off > PARSE_MAX_OFF)
		return -1;
	p->family = family;
	p->l3_off = off;
	if (family == 4) {
		struct iphdr *ip = data + off;

		if ((void *)(ip + 1) > end)
			return -1;
		if (ip->version != 4 || ip->ihl < 5)
			return -1;
		addr_from_v4(p->src, ip->saddr);
		addr_from_v4(p->dst, ip->daddr);
		p->proto = ip->protocol;
		p->l4_off = off + ip->ihl * 4;
		p->frag = (ip->frag_off & bpf_htons(0x1fff)) != 0;
		__u32 tot = bpf_ntohs(ip->tot_len);
		p->l4_len = tot > ip->ihl * 4 ? tot - ip->ihl * 4 : 0;
	} else {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > end)
			return -1;
		if (ip6->version != 6)
			return -1;
		__builtin_memcpy(p->src, &ip6->saddr, SLUICE_ADDR_LEN);
		__builtin_memcpy(p->dst, &ip6->daddr, SLUICE_ADDR_LEN);
		__u8 next = ip6->nexthdr;
		__u32 l4 = off + sizeof(*ip6);
		__u32 ext_len = 0;
		__u32 payload = bpf_ntohs(ip6->payload_len);

		/* Skip a bounded number of extension headers. */
#pragma unroll
		for (int i = 0; i < 4; i++) {
			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
			    next != IPPROTO_DSTOPTS && next != IPPROTO_FRAGMENT)
				break;
			if (l4 > PARSE_MAX_OFF)
				return -1;
			__u8 *ext = data + l4;
			if ((void *)(ext + 4) > end)
				return -1;
			__u32 len = next == IPPROTO_FRAGMENT ? 8 : (ext[1] + 1) * 8;
			if (next == IPPROTO_FRAGMENT && (*(__be16 *)(ext + 2) & bpf_htons(0xfff8)))
				p->frag = 1;
			next = ext[0];
			l4 += len;
			ext_len += len;
		}
		if (l4 > PARSE_MAX_OFF)
			return -1;
		p->proto = next;
		p->l4_off = l4;
		p->l4_len = payload > ext_len ? payload - ext_len : 0;
	}
	if (!p->frag && has_ports(p->proto)) {
		__u32 l4 = p->l4_off;

		if (l4 > PARSE_MAX_OFF)
			return -1;
		__be16 *ports = data + l4;
		if ((void *)(ports + 2) > end)
			return -1;
		p->sport = ports[0];
		p->dport = ports[1];
	}
	return 0;
}

static __noinline int parse_direct(struct __sk_buff *skb, __u8 family, struct pkt *p)
{
	if (parse_l3(skb, ETH_HLEN, family, p) < 0)
		return -1;
	if (p->proto == IPPROTO_TCP && !p->frag) {
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;
		__u32 off = p->l4_off + 13;

		if (off > PARSE_MAX_OFF)
			return -1;
		__u8 *flags = data + off;
		if ((void *)(flags + 1) > end)
			return -1;
		p->tcp_flags = *flags;
	}
	return 0;
}

/* parse reads the Ethernet, IP and L4 headers of the packet. Headers that
 * are not in the linear area (rare on veth) are pulled in once. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u8 family;

	if (skb->protocol == bpf_htons(ETH_P_IP))
		family = 4;
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		family = 6;
	else
		return -1;
	if (parse_direct(skb, family, p) == 0)
		return 0;
	__u32 linear = skb->data_end - skb->data;
	if (skb->len <= linear)
		return -1; /* truly truncated */
	if (bpf_skb_pull_data(skb, skb->len < 256 ? skb->len : 256) < 0)
		return -1;
	__builtin_memset(p, 0, sizeof(*p));
	return parse_direct(skb, family, p);
}

/* ---- drops and events -------------------------------------------------- */

static __always_inline void record_drop(struct __sk_buff *skb, const struct pkt *p,
					__u16 reason, __u32 svc_id, __u8 hook)
{
	__u32 key = reason;
	struct drop_counter *c = bpf_map_lookup_elem(&sluice_drops_v1, &key);

	if (c) {
		c->packets++;
		c->bytes += skb->len;
	}
	struct drop_event *e = bpf_ringbuf_reserve(&sluice_events_v1, sizeof(*e), 0);
	if (!e)
		return;
	e->timestamp_ns = bpf_ktime_get_ns();
	e->ifindex = skb->ifindex;
	e->reason = reason;
	e->proto = p->proto;
	e->hook = hook;
	__builtin_memcpy(e->src, p->src, SLUICE_ADDR_LEN);
	__builtin_memcpy(e->dst, p->dst, SLUICE_ADDR_LEN);
	e->sport = p->sport;
	e->dport = p->dport;
	e->svc_id = svc_id;
	bpf_ringbuf_submit(e, 0);
}

/* ---- header rewriting -------------------------------------------------- */

static __always_inline int l4_csum_off(const struct pkt *p)
{
	if (p->proto == IPPROTO_TCP)
		return p->l4_off + offsetof(struct tcphdr, check);
	if (p->proto == IPPROTO_UDP)
		return p->l4_off + offsetof(struct udphdr, check);
	return -1; /* SCTP's CRC32c does not cover the IP addresses */
}

static __always_inline __u64 l4_csum_flags(const struct pkt *p)
{
	/* A zero UDP checksum over IPv4 means "none" and must stay zero. */
	return p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/*
 * store_addr writes a new address at addr_off and folds the change into the
 * IPv4 header checksum at l3_csum (if >= 0) and the checksum at l4_csum (if
 * >= 0) using l4_flags (BPF_F_PSEUDO_HDR when the address is part of that
 * checksum's pseudo header).
 */
static __always_inline int store_addr(struct __sk_buff *skb, __u8 family, __u32 addr_off,
				      const __u8 *old, const __u8 *new, int l3_csum,
				      int l4_csum, __u64 l4_flags)
{
	if (family == 4) {
		__be32 o, n;

		__builtin_memcpy(&o, old + 12, 4);
		__builtin_memcpy(&n, new + 12, 4);
		if (o == n)
			return 0;
		if (l3_csum >= 0 && bpf_l3_csum_replace(skb, l3_csum, o, n, 4) < 0)
			return -1;
		if (l4_csum >= 0 && bpf_l4_csum_replace(skb, l4_csum, o, n, l4_flags | 4) < 0)
			return -1;
		return bpf_skb_store_bytes(skb, addr_off, &n, 4, 0);
	}
	__u32 o6[4], n6[4];

	__builtin_memcpy(o6, old, 16);
	__builtin_memcpy(n6, new, 16);
	if (l4_csum >= 0) {
		__s64 diff = bpf_csum_diff(o6, 16, n6, 16, 0);

		if (bpf_l4_csum_replace(skb, l4_csum, 0, diff, l4_flags) < 0)
			return -1;
	}
	return bpf_skb_store_bytes(skb, addr_off, n6, 16, 0);
}

static __always_inline int store_port(struct __sk_buff *skb, __u32 off, __be16 old, __be16 new,
				      int l4_csum, __u64 l4_flags)
{
	if (old == new)
		return 0;
	if (l4_csum >= 0 && bpf_l4_csum_replace(skb, l4_csum, old, new, l4_flags | 2) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, 2, 0);
}

static __always_inline __u32 saddr_off(const struct pkt *p)
{
	return p->l3_off + (p->family == 4 ? offsetof(struct iphdr, saddr)
					   : offsetof(struct ipv6hdr, saddr));
}

static __always_inline __u32 daddr_off(const struct pkt *p)
{
	return p->l3_off + (p->family == 4 ? offsetof(struct iphdr, daddr)
					   : offsetof(struct ipv6hdr, daddr));
}

static __always_inline int ip_csum_off(const struct pkt *p)
{
	return p->family == 4 ? (int)(p->l3_off + offsetof(struct iphdr, check)) : -1;
}

static __always_inline __u32 csum_add32(__u32 sum, __u32 v)
{
	sum += v;
	return sum + (sum < v);
}

/*
 * nat_rewrite replaces the source (is_src) or destination address and port
 * of a parsed TCP/UDP/SCTP packet: the per-packet hot path. Only the L4
 * checksum goes through bpf_l4_csum_replace, which alone knows whether
 * the skb carries a partial checksum (veth offload); the addresses, ports
 * and the IPv4 header checksum (never offloaded) are written directly, as
 * helper calls dominate the cost of the program.
 */
static __noinline int nat_rewrite(struct __sk_buff *skb, struct pkt *p, int is_src,
				  const __u8 *addr, __be16 port)
{
	__u32 o[4], n[4];
	__u8 *cur = is_src ? p->src : p->dst;
	__be16 old_port = is_src ? p->sport : p->dport;
	int csum = l4_csum_off(p);
	__u64 flags = l4_csum_flags(p);
	__u32 words = p->family == 4 ? 1 : 4;
	__u32 first = p->family == 4 ? 3 : 0;
	__u32 diff = 0;

	__builtin_memcpy(o, cur, 16);
	__builtin_memcpy(n, addr, 16);
	for (__u32 i = 0; i < 4; i++) {
		if (i < first || i >= first + words)
			continue;
		diff = csum_add32(diff, ~o[i]);
		diff = csum_add32(diff, n[i]);
	}
	int addr_changed = o[0] != n[0] || o[1] != n[1] || o[2] != n[2] || o[3] != n[3];
	if (csum >= 0 && addr_changed &&
	    bpf_l4_csum_replace(skb, csum, 0, diff, flags | BPF_F_PSEUDO_HDR) < 0)
		return -1;
	if (csum >= 0 && port != old_port &&
	    bpf_l4_csum_replace(skb, csum, old_port, port, flags | 2) < 0)
		return -1;

	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 l4 = p->l4_off;
	if (l4 > PARSE_MAX_OFF)
		return -1;
	__be16 *ports = data + l4;
	if ((void *)(ports + 2) > end)
		return -1;
	if (p->family == 4) {
		struct iphdr *ip = data + ETH_HLEN;

		if ((void *)(ip + 1) > end)
			return -1;
		if (addr_changed) {
			__u32 sum = csum_add32((__u16)~ip->check, diff);

			sum = (sum & 0xffff) + (sum >> 16);
			sum = (sum & 0xffff) + (sum >> 16);
			ip->check = (__u16)~sum;
			if (is_src)
				ip->saddr = n[3];
			else
				ip->daddr = n[3];
		}
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > end)
			return -1;
		if (is_src)
			__builtin_memcpy(&ip6->saddr, n, 16);
		else
			__builtin_memcpy(&ip6->daddr, n, 16);
	}
	ports[is_src ? 0 : 1] = port;
	__builtin_memcpy(cur, addr, 16);
	if (is_src)
		p->sport = port;
	else
		p->dport = port;
	return 0;
}

/* nat_dst rewrites the packet's destination to addr:port. */
static __always_inline int nat_dst(struct __sk_buff *skb, struct pkt *p, const __u8 *addr, __be16 port)
{
	return nat_rewrite(skb, p, 0, addr, port);
}

/* nat_src rewrites the packet's source to addr:port. */
static __always_inline int nat_src(struct __sk_buff *skb, struct pkt *p, const __u8 *addr, __be16 port)
{
	return nat_rewrite(skb, p, 1, addr, port);
}

/* ---- rejecting ----------------------------------------------------------- */

static __always_inline __u16 csum_fold(__s64 sum)
{
	__u64 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* swap_eth turns the frame around: the reply goes back to the sender. */
static __always_inline int swap_eth(struct __sk_buff *skb, struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, eth, sizeof(*eth)) < 0)
		return -1;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return 0;
}

/* bounce sends the frame back out the interface it came in on, turned
 * around at L2: the pod's stack only accepts frames addressed to its MAC. */
static __always_inline int bounce(struct __sk_buff *skb)
{
	struct ethhdr eth;

	if (swap_eth(skb, &eth) < 0 || bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0)
		return TC_ACT_SHOT;
	skb->mark = MARK_BOUNCED;
	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline void fill_ip4(struct iphdr *ip, const struct pkt *p, __u16 len, __u8 proto)
{
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(len);
	ip->id = 0;
	ip->frag_off = bpf_htons(0x4000); /* DF */
	ip->ttl = 64;
	ip->protocol = proto;
	ip->check = 0;
	__builtin_memcpy(&ip->saddr, p->dst + 12, 4);
	__builtin_memcpy(&ip->daddr, p->src + 12, 4);
	ip->check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
}

static __always_inline void fill_ip6(struct ipv6hdr *ip6, const struct pkt *p, __u16 payload, __u8 proto)
{
	__builtin_memset(ip6, 0, sizeof(*ip6));
	ip6->version = 6;
	ip6->payload_len = bpf_htons(payload);
	ip6->nexthdr = proto;
	ip6->hop_limit = 64;
	__builtin_memcpy(&ip6->saddr, p->dst, 16);
	__builtin_memcpy(&ip6->daddr, p->src, 16);
}

/* pseudo_sum sums the pseudo header of a reply from p->dst to p->src. */
static __always_inline __s64 pseudo_sum(const struct pkt *p, __u32 len, __u8 proto)
{
	if (p->family == 4) {
		struct {
			__u8 saddr[4];
			__u8 daddr[4];
			__u8 zero;
			__u8 proto;
			__be16 len;
		} ph = {};

		__builtin_memcpy(ph.saddr, p->dst + 12, 4);
		__builtin_memcpy(ph.daddr, p->src + 12, 4);
		ph.proto = proto;
		ph.len = bpf_htons(len);
		return bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	}
	struct {
		__u8 saddr[16];
		__u8 daddr[16];
		__be32 len;
		__u8 zero[3];
		__u8 next;
	} ph6 = {};

	__builtin_memcpy(ph6.saddr, p->dst, 16);
	__builtin_memcpy(ph6.daddr, p->src, 16);
	ph6.len = bpf_htonl(len);
	ph6.next = proto;
	return bpf_csum_diff(0, 0, (__be32 *)&ph6, sizeof(ph6), 0);
}

static __always_inline int store_reply_l2_l4(struct __sk_buff *skb, const struct ethhdr *eth,
					     const void *l4, __u32 l4_len, __u32 l4_off)
{
	if (bpf_skb_store_bytes(skb, 0, eth, sizeof(*eth), 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, l4_off, l4, l4_len, 0);
}

/* reject_tcp answers a TCP segment with a RST from the service address,
 * as RFC 9293 section 3.10.7.1 describes for a closed port. */
static __always_inline int reject_tcp(struct __sk_buff *skb, const struct pkt *p)
{
	struct tcphdr in, rst = {};

	if (bpf_skb_load_bytes(skb, p->l4_off, &in, sizeof(in)) < 0)
		return -1;
	rst.source = in.dest;
	rst.dest = in.source;
	rst.doff = 5;
	rst.rst = 1;
	if (in.ack) {
		rst.seq = in.ack_seq;
	} else {
		__u32 seg = p->l4_len > in.doff * 4u ? p->l4_len - in.doff * 4u : 0;

		rst.ack = 1;
		rst.ack_seq = bpf_htonl(bpf_ntohl(in.seq) + seg + in.syn + in.fin);
	}
	__s64 sum = pseudo_sum(p, sizeof(rst), IPPROTO_TCP);
	rst.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&rst, sizeof(rst), sum));

	struct ethhdr eth;
	if (swap_eth(skb, &eth) < 0)
		return -1;
	if (p->family == 4) {
		struct iphdr ip;

		fill_ip4(&ip, p, sizeof(ip) + sizeof(rst), IPPROTO_TCP);
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(ip) + sizeof(rst), 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN, &ip, sizeof(ip), 0) < 0)
			return -1;
		return store_reply_l2_l4(skb, &eth, &rst, sizeof(rst), ETH_HLEN + sizeof(ip));
	}
	struct ipv6hdr ip6;

	fill_ip6(&ip6, p, sizeof(rst), IPPROTO_TCP);
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(ip6) + sizeof(rst), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6), 0) < 0)
		return -1;
	return store_reply_l2_l4(skb, &eth, &rst, sizeof(rst), ETH_HLEN + sizeof(ip6));
}

#define ICMP_QUOTE_MAX 128

/* reject_unreach answers a UDP or SCTP packet with ICMP(v6) port
 * unreachable from the service address, quoting the offending packet's IP
 * header(s) and first 8 bytes of L4 like the kernel's own icmp_send. */
static __always_inline int reject_unreach(struct __sk_buff *skb, const struct pkt *p)
{
	__u32 quote = p->l4_off - p->l3_off + 8;
	__u8 buf[ICMP_QUOTE_MAX] = {};
	struct ethhdr eth;

	if (quote < 28 || quote > ICMP_QUOTE_MAX || (quote & 3))
		return -1;
	/* Re-derive the length in one register the verifier can bound:
	 * clang otherwise passes a copy taken before the checks. */
	__u64 len = quote - 4;
	asm volatile("%0 &= 0x7c" : "+r"(len));
	if (bpf_skb_load_bytes(skb, p->l3_off, buf, len + 4) < 0 || swap_eth(skb, &eth) < 0)
		return -1;
	/* ICMPv6 sums a pseudo header too. Zero bytes beyond the quote add
	 * nothing, so the whole fixed-size buffer can be summed. */
	__u32 seed = p->family == 6 ? (__u32)pseudo_sum(p, 8 + quote, IPPROTO_ICMPV6) : 0;
	__u32 sum = bpf_csum_diff(0, 0, (__be32 *)buf, sizeof(buf), seed);

	if (p->family == 4) {
		struct {
			struct iphdr ip;
			struct icmphdr icmp;
		} hdr = {};

		fill_ip4(&hdr.ip, p, sizeof(hdr) + quote, IPPROTO_ICMP);
		hdr.icmp.type = ICMP_DEST_UNREACH;
		hdr.icmp.code = ICMP_PORT_UNREACH;
		hdr.icmp.checksum = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&hdr.icmp,
							    sizeof(hdr.icmp), sum));
		if (bpf_skb_change_tail(skb, ETH_HLEN + quote, 0) < 0 ||
		    bpf_skb_adjust_room(skb, sizeof(hdr), BPF_ADJ_ROOM_MAC, 0) < 0 ||
		    bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0)
			return -1;
		return bpf_skb_store_bytes(skb, ETH_HLEN, &hdr, sizeof(hdr), 0);
	}
	struct {
		struct ipv6hdr ip6;
		struct icmp6hdr icmp6;
	} hdr6 = {};

	fill_ip6(&hdr6.ip6, p, sizeof(hdr6.icmp6) + quote, IPPROTO_ICMPV6);
	hdr6.icmp6.icmp6_type = ICMPV6_DEST_UNREACH;
	hdr6.icmp6.icmp6_code = ICMPV6_PORT_UNREACH;
	hdr6.icmp6.icmp6_cksum = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&hdr6.icmp6,
							 sizeof(hdr6.icmp6), sum));
	if (bpf_skb_change_tail(skb, ETH_HLEN + quote, 0) < 0 ||
	    bpf_skb_adjust_room(skb, sizeof(hdr6), BPF_ADJ_ROOM_MAC, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &hdr6, sizeof(hdr6), 0);
}

/* reject refuses a packet for a service without usable backends the way
 * kube-proxy does, and sends the answer straight back into the pod. */
static __always_inline int reject(struct __sk_buff *skb, const struct pkt *p, __u32 svc_id, __u8 hook)
{
	record_drop(skb, p, DROP_NO_BACKEND, svc_id, hook);
	int err = p->proto == IPPROTO_TCP ? reject_tcp(skb, p) : reject_unreach(skb, p);

	if (err < 0) {
		record_drop(skb, p, DROP_REJECT_FAILED, svc_id, hook);
		return TC_ACT_SHOT;
	}
	skb->mark = MARK_BOUNCED;
	return bpf_redirect(skb->ifindex, 0);
}

/* ---- conntrack ----------------------------------------------------------- */

/* ct_update folds the packet's TCP flags into the entry's state and returns
 * its new lifetime. */
static __always_inline __u64 ct_update(const struct pkt *p, __u8 *flags)
{
	if (p->proto != IPPROTO_TCP)
		return ct_timeout_other_ns;
	if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		*flags |= CT_F_CLOSING;
	else if (!(p->tcp_flags & TCP_FLAG_SYN))
		*flags |= CT_F_ESTABLISHED;
	if (*flags & CT_F_CLOSING)
		return ct_timeout_close_ns;
	if (*flags & CT_F_ESTABLISHED)
		return ct_timeout_tcp_ns;
	return ct_timeout_syn_ns;
}

/* ct_refresh extends a live entry. Writes are skipped unless the state
 * changes or a second has passed, to keep the entry's cache line clean. */
static __always_inline void ct_refresh(struct ct_value *ct, const struct pkt *p, __u64 now)
{
	__u8 flags = ct->flags;
	__u64 expires = now + ct_update(p, &flags);

	if (flags != ct->flags)
		ct->flags = flags;
	else if (expires < ct->expires_ns + 1000000000ULL && expires >= ct->expires_ns)
		return;
	ct->expires_ns = expires;
}

/* ---- load balancing ------------------------------------------------------ */

static __always_inline __u32 rotl32(__u32 x, __u32 r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 hash_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = rotl32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = rotl32(h, 13);
	return h * 5 + 0xe6546b64;
}

/* flow_hash is murmur3 over the client's address, the ports and protocol. */
static __always_inline __u32 flow_hash(const struct pkt *p)
{
	__u32 w[4], h = 0x736c7563;

	__builtin_memcpy(w, p->src, 16);
	h = hash_mix(h, w[0]);
	h = hash_mix(h, w[1]);
	h = hash_mix(h, w[2]);
	h = hash_mix(h, w[3]);
	h = hash_mix(h, ((__u32)p->sport << 16) | p->dport);
	h = hash_mix(h, p->proto);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline int backend_usable(const struct svc_value *svc, const struct backend_value *be)
{
	if ((svc->flags & SVC_F_LOCAL_ONLY) && !(be->flags & BACKEND_F_LOCAL))
		return 0;
	if ((be->flags & BACKEND_F_TERMINATING) && !(svc->flags & SVC_F_TERMINATING_FALLBACK))
		return 0;
	return 1;
}

static __always_inline struct backend_value *maglev_pick(const struct svc_value *svc,
							 const struct pkt *p, __u32 *id)
{
	__u32 svc_id = svc->id;
	__u32 *table = bpf_map_lookup_elem(&sluice_maglev_v1, &svc_id);

	if (!table || maglev_size == 0)
		return 0;
	__u32 slot = flow_hash(p) % maglev_size;
	if (slot >= maglev_size) /* for the verifier: slot indexes the value */
		return 0;
	__u32 *bid = &table[slot];
	*id = *bid;
	return bpf_map_lookup_elem(&sluice_backends_v1, bid);
}

/* select_backend picks the backend for a new flow: the client's affinity
 * backend while it is fresh and still usable, otherwise the Maglev slot. */
static __always_inline struct backend_value *select_backend(const struct svc_value *svc,
							    const struct pkt *p, __u64 now,
							    __u32 *id)
{
	struct affinity_key ak = {};
	struct backend_value *be;

	if (svc->affinity_timeout) {
		__builtin_memcpy(ak.client, p->src, SLUICE_ADDR_LEN);
		ak.svc_id = svc->id;
		struct affinity_value *av = bpf_map_lookup_elem(&sluice_affinity_v1, &ak);

		if (av && now - av->last_used_ns <= (__u64)svc->affinity_timeout * 1000000000ULL) {
			be = bpf_map_lookup_elem(&sluice_backends_v1, &av->backend_id);
			if (be && backend_usable(svc, be)) {
				av->last_used_ns = now;
				*id = av->backend_id;
				return be;
			}
		}
	}
	be = maglev_pick(svc, p, id);
	if (be && svc->affinity_timeout) {
		struct affinity_value nv = {.last_used_ns = now, .backend_id = *id};

		bpf_map_update_elem(&sluice_affinity_v1, &ak, &nv, BPF_ANY);
	}
	return be;
}

/* ct_create records both directions of a new service flow. */
static __always_inline void ct_create(const struct ct_key *fwd, const struct pkt *p,
				      const struct svc_value *svc, const struct backend_value *be,
				      __u32 backend_id, __u8 hairpin, __u64 now)
{
	struct ct_value v = {};
	struct ct_key rev = {};

	v.expires_ns = now + ct_update(p, &v.flags);
	v.backend_id = backend_id;
	v.svc_id = svc->id;
	if (hairpin)
		v.flags |= CT_F_HAIRPIN;
	__builtin_memcpy(v.nat_addr, be->addr, SLUICE_ADDR_LEN);
	v.nat_port = be->port;
	bpf_map_update_elem(&sluice_ct_v1, fwd, &v, BPF_ANY);

	/* The reply comes from the backend to the client, or to the hairpin
	 * address when the client is its own backend. */
	__builtin_memcpy(rev.src, be->addr, SLUICE_ADDR_LEN);
	if (hairpin) {
		if (p->family == 4)
			__builtin_memcpy(rev.dst, (const void *)hairpin_addr4, SLUICE_ADDR_LEN);
		else
			__builtin_memcpy(rev.dst, (const void *)hairpin_addr6, SLUICE_ADDR_LEN);
	} else {
		__builtin_memcpy(rev.dst, p->src, SLUICE_ADDR_LEN);
	}
	rev.sport = be->port;
	rev.dport = p->sport;
	rev.proto = p->proto;
	rev.dir = CT_DIR_REPLY;
	__builtin_memcpy(v.nat_addr, p->dst, SLUICE_ADDR_LEN);
	v.nat_port = p->dport;
	bpf_map_update_elem(&sluice_ct_v1, &rev, &v, BPF_ANY);
}

/* ---- NetworkPolicy ---------------------------------------------------------
 *
 * Judged at the pod's veth: egress in from_pod (after DNAT, so against the
 * chosen backend), ingress in to_pod (with the real client address, since
 * DNAT happened on the client's node). A flow let through is recorded in
 * conntrack (CT_DIR_POLICY_EGRESS/INGRESS) so its later packets and its
 * replies pass unjudged, in both directions, while policies change. Traffic without
 * ports (ICMP) and non-first fragments are not judged.
 */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct policy_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_policy_state_v1 SEC(".maps");

static __always_inline int policy_active(void)
{
	__u32 zero = 0;
	struct policy_state *st = bpf_map_lookup_elem(&sluice_policy_state_v1, &zero);

	return st && st->isolated_endpoints;
}

/* Keys of lookups off the fast path are built here, not on the stack:
 * from_pod's frame plus more keys would pass the verifier's 512-byte
 * limit. */
struct policy_scratch {
	struct ct_key ct;
	struct ct_value ctv;
	struct policy_key rule;
	struct cidr_key cidr;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct policy_scratch);
} sluice_policy_scratch SEC(".maps");

/* rule_matches looks up the endpoint's rules for one remote identity: the
 * LPM finds the most specific protocol/port entry, wildcards included. */
static __always_inline int rule_matches(struct policy_scratch *s, __u32 endpoint, __u32 remote, __u8 dir,
					const struct pkt *p)
{
	s->rule.prefixlen = POLICY_KEY_BITS;
	s->rule.endpoint = endpoint;
	s->rule.remote = remote;
	s->rule.dir = dir;
	s->rule.proto = p->proto;
	s->rule.port = p->dport;
	return bpf_map_lookup_elem(&sluice_policy_v1, &s->rule) != 0;
}

/* policy_allows decides a new flow of an isolated direction: the remote's
 * pod identity, its CIDR identity (or world) and "any remote" are tried. */
static __always_inline int policy_allows(struct policy_scratch *s, __u32 endpoint, __u8 dir, const __u8 *remote,
					 const struct pkt *p)
{
	struct ipcache_value *pod = bpf_map_lookup_elem(&sluice_ipcache_v1, remote);

	if (pod) {
		if (pod->identity == IDENTITY_HOST)
			return 1; /* kubelet probes and the node's own traffic */
		if (rule_matches(s, endpoint, pod->identity, dir, p))
			return 1;
	}
	s->cidr.prefixlen = 128;
	__builtin_memcpy(s->cidr.addr, remote, SLUICE_ADDR_LEN);
	struct ipcache_value *cidr = bpf_map_lookup_elem(&sluice_policy_cidrs_v1, &s->cidr);
	if (rule_matches(s, endpoint, cidr ? cidr->identity : IDENTITY_WORLD, dir, p))
		return 1;
	return rule_matches(s, endpoint, IDENTITY_ANY, dir, p);
}

static __always_inline void ct_key_of(struct ct_key *k, const struct pkt *p, int reversed, __u8 ct_dir)
{
	__builtin_memcpy(k->src, reversed ? p->dst : p->src, SLUICE_ADDR_LEN);
	__builtin_memcpy(k->dst, reversed ? p->src : p->dst, SLUICE_ADDR_LEN);
	k->sport = reversed ? p->dport : p->sport;
	k->dport = reversed ? p->sport : p->dport;
	k->proto = p->proto;
	k->dir = ct_dir;
	k->pad = 0;
}

/* policy_enforce judges the packet for the local endpoint at local (the
 * source for egress, the destination for ingress). It returns TC_ACT_OK
 * or TC_ACT_SHOT, counting and reporting a drop. Not inlined, so its few
 * locals do not grow the callers' frames. */
static __noinline int policy_enforce(struct __sk_buff *skb, const struct pkt *p, __u8 dir, __u32 svc_id)
{
	const __u8 *local = dir == POLICY_EGRESS ? p->src : p->dst;
	const __u8 *remote = dir == POLICY_EGRESS ? p->dst : p->src;
	struct policy_endpoint_value *ep = bpf_map_lookup_elem(&sluice_policy_endpoints_v1, local);

	if (!ep || !(ep->flags & (POLICY_F_INGRESS_ISOLATED | POLICY_F_EGRESS_ISOLATED)))
		return TC_ACT_OK;
	__u32 zero = 0;
	struct policy_scratch *s = bpf_map_lookup_elem(&sluice_policy_scratch, &zero);
	if (!s)
		return TC_ACT_SHOT; /* cannot happen: a one-slot per-CPU array */

	/* A reply to a flow this endpoint let through the other way, or the
	 * next packet of one it let through this way. */
	__u8 this_way = dir == POLICY_EGRESS ? CT_DIR_POLICY_EGRESS : CT_DIR_POLICY_INGRESS;
	__u8 other_way = dir == POLICY_EGRESS ? CT_DIR_POLICY_INGRESS : CT_DIR_POLICY_EGRESS;
	__u64 now = bpf_ktime_get_ns();
	ct_key_of(&s->ct, p, 1, other_way);
	struct ct_value *ct = bpf_map_lookup_elem(&sluice_ct_v1, &s->ct);
	if (!ct || ct->expires_ns <= now) {
		ct_key_of(&s->ct, p, 0, this_way);
		ct = bpf_map_lookup_elem(&sluice_ct_v1, &s->ct);
	}
	if (ct && ct->expires_ns > now) {
		ct_refresh(ct, p, now);
		return TC_ACT_OK;
	}

	/* A TCP packet without SYN and without an entry belongs to a
	 * connection opened before the pod became isolated (or before the
	 * agent restarted): pick it up, as nf_conntrack does. Such a packet
	 * cannot open a connection; only a SYN can, and it is judged. */
	int midstream = p->proto == IPPROTO_TCP && !(p->tcp_flags & TCP_FLAG_SYN);
	__u32 isolated = dir == POLICY_EGRESS ? POLICY_F_EGRESS_ISOLATED : POLICY_F_INGRESS_ISOLATED;
	if ((ep->flags & isolated) && !midstream && !policy_allows(s, ep->id, dir, remote, p)) {
		record_drop(skb, p, dir == POLICY_EGRESS ? DROP_POLICY_EGRESS : DROP_POLICY_INGRESS, ep->id,
			    dir == POLICY_EGRESS ? HOOK_FROM_POD : HOOK_TO_POD);
		return TC_ACT_SHOT;
	}
	/* Record the flow (s->ct is its own direction now) so its replies pass
	 * even through the other, also isolated, direction of this endpoint. */
	__u8 flags = 0;
	__builtin_memset(&s->ctv, 0, sizeof(s->ctv));
	s->ctv.svc_id = svc_id;
	s->ctv.expires_ns = now + ct_update(p, &flags);
	s->ctv.flags = flags;
	bpf_map_update_elem(&sluice_ct_v1, &s->ct, &s->ctv, BPF_ANY);
	return TC_ACT_OK;
}

/* lb_service load-balances a packet to a service, from a pod (from_pod) or
 * from outside the node (from_netdev). */
/* forget_stale_reply: a pod opens a connection straight to an address and
 * port that an earlier service flow from the same client port was
 * translated to. The earlier flow's reply entry would rewrite this
 * connection's replies to come from the service, so it goes: a new SYN
 * means the old flow on this 4-tuple is over. */
static __noinline void forget_stale_reply(const struct pkt *p)
{
	__u32 zero = 0;
	struct policy_scratch *s = bpf_map_lookup_elem(&sluice_policy_scratch, &zero);

	if (!s)
		return;
	ct_key_of(&s->ct, p, 1, CT_DIR_REPLY);
	bpf_map_delete_elem(&sluice_ct_v1, &s->ct);
}

static __always_inline int lb_service(struct __sk_buff *skb, struct pkt *p, const struct svc_value *svc, __u8 hook)
{
	struct ct_key fwd = {};
	struct backend_value *be = 0;
	__u32 backend_id = 0;
	__u8 hairpin = 0;
	__u64 now = bpf_ktime_get_ns();

	__builtin_memcpy(fwd.src, p->src, SLUICE_ADDR_LEN);
	__builtin_memcpy(fwd.dst, p->dst, SLUICE_ADDR_LEN);
	fwd.sport = p->sport;
	fwd.dport = p->dport;
	fwd.proto = p->proto;
	fwd.dir = CT_DIR_SERVICE;

	/* A live flow keeps its backend for as long as that backend exists,
	 * whatever happened to the service's backend set since. */
	struct ct_value *ct = bpf_map_lookup_elem(&sluice_ct_v1, &fwd);
	if (ct && ct->expires_ns > now && ct->svc_id == svc->id) {
		be = bpf_map_lookup_elem(&sluice_backends_v1, &ct->backend_id);
		if (be && addr_eq(be->addr, ct->nat_addr) && be->port == ct->nat_port) {
			ct_refresh(ct, p, now);
			hairpin = ct->flags & CT_F_HAIRPIN;
			goto nat;
		}
	}

	/* From outside, only a SYN opens a TCP flow: any other packet without
	 * an entry (such as a reply to a masqueraded flow whose port happens
	 * to be a NodePort) is not ours. */
	if (hook == HOOK_FROM_NETDEV && p->proto == IPPROTO_TCP &&
	    (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
		return TC_ACT_OK;
	if (svc->backend_count == 0)
		return reject(skb, p, svc->id, hook);
	be = select_backend(svc, p, now, &backend_id);
	if (!be) {
		record_drop(skb, p, DROP_BACKEND_MISSING, svc->id, hook);
		return TC_ACT_SHOT;
	}
	/* Only a pod can be its own backend; from outside, a backend with the
	 * client's address is a hostNetwork pod, reached via masquerade. */
	hairpin = hook == HOOK_FROM_POD && addr_eq(be->addr, p->src);
	/* Egress policy judges the backend the flow will go to: p is pointed
	 * at it for the check (a copy would not fit the stack), then back at
	 * the service, which fwd still holds. */
	__builtin_memcpy(p->dst, be->addr, SLUICE_ADDR_LEN);
	p->dport = be->port;
	if (policy_active() && policy_enforce(skb, p, POLICY_EGRESS, svc->id) != TC_ACT_OK)
		return TC_ACT_SHOT;
	__builtin_memcpy(p->dst, fwd.dst, SLUICE_ADDR_LEN);
	p->dport = fwd.dport;
	ct_create(&fwd, p, svc, be, backend_id, hairpin, now);

nat:
	if (p->proto == IPPROTO_SCTP && be->port != p->dport) {
		record_drop(skb, p, DROP_SCTP_PORT_NAT, svc->id, hook);
		return TC_ACT_SHOT;
	}
	struct pkt orig = *p;
	if (nat_dst(skb, p, be->addr, be->port) < 0)
		goto fail;
	if (hook == HOOK_FROM_NETDEV && !(be->flags & BACKEND_F_LOCAL))
		skb->mark = MARK_SNAT;
	if (!hairpin)
		return TC_ACT_OK;
	/* The pod talks to itself: give it a source it does not own, or its
	 * stack would drop the packet as a martian and answer itself locally. */
	if (nat_src(skb, p, p->family == 4 ? (const __u8 *)hairpin_addr4
					   : (const __u8 *)hairpin_addr6, p->sport) < 0)
		goto fail;
	return bounce(skb);
fail:
	record_drop(skb, &orig, DROP_NAT_FAILED, svc->id, hook);
	return TC_ACT_SHOT;
}

/* hairpin_reply turns a pod's reply to the hairpin address into the reply
 * from the service and sends it straight back into the pod. */
static __always_inline int hairpin_reply(struct __sk_buff *skb, struct pkt *p)
{
	struct ct_key rk = {};

	__builtin_memcpy(rk.src, p->src, SLUICE_ADDR_LEN);
	__builtin_memcpy(rk.dst, p->dst, SLUICE_ADDR_LEN);
	rk.sport = p->sport;
	rk.dport = p->dport;
	rk.proto = p->proto;
	rk.dir = CT_DIR_REPLY;
	struct ct_value *ct = bpf_map_lookup_elem(&sluice_ct_v1, &rk);
	__u64 now = bpf_ktime_get_ns();
	if (!ct || ct->expires_ns <= now || !(ct->flags & CT_F_HAIRPIN))
		return TC_ACT_OK;
	ct_refresh(ct, p, now);

	__u8 client[SLUICE_ADDR_LEN];
	__u8 vip[SLUICE_ADDR_LEN];
	__be16 vport = ct->nat_port;
	struct pkt orig = *p;

	__builtin_memcpy(client, p->src, SLUICE_ADDR_LEN);
	__builtin_memcpy(vip, ct->nat_addr, SLUICE_ADDR_LEN);
	if (nat_dst(skb, p, client, p->dport) < 0 || nat_src(skb, p, vip, vport) < 0) {
		record_drop(skb, &orig, DROP_NAT_FAILED, ct->svc_id, HOOK_FROM_POD);
		return TC_ACT_SHOT;
	}
	return bounce(skb);
}

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (parse(skb, &p) < 0 || p.frag || !has_ports(p.proto))
		return TC_ACT_OK;
	if (addr_eq(p.dst, p.family == 4 ? hairpin_addr4 : hairpin_addr6))
		return hairpin_reply(skb, &p);
	/* Under policy a remote's address is its identity: a pod may send only
	 * from its own addresses (the CNI recorded which veth has them). */
	if (policy_active()) {
		struct endpoint_value *self = bpf_map_lookup_elem(&sluice_endpoints_v1, p.src);

		if (!self || self->ifindex != skb->ifindex) {
			record_drop(skb, &p, DROP_SPOOFED_SOURCE, 0, HOOK_FROM_POD);
			return TC_ACT_SHOT;
		}
	}

	struct svc_key key = {};
	__builtin_memcpy(key.addr, p.dst, SLUICE_ADDR_LEN);
	key.port = p.dport;
	key.proto = p.proto;
	key.scope = SVC_SCOPE_INTERNAL;
	struct svc_value *svc = bpf_map_lookup_elem(&sluice_services_v1, &key);
	if (!svc) {
		if (p.proto == IPPROTO_TCP && (p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			forget_stale_reply(&p);
		return policy_active() ? policy_enforce(skb, &p, POLICY_EGRESS, 0) : TC_ACT_OK;
	}
	return lb_service(skb, &p, svc, HOOK_FROM_POD);
}

/* ---- reverse NAT ----------------------------------------------------------- */

static __always_inline int is_icmp_error(const struct pkt *p, __u8 type)
{
	if (p->family == 4)
		return p->proto == IPPROTO_ICMP &&
		       (type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
			type == ICMP_PARAMETERPROB);
	return p->proto == IPPROTO_ICMPV6 && type >= ICMPV6_DEST_UNREACH &&
	       type <= ICMPV6_PARAMPROB;
}

/*
 * icmp_error_revnat translates an ICMP error about a service flow: the quoted
 * packet went from the client to the backend, and the client only knows it
 * as going to the service. The quoted destination becomes the service
 * address and port again, and so does the outer source when the backend
 * itself sent the error. The inner L4 checksum is left alone (it is
 * truncated and no stack checks it); the ICMP and IP checksums are kept
 * exact.
 */
static __always_inline int icmp_error_revnat(struct __sk_buff *skb, struct pkt *p)
{
	__u8 type;

	if (p->frag || bpf_skb_load_bytes(skb, p->l4_off, &type, 1) < 0 || !is_icmp_error(p, type))
		return TC_ACT_OK;

	struct pkt in = {};
	if (parse_l3(skb, p->l4_off + 8, p->family, &in) < 0 || in.frag || !has_ports(in.proto))
		return TC_ACT_OK;

	struct ct_key rk = {};
	__builtin_memcpy(rk.src, in.dst, SLUICE_ADDR_LEN);
	__builtin_memcpy(rk.dst, in.src, SLUICE_ADDR_LEN);
	rk.sport = in.dport;
	rk.dport = in.sport;
	rk.proto = in.proto;
	rk.dir = CT_DIR_REPLY;
	struct ct_value *ct = bpf_map_lookup_elem(&sluice_ct_v1, &rk);
	if (!ct || ct->expires_ns <= bpf_ktime_get_ns())
		return TC_ACT_OK;

	__u8 vip[SLUICE_ADDR_LEN];
	__be16 vport = ct->nat_port;
	__builtin_memcpy(vip, ct->nat_addr, SLUICE_ADDR_LEN);

	/* ICMPv4's checksum covers only the ICMP message; ICMPv6's also the
	 * pseudo header, so the outer source change counts there too. */
	int icmp_csum = p->l4_off + 2;
	struct pkt orig = *p;
	int outer_ok = 0;

	if (addr_eq(p->src, in.dst))
		outer_ok = store_addr(skb, p->family, saddr_off(p), p->src, vip, ip_csum_off(p),
				      p->family == 6 ? icmp_csum : -1, BPF_F_PSEUDO_HDR);
	if (outer_ok < 0)
		goto fail;

	if (p->family == 4) {
		__u32 inner_csum = in.l3_off + offsetof(struct iphdr, check);
		__be16 before, after;

		if (bpf_skb_load_bytes(skb, inner_csum, &before, 2) < 0 ||
		    store_addr(skb, 4, daddr_off(&in), in.dst, vip, inner_csum, icmp_csum, 0) < 0 ||
		    bpf_skb_load_bytes(skb, inner_csum, &after, 2) < 0 ||
		    bpf_l4_csum_replace(skb, icmp_csum, before, after, 2) < 0)
			goto fail;
	} else if (store_addr(skb, 6, daddr_off(&in), in.dst, vip, -1, icmp_csum, 0) < 0) {
		goto fail;
	}
	if (store_port(skb, in.l4_off + 2, in.dport, vport, icmp_csum, 0) < 0)
		goto fail;
	return TC_ACT_OK;
fail:
	record_drop(skb, &orig, DROP_NAT_FAILED, ct->svc_id, HOOK_TO_POD);
	return TC_ACT_SHOT;
}

/* service_reply rewrites a backend's reply to come from the service
 * address the client used. It returns 1, with the verdict, when p was such
 * a reply. Hairpin replies are handled in from_pod. */
static __always_inline int service_reply(struct __sk_buff *skb, struct pkt *p, __u8 hook, int *verdict)
{
	struct ct_key rk = {};
	__builtin_memcpy(rk.src, p->src, SLUICE_ADDR_LEN);
	__builtin_memcpy(rk.dst, p->dst, SLUICE_ADDR_LEN);
	rk.sport = p->sport;
	rk.dport = p->dport;
	rk.proto = p->proto;
	rk.dir = CT_DIR_REPLY;
	struct ct_value *ct = bpf_map_lookup_elem(&sluice_ct_v1, &rk);
	__u64 now = bpf_ktime_get_ns();
	if (!ct || ct->expires_ns <= now)
		return 0;
	*verdict = TC_ACT_OK;
	if (ct->flags & CT_F_HAIRPIN)
		return 1;
	/* The flow was judged by policy when it started. */
	ct_refresh(ct, p, now);

	__u8 vip[SLUICE_ADDR_LEN];
	__builtin_memcpy(vip, ct->nat_addr, SLUICE_ADDR_LEN);
	struct pkt orig = *p;
	if (nat_src(skb, p, vip, ct->nat_port) < 0) {
		record_drop(skb, &orig, DROP_NAT_FAILED, ct->svc_id, hook);
		*verdict = TC_ACT_SHOT;
	}
	return 1;
}

SEC("tc")
int to_pod(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (skb->mark == MARK_BOUNCED) {
		skb->mark = 0;
		return TC_ACT_OK; /* made or turned around by from_pod: final */
	}
	if (parse(skb, &p) < 0)
		return TC_ACT_OK;
	if (p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6)
		return icmp_error_revnat(skb, &p);
	if (p.frag || !has_ports(p.proto))
		return TC_ACT_OK;
	int verdict;
	if (service_reply(skb, &p, HOOK_TO_POD, &verdict))
		return verdict;
	return policy_active() ? policy_enforce(skb, &p, POLICY_INGRESS, 0) : TC_ACT_OK;
}

/* ---- the node's uplink -------------------------------------------------------
 *
 * from_netdev (ingress) load-balances NodePort, ExternalIP and LoadBalancer
 * traffic (scope EXTERNAL entries); a flow to a backend on another node is
 * marked for masquerade (MARK_SNAT). to_netdev (egress) turns the backends'
 * replies back into replies from the service address.
 */

SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (parse(skb, &p) < 0 || p.frag || !has_ports(p.proto))
		return TC_ACT_OK;
	struct svc_key key = {};
	__builtin_memcpy(key.addr, p.dst, SLUICE_ADDR_LEN);
	key.port = p.dport;
	key.proto = p.proto;
	key.scope = SVC_SCOPE_EXTERNAL;
	struct svc_value *svc = bpf_map_lookup_elem(&sluice_services_v1, &key);
	if (!svc)
		return TC_ACT_OK;
	return lb_service(skb, &p, svc, HOOK_FROM_NETDEV);
}

SEC("tc")
int to_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (parse(skb, &p) < 0 || p.frag || !has_ports(p.proto))
		return TC_ACT_OK;
	int verdict;
	if (service_reply(skb, &p, HOOK_TO_NETDEV, &verdict))
		return verdict;
	return TC_ACT_OK;
}

/* ---- socket-level load balancing --------------------------------------------
 *
 * cgroup hooks translate a service address once per socket (connect) or per
 * datagram (sendmsg) instead of per packet, and host processes (kubelet,
 * hostNetwork pods), whose packets never cross a pod veth, reach services
 * at all. recvmsg and getpeername show the service address again.
 */

#define ECONNREFUSED 111

static __always_inline void sock_addr_load(struct bpf_sock_addr *ctx, __u8 family, __u8 *addr)
{
	if (family == 4) {
		addr_from_v4(addr, ctx->user_ip4);
		return;
	}
	__u32 w[4];

	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
	__builtin_memcpy(addr, w, 16);
}

static __always_inline void sock_addr_store(struct bpf_sock_addr *ctx, __u8 family, const __u8 *addr, __be16 port)
{
	if (family == 4) {
		__u32 v4;

		__builtin_memcpy(&v4, addr + 12, 4);
		ctx->user_ip4 = v4;
	} else {
		__u32 w[4];

		__builtin_memcpy(w, addr, 16);
		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
	}
	ctx->user_port = (__u32)port;
}

/* sock_lb translates a connect or sendmsg to a service into one to a backend. */
static __always_inline int sock_lb(struct bpf_sock_addr *ctx, __u8 family)
{
	__u8 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	if (host_netns_cookie && bpf_get_netns_cookie(ctx) != host_netns_cookie)
		return 1;
	struct svc_key key = {};
	sock_addr_load(ctx, family, key.addr);
	key.port = (__be16)ctx->user_port;
	key.proto = proto;
	key.scope = SVC_SCOPE_INTERNAL;
	struct svc_value *svc = bpf_map_lookup_elem(&sluice_services_v1, &key);
	if (!svc)
		return 1;
	if (svc->backend_count == 0) {
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	/* No packet yet: the socket cookie stands in for the client port, and
	 * all processes of this node share one affinity (the node's address,
	 * as kube-proxy sees them). */
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct pkt p = {};
	p.family = family;
	p.proto = proto;
	p.sport = (__be16)cookie;
	p.dport = (__be16)(cookie >> 16);
	__u32 backend_id;
	struct backend_value *be = select_backend(svc, &p, bpf_ktime_get_ns(), &backend_id);
	if (!be)
		return 1; /* the tc path will count it */

	struct sock_revnat_key rk = {.cookie = cookie, .port = be->port};
	struct sock_revnat_value rv = {.port = key.port};
	__builtin_memcpy(rk.addr, be->addr, SLUICE_ADDR_LEN);
	__builtin_memcpy(rv.addr, key.addr, SLUICE_ADDR_LEN);
	bpf_map_update_elem(&sluice_sock_revnat_v1, &rk, &rv, BPF_ANY);
	sock_addr_store(ctx, family, be->addr, be->port);
	return 1;
}

/* sock_revnat shows the service instead of the backend to recvmsg and
 * getpeername of a translated socket. */
static __always_inline int sock_revnat(struct bpf_sock_addr *ctx, __u8 family)
{
	struct sock_revnat_key rk = {.cookie = bpf_get_socket_cookie(ctx)};

	sock_addr_load(ctx, family, rk.addr);
	rk.port = (__be16)ctx->user_port;
	struct sock_revnat_value *rv = bpf_map_lookup_elem(&sluice_sock_revnat_v1, &rk);
	if (rv)
		sock_addr_store(ctx, family, rv->addr, rv->port);
	return 1;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx) { return sock_lb(ctx, 4); }

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx) { return sock_lb(ctx, 4); }

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx) { return sock_revnat(ctx, 4); }

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx) { return sock_revnat(ctx, 4); }

SEC("cgroup/connect6")
int sock6_connect(struct bpf_sock_addr *ctx) { return sock_lb(ctx, 6); }

SEC("cgroup/sendmsg6")
int sock6_sendmsg(struct bpf_sock_addr *ctx) { return sock_lb(ctx, 6); }

SEC("cgroup/recvmsg6")
int sock6_recvmsg(struct bpf_sock_addr *ctx) { return sock_revnat(ctx, 6); }

SEC("cgroup/getpeername6")
int sock6_getpeername(struct bpf_sock_addr *ctx) { return sock_revnat(ctx, 6); }
