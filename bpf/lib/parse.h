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
#include <linux/icmpv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sluice.h"

struct pkt {
	__u8 src[SLUICE_ADDR_LEN];
	__u8 dst[SLUICE_ADDR_LEN];
	/* TCP/UDP/SCTP ports; for ICMP echo the identifier stands in as the
	 * requester's port (sport of a request, dport of a reply), so echo
	 * and reply meet in conntrack like a UDP flow. */
	__be16 sport;
	__be16 dport;
	__u32 l3_off;
	__u32 l4_off;
	__u32 l4_len;	/* L4 header + payload, from the IP length fields */
	__u32 frag_id;	/* IPv4 identification or IPv6 fragment identification */
	__u16 frag_off; /* byte offset of a fragment's payload in its datagram */
	__u8 family;	/* 4 or 6 */
	__u8 proto;
	__u8 tcp_flags;
	__u8 frag;	 /* not the first fragment: no L4 header present */
	__u8 frag_first; /* the first fragment of several: L4 header present */
	__u8 icmp_type;	 /* ICMP and ICMPv6 only */
	__u8 addrs;	 /* src and dst were read (set even when parse fails later) */
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

static __always_inline int addr_is_zero(const __u8 *a)
{
	__u64 w[2];

	__builtin_memcpy(w, a, 16);
	return !(w[0] | w[1]);
}

/* is_v4_mapped reports whether an address is IPv4 (stored v4-mapped). */
static __always_inline int is_v4_mapped(const __u8 *a)
{
	__u32 w[3];

	__builtin_memcpy(w, a, 12);
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
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

/* Headers deeper than this are not parsed: the packet is unparseable. */
#define PARSE_MAX_OFF 512

/* What parse found: an IP packet whose headers it read (PARSE_OK),
 * something that is not IP at all (ARP, ...: never judged), or an IP
 * packet it cannot read (truncated headers, an extension header chain
 * longer than it walks, L4 beyond PARSE_MAX_OFF). The last passes for
 * endpoints without policy, to the kernel's own checks, and is dropped for
 * an isolated one: what cannot be read cannot be judged. */
enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IP = 1,
	PARSE_UNREADABLE = -1,
};

/* IPv6 extension headers walked before giving up. */
#define IPV6_MAX_EXT_HEADERS 6

/* linux/icmp.h drags in libc's socket headers; these are all we need. */
#define ICMP_ECHOREPLY	   0
#define ICMP_ECHO	   8
#define ICMP_DEST_UNREACH  3
#define ICMP_PORT_UNREACH  3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

static __always_inline int is_ipv6_ext(__u8 next)
{
	return next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	       next == IPPROTO_FRAGMENT;
}

/* l4_min_len is the L4 header length a packet of proto must carry (in its
 * first fragment) to be judged: everything the datapath reads of it. */
static __always_inline __u32 l4_min_len(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return sizeof(struct tcphdr);
	case IPPROTO_UDP:
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return 8;
	case IPPROTO_SCTP:
		return 12;
	}
	return 0;
}

/*
 * parse_l3_at reads the IP header at off (from data, the packet ending at
 * end) and, when present, the L4 ports, by direct packet access: helper
 * calls cost more than the whole parse. The caller makes sure the headers
 * are in the linear area (parse_direct).
 */
static __always_inline int parse_l3_at(void *data, void *end, __u32 off, __u8 family, struct pkt *p)
{
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
		p->addrs = 1;
		p->proto = ip->protocol;
		p->l4_off = off + ip->ihl * 4;
		__u16 frag = bpf_ntohs(ip->frag_off);
		p->frag_off = (frag & 0x1fff) << 3;
		p->frag = p->frag_off != 0;
		p->frag_first = !p->frag && (frag & 0x2000);
		p->frag_id = ip->id;
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
		p->addrs = 1;
		__u8 next = ip6->nexthdr;
		__u32 l4 = off + sizeof(*ip6);
		__u32 ext_len = 0;
		__u32 payload = bpf_ntohs(ip6->payload_len);

#pragma unroll
		for (int i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
			if (!is_ipv6_ext(next))
				break;
			if (l4 > PARSE_MAX_OFF)
				return -1;
			__u8 *ext = data + l4;
			if ((void *)(ext + 8) > end)
				return -1;
			__u32 len = next == IPPROTO_FRAGMENT ? 8 : (ext[1] + 1) * 8;
			if (next == IPPROTO_FRAGMENT) {
				__u16 frag = bpf_ntohs(*(__be16 *)(ext + 2));

				p->frag_off = frag & 0xfff8;
				p->frag = p->frag_off != 0;
				p->frag_first = !p->frag && (frag & 1);
				p->frag_id = *(__u32 *)(ext + 4);
			}
			next = ext[0];
			l4 += len;
			ext_len += len;
		}
		/* A chain longer than the walk hides the real protocol. */
		if (is_ipv6_ext(next) || l4 > PARSE_MAX_OFF)
			return -1;
		p->proto = next;
		p->l4_off = l4;
		p->l4_len = payload > ext_len ? payload - ext_len : 0;
	}
	if (p->frag)
		return 0;
	/* A first fragment (or whole packet) too short for the L4 header
	 * cannot be judged; its ports or flags would come in a later
	 * fragment (RFC 1858's tiny fragments). */
	if (p->l4_len < l4_min_len(p->proto))
		return -1;
	__u64 l4 = p->l4_off;
	if (l4 > PARSE_MAX_OFF)
		return -1;
	/* Bound the offset in the register that is added: clang may test a
	 * copy, and the verifier then sees an unbounded packet pointer. */
	asm volatile("%0 &= 0x3ff" : "+r"(l4));
	__be16 *ports = data + l4;
	if (has_ports(p->proto)) {
		if ((void *)(ports + 2) > end)
			return -1;
		p->sport = ports[0];
		p->dport = ports[1];
	} else if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) {
		if ((void *)(ports + 4) > end)
			return -1;
		__u8 type = *(__u8 *)ports;
		p->icmp_type = type;
		if ((p->proto == IPPROTO_ICMP && type == ICMP_ECHO) ||
		    (p->proto == IPPROTO_ICMPV6 && type == ICMPV6_ECHO_REQUEST))
			p->sport = ports[2];
		else if ((p->proto == IPPROTO_ICMP && type == ICMP_ECHOREPLY) ||
			 (p->proto == IPPROTO_ICMPV6 && type == ICMPV6_ECHO_REPLY))
			p->dport = ports[2];
	}
	return 0;
}

/* parse_l3 is parse_l3_at over an skb's linear area. */
static __always_inline int parse_l3(struct __sk_buff *skb, __u32 off, __u8 family, struct pkt *p)
{
	return parse_l3_at((void *)(long)skb->data, (void *)(long)skb->data_end, off, family, p);
}

/* parse_frame reads the IP and L4 headers after the Ethernet header of a
 * frame from data to end, and the TCP flags: parse_direct's work for any
 * program type (tc and XDP). */
static __always_inline int parse_frame(void *data, void *end, __u8 family, struct pkt *p)
{
	if (parse_l3_at(data, end, ETH_HLEN, family, p) < 0)
		return -1;
	if (p->proto == IPPROTO_TCP && !p->frag) {
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

static __noinline int parse_direct(struct __sk_buff *skb, __u8 family, struct pkt *p)
{
	return parse_frame((void *)(long)skb->data, (void *)(long)skb->data_end, family, p);
}

/* parse reads the Ethernet, IP and L4 headers of the packet (enum
 * parse_result). Headers that are not in the linear area (rare on veth)
 * are pulled in once. After PARSE_UNREADABLE, p->family is set and the
 * addresses are set when the IP header itself was readable. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u8 family;

	if (skb->protocol == bpf_htons(ETH_P_IP))
		family = 4;
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		family = 6;
	else
		return PARSE_NOT_IP;
	if (parse_direct(skb, family, p) == 0)
		return PARSE_OK;
	__u32 linear = skb->data_end - skb->data;
	if (skb->len <= linear)
		return PARSE_UNREADABLE;
	if (bpf_skb_pull_data(skb, skb->len < 256 ? skb->len : 256) < 0)
		return PARSE_UNREADABLE;
	__builtin_memset(p, 0, sizeof(*p));
	return parse_direct(skb, family, p) == 0 ? PARSE_OK : PARSE_UNREADABLE;
}

static __always_inline int is_icmp_error(const struct pkt *p)
{
	if (p->proto == IPPROTO_ICMP)
		return p->icmp_type == ICMP_DEST_UNREACH || p->icmp_type == ICMP_TIME_EXCEEDED ||
		       p->icmp_type == ICMP_PARAMETERPROB;
	return p->proto == IPPROTO_ICMPV6 && p->icmp_type >= ICMPV6_DEST_UNREACH &&
	       p->icmp_type <= ICMPV6_PARAMPROB;
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
