/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* parse.h: struct pkt, header parsing by direct packet access, and
 * the conntrack key builder. */
#ifndef SLUICE_LIB_PARSE_H
#define SLUICE_LIB_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sluice.h"

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
			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS &&
			    next != IPPROTO_FRAGMENT)
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

#endif
