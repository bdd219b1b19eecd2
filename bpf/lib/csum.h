/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* csum.h: checksum arithmetic and checksum-preserving header stores. */
#ifndef SLUICE_LIB_CSUM_H
#define SLUICE_LIB_CSUM_H

#include <linux/tcp.h>
#include <linux/udp.h>

#include "parse.h"

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
static __always_inline int store_addr(struct __sk_buff *skb, __u8 family, __u32 addr_off, const __u8 *old,
				      const __u8 *new, int l3_csum, int l4_csum, __u64 l4_flags)
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

static __always_inline int store_port(struct __sk_buff *skb, __u32 off, __be16 old, __be16 new, int l4_csum,
				      __u64 l4_flags)
{
	if (old == new)
		return 0;
	if (l4_csum >= 0 && bpf_l4_csum_replace(skb, l4_csum, old, new, l4_flags | 2) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, 2, 0);
}

static __always_inline __u32 saddr_off(const struct pkt *p)
{
	return p->l3_off + (p->family == 4 ? offsetof(struct iphdr, saddr) : offsetof(struct ipv6hdr, saddr));
}

static __always_inline __u32 daddr_off(const struct pkt *p)
{
	return p->l3_off + (p->family == 4 ? offsetof(struct iphdr, daddr) : offsetof(struct ipv6hdr, daddr));
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
static __always_inline __u16 csum_fold(__s64 sum)
{
	__u64 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* ---- checksums by direct packet access (RFC 1624) ---- */

static __always_inline __u16 csum_fold32(__u32 c)
{
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)~c;
}

/* csum_replace_words folds the change of n (at most 4) 32-bit words
 * (from -> to) into the checksum at sum, in plain arithmetic: a
 * bpf_csum_diff call costs more than the sum itself. */
static __always_inline void csum_replace_words(__sum16 *sum, const __be32 *from, const __be32 *to, __u32 n)
{
	__u64 c = (__u16) ~*sum;

#pragma unroll
	for (__u32 i = 0; i < 4; i++) {
		if (i < n) {
			c += (__u32)~from[i];
			c += to[i];
		}
	}
	c = (c & 0xffffffff) + (c >> 32);
	c = (c & 0xffffffff) + (c >> 32);
	*sum = csum_fold32((__u32)c);
}

static __always_inline void csum_replace2(__sum16 *sum, __be16 from, __be16 to)
{
	__u32 c = (__u16) ~*sum + (__u16)~from + (__u16)to;

	*sum = csum_fold32(c);
}

#endif
