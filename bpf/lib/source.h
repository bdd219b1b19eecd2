/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* source.h: source address validation. A remote's address is its policy
 * identity, so a pod must send only from its own addresses, and nothing
 * from outside may claim a local pod's or the hairpin address. */
#ifndef SLUICE_LIB_SOURCE_H
#define SLUICE_LIB_SOURCE_H

#include "config.h"
#include "maps.h"
#include "parse.h"

/* link_control reports IPv6 link-scope control messages a pod needs
 * whatever its policy, which may come from its link-local or the
 * unspecified address: MLD (130-132, 143) and neighbour discovery with
 * router messages (133-137). Receivers ignore routed copies (ND demands
 * hop limit 255, MLD a link-local source), so they cannot reach beyond the
 * link. */
static __always_inline int link_control(const struct pkt *p)
{
	if (p->proto != IPPROTO_ICMPV6)
		return 0;
	return (p->icmp_type >= 130 && p->icmp_type <= 137) || p->icmp_type == 143;
}

static __always_inline int link_local_or_unspecified(const struct pkt *p)
{
	const __u64 *a = (const __u64 *)p->src;

	return (p->src[0] == 0xfe && (p->src[1] & 0xc0) == 0x80) || (a[0] == 0 && a[1] == 0);
}

/* pod_source_ok reports whether a packet leaving the pod behind ifindex
 * comes from one of the pod's addresses (the CNI recorded which veth has
 * them), or is link-scope control from its link-local address. */
static __always_inline int pod_source_ok(const struct pkt *p, __u32 ifindex)
{
	/* The fast path: the veth's slot (an array lookup the verifier
	 * inlines) holds the pod's addresses. */
	__u32 idx = ifindex % ENDPOINT_SLOTS;
	struct endpoint_slot *slot = bpf_map_lookup_elem(&sluice_endpoint_slots_v1, &idx);

	if (slot && slot->ifindex == ifindex) {
		const __u32 *src = (const __u32 *)p->src;

		if (p->family == 4 && src[3] == *(__u32 *)slot->addr4)
			return 1;
		const __u64 *a = (const __u64 *)p->src;
		const __u64 *b = (const __u64 *)slot->addr6;
		if (p->family == 6 && a[0] == b[0] && a[1] == b[1])
			return 1;
	}
	struct endpoint_value *self = bpf_map_lookup_elem(&sluice_endpoints_v1, p->src);

	if (self)
		return self->ifindex == ifindex;
	return p->family == 6 && link_control(p) && link_local_or_unspecified(p);
}

/* prefix_match reports whether addr lies in net/len (128-bit space). */
static __always_inline int prefix_match(const __u8 *addr, const __u8 *net, __u32 len)
{
	const __u64 *a = (const __u64 *)addr;
	const __u64 *n = (const __u64 *)net;
	__u64 hi = len >= 64 ? ~0ULL : len == 0 ? 0 : ~0ULL << (64 - len);
	__u64 lo = len >= 128 ? ~0ULL : len <= 64 ? 0 : ~0ULL << (128 - len);

	return ((a[0] ^ n[0]) & bpf_cpu_to_be64(hi)) == 0 && ((a[1] ^ n[1]) & bpf_cpu_to_be64(lo)) == 0;
}

/* uplink_source_spoofed reports a packet from outside the node that claims
 * to come from this node's pod CIDR (a pod or an unused address of it: an
 * ipBlock covering the CIDR would admit either) or the hairpin address.
 * Until the agent has written the CIDR, the pods' own addresses serve. */
static __always_inline int uplink_source_spoofed(const struct pkt *p)
{
	if (addr_eq(p->src, p->family == 4 ? hairpin_addr4 : hairpin_addr6))
		return 1;
	__u32 idx = p->family == 4 ? 0 : 1;
	struct node_cidr *c = bpf_map_lookup_elem(&sluice_node_cidrs_v1, &idx);
	if (c && c->prefixlen)
		return prefix_match(p->src, c->addr, c->prefixlen);
	return bpf_map_lookup_elem(&sluice_endpoints_v1, p->src) != 0;
}

#endif
