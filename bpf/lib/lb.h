/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* lb.h: backend selection: flow hash, Maglev, session affinity,
 * and the service translation of a packet. */
#ifndef SLUICE_LIB_LB_H
#define SLUICE_LIB_LB_H

#include "conntrack.h"
#include "frag.h"
#include "masq.h"
#include "nat.h"
#include "policy.h"
#include "reject.h"

static __always_inline __u32 rotl32(__u32 x, __u32 r) { return (x << r) | (x >> (32 - r)); }

static __always_inline __u32 hash_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = rotl32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = rotl32(h, 13);
	return h * 5 + 0xe6546b64;
}

/* flow_hash is murmur3 over the client's address, the ports and protocol. */
static __noinline __u32 flow_hash(const struct pkt *p)
{
	__u32 w[4], h = 0x736c7563;

	__builtin_memcpy(w, p->src, 16);
	h = hash_mix(h, w[0]);
	h = hash_mix(h, w[1]);
	h = hash_mix(h, w[2]);
	h = hash_mix(h, w[3]);
	h = hash_mix(h, ((__u32)p->sport << 16) | p->dport);
	h = hash_mix(h, p->proto);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline int backend_usable(const struct svc_value *svc, const struct backend_value *be)
{
	if ((svc->flags & SVC_F_LOCAL_ONLY) && !(be->flags & BACKEND_F_LOCAL))
		return 0;
	if ((be->flags & BACKEND_F_TERMINATING) && !(svc->flags & SVC_F_TERMINATING_FALLBACK))
		return 0;
	return 1;
}

/* MAGLEV_SLOT reads slot hash % size of the service's table in the map of
 * that size. The barrier keeps the bound check the verifier needs, which
 * the compiler would otherwise drop as always true. */
#define MAGLEV_SLOT(size)                                                                                    \
	case MAGLEV_CLASS_##size: {                                                                          \
		__u32 *t = bpf_map_lookup_elem(&sluice_maglev_##size##_v1, &svc_id);                         \
		__u32 slot = hash % (size);                                                                  \
                                                                                                             \
		asm volatile("" : "+r"(slot));                                                               \
		if (!t || slot >= (size))                                                                    \
			return -1;                                                                           \
		*id = t[slot];                                                                               \
		return 0;                                                                                    \
	}

/* maglev_slot reads the backend ID at hash's slot of service svc_id's
 * table, in the map of its size class; -1 when it has no table. */
static __always_inline int maglev_slot(__u32 class, __u32 svc_id, __u32 hash, __u32 *id)
{
	switch (class) {
	case MAGLEV_CLASS_LEGACY: {
		__u32 *t = bpf_map_lookup_elem(&sluice_maglev_v1, &svc_id);
		__u32 slot;

		if (!t || maglev_size == 0)
			return -1;
		slot = hash % maglev_size;
		if (slot >= maglev_size) /* for the verifier: slot indexes the value */
			return -1;
		*id = t[slot];
		return 0;
	}
		MAGLEV_SLOT(251);
		MAGLEV_SLOT(509);
		MAGLEV_SLOT(1021);
		MAGLEV_SLOT(2039);
		MAGLEV_SLOT(4093);
		MAGLEV_SLOT(8191);
		MAGLEV_SLOT(16381);
		MAGLEV_SLOT(32749);
		MAGLEV_SLOT(65521);
		MAGLEV_SLOT(131071);
	}
	return -1;
}

static __always_inline struct backend_value *maglev_pick(const struct svc_value *svc, const struct pkt *p,
							 __u32 *id)
{
	__u32 svc_id = svc->id;
	__u32 class = (svc->flags & MAGLEV_CLASS_MASK) >> MAGLEV_CLASS_SHIFT;

	if (maglev_slot(class, svc_id, flow_hash(p), id) < 0)
		return 0;
	struct backend_value *be = bpf_map_lookup_elem(&sluice_backends_v2, id);
	/* A table swapped while an ID was freed and given again elsewhere. */
	if (be && be->svc_id != svc_id)
		return 0;
	return be;
}

/* affinity_holds reports whether an affinity entry's backend is still the
 * one it recorded, of this service, and may take new flows. */
static __always_inline int affinity_holds(const struct svc_value *svc, const struct affinity_value *av,
					  const struct backend_value *be)
{
	if (be->svc_id != svc->id || !addr_eq(be->addr, av->addr) || be->port != av->port) {
		count(COUNTER_AFFINITY_STALE);
		return 0;
	}
	return backend_usable(svc, be);
}

/* select_backend picks the backend for a new flow: the client's affinity
 * backend while it is fresh and still usable, otherwise the Maglev slot. */
static __always_inline struct backend_value *select_backend(const struct svc_value *svc, const struct pkt *p,
							    __u64 now, __u32 *id)
{
	struct affinity_key ak = {};
	struct backend_value *be;

	if (svc->affinity_timeout) {
		__builtin_memcpy(ak.client, p->src, SLUICE_ADDR_LEN);
		ak.svc_id = svc->id;
		struct affinity_value *av = bpf_map_lookup_elem(&sluice_affinity_v2, &ak);

		/* Signed: a stamp up to a tick ahead of the coarse clock
		 * (bpf_ktime_get_ns, or an entry of an older datapath) is fresh. */
		if (av && (__s64)(now - av->last_used_ns) <= (__s64)svc->affinity_timeout * 1000000000LL) {
			be = bpf_map_lookup_elem(&sluice_backends_v2, &av->backend_id);
			if (be && affinity_holds(svc, av, be)) {
				av->last_used_ns = now;
				*id = av->backend_id;
				return be;
			}
		}
	}
	be = maglev_pick(svc, p, id);
	if (be && svc->affinity_timeout) {
		struct affinity_value nv = {.last_used_ns = now, .backend_id = *id, .port = be->port};

		__builtin_memcpy(nv.addr, be->addr, SLUICE_ADDR_LEN);
		if (bpf_map_update_elem(&sluice_affinity_v2, &ak, &nv, BPF_ANY) < 0)
			count(COUNTER_CT_INSERT_FAILED);
	}
	return be;
}

/* source_in_ranges says whether the client (p->src) is in the
 * loadBalancerSourceRanges of the frontend p is addressed to. Out of line:
 * the key would not fit on lb_service's stack. */
static __noinline int source_in_ranges(const struct pkt *p)
{
	struct lb_range_key k = {};

	k.prefixlen = LB_RANGE_FRONTEND_BITS + SLUICE_ADDR_LEN * 8;
	__builtin_memcpy(k.addr, p->dst, SLUICE_ADDR_LEN);
	k.port = p->dport;
	k.proto = p->proto;
	__builtin_memcpy(k.client, p->src, SLUICE_ADDR_LEN);
	return bpf_map_lookup_elem(&sluice_lb_ranges_v1, &k) != 0;
}

/* lookup_service finds the service entry for the packet's destination in
 * scope (enum svc_scope). */
static __always_inline struct svc_value *lookup_service(const struct pkt *p, __u8 scope)
{
	struct svc_key key = {};

	__builtin_memcpy(key.addr, p->dst, SLUICE_ADDR_LEN);
	key.port = p->dport;
	key.proto = p->proto;
	key.scope = scope;
	return bpf_map_lookup_elem(&sluice_services_v1, &key);
}

/* event_service makes the event of a new service flow pending in the
 * scratch: TRACE_SERVICE, or its drop by egress policy, with the service
 * part; the policy part is policy_enforce's when it judged the flow
 * (judged: it was asked), else cleared. */
static __noinline void event_service(__u32 svc_id, __u32 backend_id, const struct backend_value *be,
				     int judged, int dropped)
{
	struct key_scratch *s = key_scratch();

	if (!s)
		return;
	s->ev.type = dropped ? EVENT_DROP : EVENT_TRACE;
	s->ev.reason = dropped ? DROP_POLICY_EGRESS : TRACE_SERVICE;
	s->ev.svc_id = svc_id;
	s->ev.backend_id = backend_id;
	__builtin_memcpy(s->ev.nat_addr, be->addr, SLUICE_ADDR_LEN);
	s->ev.nat_port = be->port;
	s->ev.pad = 0;
	if (!judged || !(s->ev.flags & EVENT_F_POLICY))
		event_no_policy(&s->ev);
}

/* lb_service load-balances a packet to a service, from a pod (from_pod) or
 * from outside the node (from_netdev). */
static __always_inline int lb_service(struct __sk_buff *skb, struct pkt *p, const struct svc_value *svc,
				      __u8 hook)
{
	struct ct_key fwd;
	struct backend_value *be = 0;
	__u32 backend_id = 0;
	__u8 hairpin = 0;
	__be16 masq_port = 0; /* a flow the XDP masquerade began */
	__u64 now = ct_now();

	/* Every packet, as kube-proxy filters them: a range removed cuts the
	 * flows it let in. */
	if ((svc->flags & SVC_F_SOURCE_RANGES) && !source_in_ranges(p)) {
		record_drop(skb, p, DROP_SOURCE_RANGE, svc->id, hook);
		return TC_ACT_SHOT;
	}
	ct_key_of(&fwd, p, 0, CT_DIR_SERVICE);

	/* A live flow keeps its backend for as long as that backend exists
	 * (terminating or not), whatever happened to the service's backend
	 * set since. A SYN on a closing flow's tuple opens a new connection,
	 * balanced afresh. */
	struct ct_value *ct = bpf_map_lookup_elem(ct_map(p->proto), &fwd);
	if (ct && ct->expires_ns > now && ct->svc_id == svc->id) {
		be = bpf_map_lookup_elem(&sluice_backends_v2, &ct->backend_id);
		if ((ct->flags & CT_F_CLOSING) && opens_connection(p)) {
			count(COUNTER_CT_REOPENED);
		} else if (be && be->svc_id == svc->id && addr_eq(be->addr, ct->nat_addr) &&
			   be->port == ct->nat_port) {
			if (ct_refresh(ct, p, now, 0)) {
				__u8 replied = ct_keep_reply(p, ct, now);

				if (replied & ~ct->flags)
					ct->flags |= replied;
				if ((ct->flags & CT_F_MASQ) && masq_keep(p, ct, now) < 0) {
					masq_lost(p);
					record_drop(skb, p, DROP_NAT_FAILED, svc->id, hook);
					return TC_ACT_SHOT;
				}
			}
			hairpin = ct->flags & CT_F_HAIRPIN;
			if (hook == HOOK_FROM_NETDEV && (ct->flags & CT_F_MASQ))
				masq_port = ct->masq_port;
			goto nat;
		}
	}

	/* From outside, a TCP packet without an entry is balanced like a
	 * SYN: it is a packet of a flow whose entries were evicted while it
	 * idled, and Maglev sends it back to its backend if the backend set
	 * is unchanged. Masquerade never uses the NodePort range, so replies
	 * to the node's own flows are not mistaken for it; a SYN-ACK or a RST,
	 * which no client opens with, is left to the node. */
	if (hook == HOOK_FROM_NETDEV && p->proto == IPPROTO_TCP &&
	    ((p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK) ||
	     (p->tcp_flags & TCP_FLAG_RST)))
		return TC_ACT_OK;
	if (svc->backend_count == 0)
		return reject(skb, p, svc->id, hook);
	be = select_backend(svc, p, now, &backend_id);
	if (!be) {
		record_drop(skb, p, DROP_BACKEND_MISSING, svc->id, hook);
		return TC_ACT_SHOT;
	}
	/* Only a pod can be its own backend; from outside, a backend with the
	 * client's address is a hostNetwork pod, reached via masquerade. */
	hairpin = hook == HOOK_FROM_POD && addr_eq(be->addr, p->src);
	/* Egress policy judges the backend the flow will go to: p is pointed
	 * at it for the check (a copy would not fit the stack), then back at
	 * the service, which fwd still holds. */
	__builtin_memcpy(p->dst, be->addr, SLUICE_ADDR_LEN);
	p->dport = be->port;
	int judged = policy_active();
	int verdict = judged ? policy_enforce(skb, p, POLICY_EGRESS, svc->id) & ~POLICY_EVENT : TC_ACT_OK;
	__builtin_memcpy(p->dst, fwd.dst, SLUICE_ADDR_LEN);
	p->dport = fwd.dport;
	if (verdict != TC_ACT_OK) {
		if (events_on()) {
			event_service(svc->id, backend_id, be, judged, 1);
			event_send(skb, p, hook);
		}
		return TC_ACT_SHOT;
	}
	ct_create(&fwd, p, svc, be, backend_id, hairpin, now);
	if (events_on()) {
		event_service(svc->id, backend_id, be, judged, 0);
		event_send(skb, p, hook);
	}

nat:
	if (p->proto == IPPROTO_SCTP && be->port != p->dport) {
		record_drop(skb, p, DROP_SCTP_PORT_NAT, svc->id, hook);
		return TC_ACT_SHOT;
	}
	/* p changes only once a rewrite succeeded: on failure it still shows
	 * the packet as it came. */
	if (nat_dst(skb, p, be->addr, be->port) < 0)
		goto fail;
	/* XDP left a packet of a flow it masquerades: the same port, or the
	 * backend would see another flow. */
	if (masq_port)
		return masq_forward_tc(skb, p, &fwd, masq_port, svc->id);
	__u32 frag_flags = FRAG_F_NAT_DST;
	if (hook == HOOK_FROM_NETDEV && !(be->flags & BACKEND_F_LOCAL)) {
		skb->mark = MARK_SNAT;
		frag_flags |= FRAG_F_SNAT_MARK;
	}
	if (!hairpin) {
		if (p->frag_first)
			frag_record(p, &fwd, be->addr, frag_flags, hook);
		return TC_ACT_OK;
	}
	/* The pod talks to itself: give it a source it does not own, or its
	 * stack would drop the packet as a martian and answer itself locally. */
	__u8 src[SLUICE_ADDR_LEN];

	hairpin_addr(p->family, src);
	if (nat_src(skb, p, src, p->sport) < 0)
		goto fail;
	return bounce(skb);
fail:
	record_drop(skb, p, DROP_NAT_FAILED, svc->id, hook);
	return TC_ACT_SHOT;
}

#endif
