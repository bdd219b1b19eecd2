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

/*
 * icmp_error_translate translates an ICMP error about a service flow, found
 * by the packet it quotes. Outward, to a client (to_pod, to_netdev): the
 * quoted packet went from the client to the backend, and the client only
 * knows it as going to the service; the quoted destination becomes the
 * service address and port again, and so does the outer source when the
 * backend itself sent the error. Inward, from outside (from_netdev), about
 * a reply (a router's "fragmentation needed", the client's "port
 * unreachable"): the quoted packet went from the service address to the
 * client, and the backend must hear of it as its own; the quoted source
 * becomes the backend again, and so does the outer destination when the
 * error was sent to the service address. The kernel then routes it to the
 * backend, its conntrack undoing the masquerade of a flow to another node
 * as for any related packet. Out of line, with the quoted packet and the
 * key in the scratch: from_netdev's stack has no room left for them.
 */
static __noinline int icmp_error_translate(struct __sk_buff *skb, struct pkt *p, __u8 hook)
{
	int inward = hook == HOOK_FROM_NETDEV;
	struct key_scratch *s = key_scratch();

	if (!s || p->frag || !is_icmp_error(p))
		return TC_ACT_OK;
	__builtin_memset(&s->inner, 0, sizeof(s->inner));
	if (parse_l3(skb, p->l4_off + 8, p->family, &s->inner) < 0 || s->inner.frag ||
	    !has_ports(s->inner.proto))
		return TC_ACT_OK;
	/* The quote reversed is the flow's service entry (inward: the client
	 * to the service) or its reply entry (outward: the backend to the
	 * client). */
	ct_key_of(&s->ct, &s->inner, 1, inward ? CT_DIR_SERVICE : CT_DIR_REPLY);
	struct ct_value *ct = bpf_map_lookup_elem(ct_map(s->inner.proto), &s->ct);
	if (!ct || ct->expires_ns <= ct_now())
		return TC_ACT_OK;
	/* A flow the XDP masquerade carries: the backend knows it as from
	 * this node's port, which this translation would not restore. Left
	 * untouched rather than sent to the backend wrong. */
	if (ct->flags & CT_F_MASQ)
		return TC_ACT_OK;
	if (icmp_quote_nat(skb, p, &s->inner, inward, ct->nat_addr, ct->nat_port) < 0) {
		record_drop(skb, p, DROP_NAT_FAILED, ct->svc_id, hook);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

/* tcp_clamp_mss lowers the MSS option of a SYN (p) to at most max: the
 * backend of a flow received by direct server return tells the client a
 * segment size that still fits once the node the client sends to
 * encapsulates it. */
static __noinline int tcp_clamp_mss(struct __sk_buff *skb, const struct pkt *p, __u32 max)
{
	__u8 doff;

	if (bpf_skb_load_bytes(skb, p->l4_off + 12, &doff, 1) < 0)
		return -1;
	__u32 off = p->l4_off + sizeof(struct tcphdr);
	__u32 opts_end = p->l4_off + (doff >> 4) * 4;
	for (int i = 0; i < 40 && off + 4 <= opts_end; i++) {
		__u8 opt[2];

		if (bpf_skb_load_bytes(skb, off, opt, 2) < 0)
			return -1;
		if (opt[0] == 0) /* end of options */
			return 0;
		if (opt[0] == 1) { /* no-op */
			off++;
			continue;
		}
		if (opt[1] < 2)
			return 0; /* malformed: left to the client */
		if (opt[0] == 2 && opt[1] == 4) {
			__be16 mss, clamped = bpf_htons(max);

			if (bpf_skb_load_bytes(skb, off + 2, &mss, 2) < 0)
				return -1;
			if (bpf_ntohs(mss) <= max)
				return 0;
			if (bpf_l4_csum_replace(skb, p->l4_off + offsetof(struct tcphdr, check), mss, clamped,
						2) < 0 ||
			    bpf_skb_store_bytes(skb, off + 2, &clamped, 2, 0) < 0)
				return -1;
			return 0;
		}
		off += opt[1];
	}
	return 0;
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

	if (ct->flags & CT_F_DSR) {
		count(COUNTER_DSR_REPLIES);
		if (p->proto == IPPROTO_TCP && (p->tcp_flags & TCP_FLAG_SYN) &&
		    tcp_clamp_mss(skb, p, dsr_max_inner - (p->family == 4 ? 40 : 60)) < 0) {
			record_drop(skb, p, DROP_NAT_FAILED, ct->svc_id, hook);
			*verdict = TC_ACT_SHOT;
			return 1;
		}
	}
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
