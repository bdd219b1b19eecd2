/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* revnat.h: reverse translation: replies of service flows back to
 * the service address, hairpin replies, and ICMP errors about translated
 * flows. */
#ifndef SLUICE_LIB_REVNAT_H
#define SLUICE_LIB_REVNAT_H

#include "conntrack.h"
#include "frag.h"
#include "nat.h"
#include "reject.h"

/* hairpin_reply turns a pod's reply to the hairpin address into the reply
 * from the service and sends it straight back into the pod. */
static __always_inline int hairpin_reply(struct __sk_buff *skb, struct pkt *p)
{
	struct ct_key rk;

	ct_key_of(&rk, p, 0, CT_DIR_REPLY);
	struct ct_value *ct = bpf_map_lookup_elem(ct_map(p->proto), &rk);
	__u64 now = ct_now();
	if (!ct || ct->expires_ns <= now || !(ct->flags & CT_F_HAIRPIN))
		return TC_ACT_OK;
	ct_refresh(ct, p, now, CT_F_REPLIED);

	__u8 client[SLUICE_ADDR_LEN];
	__u8 vip[SLUICE_ADDR_LEN];
	__be16 vport = ct->nat_port;

	__builtin_memcpy(client, p->src, SLUICE_ADDR_LEN);
	__builtin_memcpy(vip, ct->nat_addr, SLUICE_ADDR_LEN);
	if (nat_dst(skb, p, client, p->dport) < 0 || nat_src(skb, p, vip, vport) < 0) {
		record_drop(skb, p, DROP_NAT_FAILED, ct->svc_id, HOOK_FROM_POD);
		return TC_ACT_SHOT;
	}
	return bounce(skb);
}

/* ---- reverse NAT ----------------------------------------------------------- */

/*
 * icmp_quote_nat rewrites one end of the packet an ICMP error quotes (its
 * source when quoted_src, else its destination) to addr:port, and the
 * outer address that is the same host (the error's addressee for a quoted
 * source, its sender for a quoted destination) when it was that address.
 * The inner L4 checksum is left alone (it is truncated and no stack checks
 * it); the ICMP and IP checksums are kept exact.
 */
static __always_inline int icmp_quote_nat(struct __sk_buff *skb, const struct pkt *p, const struct pkt *in,
					  int quoted_src, const __u8 *addr, __be16 port)
{
	const __u8 *old = quoted_src ? in->src : in->dst;
	const __u8 *outer = quoted_src ? p->dst : p->src;
	__u32 outer_off = quoted_src ? daddr_off(p) : saddr_off(p);
	__u32 inner_off = quoted_src ? saddr_off(in) : daddr_off(in);
	/* ICMPv4's checksum covers only the ICMP message; ICMPv6's also the
	 * pseudo header, so an outer address change counts there too. */
	int icmp_csum = p->l4_off + 2;

	if (addr_eq(outer, old) && store_addr(skb, p->family, outer_off, outer, addr, ip_csum_off(p),
					      p->family == 6 ? icmp_csum : -1, BPF_F_PSEUDO_HDR) < 0)
		return -1;
	if (p->family == 4) {
		__u32 inner_csum = in->l3_off + offsetof(struct iphdr, check);
		__be16 before, after;

		if (bpf_skb_load_bytes(skb, inner_csum, &before, 2) < 0 ||
		    store_addr(skb, 4, inner_off, old, addr, inner_csum, icmp_csum, 0) < 0 ||
		    bpf_skb_load_bytes(skb, inner_csum, &after, 2) < 0 ||
		    bpf_l4_csum_replace(skb, icmp_csum, before, after, 2) < 0)
			return -1;
	} else if (store_addr(skb, 6, inner_off, old, addr, -1, icmp_csum, 0) < 0) {
		return -1;
	}
	return store_port(skb, in->l4_off + (quoted_src ? 0 : 2), quoted_src ? in->sport : in->dport, port,
			  icmp_csum, 0);
}

/* icmp_quoted reads the packet an ICMP error quotes into in: 0 when it is
 * one with ports, a service flow's candidate. */
static __always_inline int icmp_quoted(struct __sk_buff *skb, const struct pkt *p, struct pkt *in)
{
	if (p->frag || !is_icmp_error(p))
		return -1;
	if (parse_l3(skb, p->l4_off + 8, p->family, in) < 0 || in->frag || !has_ports(in->proto))
		return -1;
	return 0;
}

/*
 * icmp_error_revnat translates an ICMP error on its way to a client about
 * a service flow: the quoted packet went from the client to the backend,
 * and the client only knows it as going to the service. The quoted
 * destination becomes the service address and port again, and so does the
 * outer source when the backend itself sent the error. At to_pod, and at
 * to_netdev for clients outside (hook). Out of line, as icmp_error_nat:
 * the quoted packet's parse would not fit on the hooks' stacks.
 */
static __always_inline int icmp_error_revnat(struct __sk_buff *skb, struct pkt *p, __u8 hook)
{
	struct pkt in = {};

	if (icmp_quoted(skb, p, &in) < 0)
		return TC_ACT_OK;

	struct ct_key rk;

	ct_key_of(&rk, &in, 1, CT_DIR_REPLY);
	struct ct_value *ct = bpf_map_lookup_elem(ct_map(in.proto), &rk);
	if (!ct || ct->expires_ns <= ct_now())
		return TC_ACT_OK;

	__u8 vip[SLUICE_ADDR_LEN];
	__builtin_memcpy(vip, ct->nat_addr, SLUICE_ADDR_LEN);
	if (icmp_quote_nat(skb, p, &in, 0, vip, ct->nat_port) < 0) {
		record_drop(skb, p, DROP_NAT_FAILED, ct->svc_id, hook);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

/*
 * icmp_error_nat translates an ICMP error arriving from outside about the
 * reply of a service flow (a router's "fragmentation needed" or "time
 * exceeded", the client's "port unreachable"): the quoted packet went from
 * the service address to the client, and the backend must hear of it as
 * its own. The quoted source becomes the backend again, and so does the
 * outer destination when the error was sent to the service address; the
 * kernel then routes it to the backend, and its conntrack undoes the
 * masquerade of a flow to another node as for any related packet.
 */
static __noinline int icmp_error_nat(struct __sk_buff *skb, struct pkt *p)
{
	/* The quoted packet and the key live in the scratch: from_netdev's
	 * stack has no room left for them. */
	struct key_scratch *s = key_scratch();

	if (!s)
		return TC_ACT_OK;
	__builtin_memset(&s->inner, 0, sizeof(s->inner));
	if (icmp_quoted(skb, p, &s->inner) < 0)
		return TC_ACT_OK;
	ct_key_of(&s->ct, &s->inner, 1, CT_DIR_SERVICE);
	struct ct_value *ct = bpf_map_lookup_elem(ct_map(s->inner.proto), &s->ct);
	if (!ct || ct->expires_ns <= ct_now())
		return TC_ACT_OK;
	if (icmp_quote_nat(skb, p, &s->inner, 1, ct->nat_addr, ct->nat_port) < 0) {
		record_drop(skb, p, DROP_NAT_FAILED, ct->svc_id, HOOK_FROM_NETDEV);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

/* service_reply rewrites a backend's reply to come from the service
 * address the client used. It returns 1, with the verdict, when p was such
 * a reply. Hairpin replies are handled in from_pod. */
static __always_inline int service_reply(struct __sk_buff *skb, struct pkt *p, __u8 hook, int *verdict)
{
	struct ct_key rk;

	ct_key_of(&rk, p, 0, CT_DIR_REPLY);
	struct ct_value *ct = bpf_map_lookup_elem(ct_map(p->proto), &rk);
	__u64 now = ct_now();
	if (!ct || ct->expires_ns <= now)
		return 0;
	*verdict = TC_ACT_OK;
	if (ct->flags & CT_F_HAIRPIN)
		return 1;
	/* The flow was judged by policy when it started. */
	if (ct_refresh(ct, p, now, CT_F_REPLIED))
		ct_keep_forward(&rk, ct, now);

	__u8 vip[SLUICE_ADDR_LEN];
	__builtin_memcpy(vip, ct->nat_addr, SLUICE_ADDR_LEN);
	if (nat_src(skb, p, vip, ct->nat_port) < 0) {
		record_drop(skb, p, DROP_NAT_FAILED, ct->svc_id, hook);
		*verdict = TC_ACT_SHOT;
	} else if (p->frag_first) {
		frag_record(p, &rk, vip, FRAG_F_NAT_SRC, hook);
	}
	return 1;
}

#endif
