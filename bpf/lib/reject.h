/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* reject.h: refusing a packet the way kube-proxy does (TCP RST,
 * ICMP port unreachable) and sending frames back where they came from. */
#ifndef SLUICE_LIB_REJECT_H
#define SLUICE_LIB_REJECT_H

#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>

#include "config.h"
#include "csum.h"
#include "drop.h"

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest;
};

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

static __always_inline int store_reply_l2_l4(struct __sk_buff *skb, const struct ethhdr *eth, const void *l4,
					     __u32 l4_len, __u32 l4_off)
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
		hdr.icmp.checksum =
			csum_fold(bpf_csum_diff(0, 0, (__be32 *)&hdr.icmp, sizeof(hdr.icmp), sum));
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
	hdr6.icmp6.icmp6_cksum =
		csum_fold(bpf_csum_diff(0, 0, (__be32 *)&hdr6.icmp6, sizeof(hdr6.icmp6), sum));
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

#endif
