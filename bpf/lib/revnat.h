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
	if (p->frag || !is_icmp_error(p))
		return TC_ACT_OK;

	struct pkt in = {};
	if (parse_l3(skb, p->l4_off + 8, p->family, &in) < 0 || in.frag || !has_ports(in.proto))
		return TC_ACT_OK;

	struct ct_key rk;

	ct_key_of(&rk, &in, 1, CT_DIR_REPLY);
	struct ct_value *ct = bpf_map_lookup_elem(ct_map(in.proto), &rk);
	if (!ct || ct->expires_ns <= ct_now())
		return TC_ACT_OK;

	__u8 vip[SLUICE_ADDR_LEN];
	__be16 vport = ct->nat_port;
	__builtin_memcpy(vip, ct->nat_addr, SLUICE_ADDR_LEN);

	/* ICMPv4's checksum covers only the ICMP message; ICMPv6's also the
	 * pseudo header, so the outer source change counts there too. */
	int icmp_csum = p->l4_off + 2;
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
	record_drop(skb, p, DROP_NAT_FAILED, ct->svc_id, HOOK_TO_POD);
	return TC_ACT_SHOT;
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
