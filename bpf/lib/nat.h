/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* nat.h: address and port rewriting of parsed packets. */
#ifndef SLUICE_LIB_NAT_H
#define SLUICE_LIB_NAT_H

#include "csum.h"
#include "maps.h"

/* ip_store_addr writes the new address n (16 bytes, IPv4 in the last
 * word) into the IP header and, for IPv4 when it changed, folds diff (the
 * checksum difference of the change) into the header checksum. */
static __always_inline int ip_store_addr(void *data, void *end, __u8 family, int is_src, const __u32 *n,
					 int changed, __u32 diff)
{
	if (family == 4) {
		struct iphdr *ip = data + ETH_HLEN;

		if ((void *)(ip + 1) > end)
			return -1;
		if (changed) {
			__u32 sum = csum_add32((__u16)~ip->check, diff);

			sum = (sum & 0xffff) + (sum >> 16);
			sum = (sum & 0xffff) + (sum >> 16);
			ip->check = (__u16)~sum;
			if (is_src)
				ip->saddr = n[3];
			else
				ip->daddr = n[3];
		}
		return 0;
	}
	struct ipv6hdr *ip6 = data + ETH_HLEN;

	if ((void *)(ip6 + 1) > end)
		return -1;
	if (is_src)
		__builtin_memcpy(&ip6->saddr, n, 16);
	else
		__builtin_memcpy(&ip6->daddr, n, 16);
	return 0;
}

/* addr_csum_diff is the ones'-complement difference of replacing address o
 * by n (one word for IPv4, four for IPv6). */
static __always_inline __u32 addr_csum_diff(__u8 family, const __u32 *o, const __u32 *n)
{
	__u32 words = family == 4 ? 1 : 4;
	__u32 first = family == 4 ? 3 : 0;
	__u32 diff = 0;

	for (__u32 i = 0; i < 4; i++) {
		if (i < first || i >= first + words)
			continue;
		diff = csum_add32(diff, ~o[i]);
		diff = csum_add32(diff, n[i]);
	}
	return diff;
}

/*
 * nat_rewrite replaces the source (is_src) or destination address and port
 * of a parsed TCP/UDP/SCTP packet: the per-packet hot path. Only the L4
 * checksum goes through bpf_l4_csum_replace, which alone knows whether
 * the skb carries a partial checksum (veth offload); the addresses, ports
 * and the IPv4 header checksum (never offloaded) are written directly, as
 * helper calls dominate the cost of the program.
 */
static __noinline int nat_rewrite(struct __sk_buff *skb, struct pkt *p, int is_src, const __u8 *addr,
				  __be16 port)
{
	struct key_scratch *s = key_scratch();
	__u8 *cur = is_src ? p->src : p->dst;
	__be16 old_port = is_src ? p->sport : p->dport;
	int csum = l4_csum_off(p);
	__u64 flags = l4_csum_flags(p);

	if (!s)
		return -1;
	__u32 *o = s->nat_old, *n = s->nat_new;
	__builtin_memcpy(o, cur, 16);
	__builtin_memcpy(n, addr, 16);
	__u32 diff = addr_csum_diff(p->family, o, n);
	int addr_changed = o[0] != n[0] || o[1] != n[1] || o[2] != n[2] || o[3] != n[3];
	if (csum >= 0 && addr_changed &&
	    bpf_l4_csum_replace(skb, csum, 0, diff, flags | BPF_F_PSEUDO_HDR) < 0)
		return -1;
	if (csum >= 0 && port != old_port && bpf_l4_csum_replace(skb, csum, old_port, port, flags | 2) < 0)
		return -1;

	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 l4 = p->l4_off;
	if (l4 > PARSE_MAX_OFF)
		return -1;
	__be16 *ports = data + l4;
	if ((void *)(ports + 2) > end)
		return -1;
	if (ip_store_addr(data, end, p->family, is_src, n, addr_changed, diff) < 0)
		return -1;
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

#endif
