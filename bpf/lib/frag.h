/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* frag.h: IP fragments. Only a datagram's first fragment carries the L4
 * header, so the verdict and the translation it got are remembered for the
 * later fragments (sluice_frags_v1), which get the same. */
#ifndef SLUICE_LIB_FRAG_H
#define SLUICE_LIB_FRAG_H

#include <linux/pkt_cls.h>

#include "drop.h"
#include "maps.h"
#include "nat.h"

/* How long a first fragment's decision waits for the rest: the kernel's
 * reassembly timeout (net.ipv4.ipfrag_time). */
#define FRAG_TIMEOUT_NS (30ULL * 1000000000ULL)

static __always_inline void frag_key_of(struct frag_key *k, const struct pkt *p, __u8 hook)
{
	__builtin_memcpy(k->src, p->src, SLUICE_ADDR_LEN);
	__builtin_memcpy(k->dst, p->dst, SLUICE_ADDR_LEN);
	k->id = p->frag_id;
	k->proto = p->proto;
	k->hook = hook;
	k->pad = 0;
}

/* frag_record remembers what the first fragment p got at hook: later
 * fragments, which carry its addresses as they were before translation
 * (flow, or p itself when nothing was translated), get nat as source or
 * destination (flags) and pass. */
static __noinline void frag_record(const struct pkt *p, const struct ct_key *flow, const __u8 *nat,
				   __u32 flags, __u8 hook)
{
	struct key_scratch *s = key_scratch();

	if (!s)
		return;
	frag_key_of(&s->frag, p, hook);
	__builtin_memset(&s->fragv, 0, sizeof(s->fragv));
	s->fragv.sport = p->sport;
	s->fragv.dport = p->dport;
	if (flow) {
		__builtin_memcpy(s->frag.src, flow->src, SLUICE_ADDR_LEN);
		__builtin_memcpy(s->frag.dst, flow->dst, SLUICE_ADDR_LEN);
		s->fragv.sport = flow->sport;
		s->fragv.dport = flow->dport;
	}
	if (nat)
		__builtin_memcpy(s->fragv.nat_addr, nat, SLUICE_ADDR_LEN);
	s->fragv.flags = flags;
	s->fragv.expires_ns = bpf_ktime_get_ns() + FRAG_TIMEOUT_NS;
	bpf_map_update_elem(&sluice_frags_v1, &s->frag, &s->fragv, BPF_ANY);
}

/* lib/masq.h: later fragments of the XDP masquerade's flows. */
static int masq_frag_follow(struct __sk_buff *skb, struct pkt *p, __u32 flags);

/* frag_follow decides a later fragment at hook by its first fragment's
 * record. Without one it passes untouched, unless the endpoint judged here
 * is isolated (it cannot be judged: dropped). A fragment that would
 * overwrite part of the L4 header (RFC 1858) is always dropped: no stack
 * sends one, and it could rewrite ports or flags after the verdict. */
static __noinline int frag_follow(struct __sk_buff *skb, struct pkt *p, __u8 hook, int isolated)
{
	struct key_scratch *s = key_scratch();

	if (!s)
		return TC_ACT_SHOT;
	if (p->frag_off < l4_min_len(p->proto)) {
		record_drop(skb, p, DROP_FRAG_OVERLAP, 0, hook);
		return TC_ACT_SHOT;
	}
	frag_key_of(&s->frag, p, hook);
	struct frag_value *f = bpf_map_lookup_elem(&sluice_frags_v1, &s->frag);
	if (!f || f->expires_ns <= bpf_ktime_get_ns()) {
		if (!isolated)
			return TC_ACT_OK;
		record_drop(skb, p, DROP_FRAG_NO_FLOW, 0, hook);
		return TC_ACT_SHOT;
	}
	__u32 flags = f->flags;

	p->sport = f->sport;
	p->dport = f->dport;
	if (flags & (FRAG_F_MASQ_FWD | FRAG_F_MASQ_REPLY))
		return masq_frag_follow(skb, p, flags);
	if (flags & (FRAG_F_NAT_DST | FRAG_F_NAT_SRC)) {
		/* No L4 header here: only the IP header changes. The
		 * addresses are read where they are kept: this frame comes on
		 * top of from_netdev's. */
		int is_src = flags & FRAG_F_NAT_SRC;
		const __u32 *o = (const __u32 *)(is_src ? p->src : p->dst);
		const __u32 *n = (const __u32 *)f->nat_addr;

		if (ip_store_addr((void *)(long)skb->data, (void *)(long)skb->data_end, p->family, is_src, n,
				  1, addr_csum_diff(p->family, o, n)) < 0) {
			record_drop(skb, p, DROP_NAT_FAILED, 0, hook);
			return TC_ACT_SHOT;
		}
	}
	if (flags & FRAG_F_SNAT_MARK)
		skb->mark = MARK_SNAT;
	return TC_ACT_OK;
}

#endif
