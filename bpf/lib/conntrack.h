/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* conntrack.h: conntrack state and lifetimes, and the two entries of a
 * service flow. */
#ifndef SLUICE_LIB_CONNTRACK_H
#define SLUICE_LIB_CONNTRACK_H

#include "config.h"
#include "maps.h"
#include "parse.h"

/* ct_now is the datapath's clock for lifetimes (conntrack, affinity):
 * CLOCK_MONOTONIC, as bpf_ktime_get_ns, but read at tick resolution
 * (1-10 ms) from the value the timer interrupt keeps, without reading the
 * clock source. Lifetimes are seconds long, and the service path reads the
 * clock on every packet: the coarse read costs about a third as much. */
static __always_inline __u64 ct_now(void) { return bpf_ktime_get_coarse_ns(); }

/* opens_connection: a TCP SYN without ACK, the first packet of a
 * connection (or its retransmission). */
static __always_inline int opens_connection(const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* ct_update folds the packet's TCP flags into the entry's state and returns
 * its new lifetime. A SYN on a closing entry starts a new connection on
 * the same tuple: the old state is forgotten. */
static __always_inline __u64 ct_update(const struct pkt *p, __u8 *flags)
{
	if (p->proto != IPPROTO_TCP)
		return (*flags & CT_F_REPLIED) ? ct_timeout_other_ns : ct_timeout_unreplied_ns;
	if (opens_connection(p) && (*flags & CT_F_CLOSING))
		*flags &= ~(CT_F_CLOSING | CT_F_ESTABLISHED | CT_F_REPLIED);
	if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		*flags |= CT_F_CLOSING;
	else if (!(p->tcp_flags & TCP_FLAG_SYN))
		*flags |= CT_F_ESTABLISHED;
	if (*flags & CT_F_CLOSING)
		return ct_timeout_close_ns;
	if (*flags & CT_F_ESTABLISHED)
		return ct_timeout_tcp_ns;
	return ct_timeout_syn_ns;
}

/* ct_refresh extends a live entry, adding flags (CT_F_REPLIED when p is a
 * reply). Writes are skipped unless the state changes or a second has
 * passed, to keep the entry's cache line clean; it returns 1 when it
 * wrote, which is also when a service flow checks its other entry. */
static __always_inline int ct_refresh(struct ct_value *ct, const struct pkt *p, __u64 now, __u8 add)
{
	__u8 flags = ct->flags | add;
	__u64 expires = now + ct_update(p, &flags);

	if (flags != ct->flags)
		ct->flags = flags;
	else if (expires < ct->expires_ns + 1000000000ULL && expires >= ct->expires_ns)
		return 0;
	ct->expires_ns = expires;
	return 1;
}

static __always_inline void ct_put(const struct ct_key *k, const struct ct_value *v)
{
	if (bpf_map_update_elem(ct_map(k->proto), k, v, BPF_ANY) < 0)
		count(COUNTER_CT_INSERT_FAILED);
}

/* ct_reply_key is the key of a service flow's reply entry: from the
 * backend to the client, or to the hairpin address when the client is its
 * own backend. p is the client's packet as it came (to the service). */
static __always_inline void ct_reply_key(struct ct_key *rev, const struct pkt *p, const __u8 *be_addr,
					 __be16 be_port, __u8 hairpin)
{
	__builtin_memset(rev, 0, sizeof(*rev));
	__builtin_memcpy(rev->src, be_addr, SLUICE_ADDR_LEN);
	if (hairpin)
		hairpin_addr(p->family, rev->dst);
	else
		__builtin_memcpy(rev->dst, p->src, SLUICE_ADDR_LEN);
	rev->sport = be_port;
	rev->dport = p->sport;
	rev->proto = p->proto;
	rev->dir = CT_DIR_REPLY;
}

/* ct_create records both directions of a new service flow. The entries
 * are built in the per-CPU scratch: from_pod's stack has no room left. */
static __always_inline void ct_create(const struct ct_key *fwd, const struct pkt *p,
				      const struct svc_value *svc, const struct backend_value *be,
				      __u32 backend_id, __u8 hairpin, __u64 now)
{
	struct key_scratch *s = key_scratch();

	if (!s)
		return;
	struct ct_value *v = &s->ctv;

	__builtin_memset(v, 0, sizeof(*v));
	v->expires_ns = now + ct_update(p, &v->flags);
	v->backend_id = backend_id;
	v->svc_id = svc->id;
	if (hairpin)
		v->flags |= CT_F_HAIRPIN;
	__builtin_memcpy(v->nat_addr, be->addr, SLUICE_ADDR_LEN);
	v->nat_port = be->port;
	ct_put(fwd, v);
	/* The reply entry: the same but for the address it restores. */
	ct_reply_key(&s->ct, p, be->addr, be->port, hairpin);
	__builtin_memcpy(v->nat_addr, p->dst, SLUICE_ADDR_LEN);
	v->nat_port = p->dport;
	ct_put(&s->ct, v);
}

/* ct_keep_reply runs when a forward packet of a live service flow
 * refreshed its entry (a state change, the first packet after a second or
 * more of quiet, else once a second): it makes the reply entry again when
 * it is gone (evicted from a full map, or expired on a one-way flow), so
 * replies are still translated back, and returns CT_F_REPLIED once the
 * flow has had a reply. Checking on every packet would cost a lookup per
 * packet; an entry is evicted only when least recently used, which a flow
 * busy within the last second is not. */
static __noinline __u8 ct_keep_reply(const struct pkt *p, const struct ct_value *fwd, __u64 now)
{
	struct key_scratch *s = key_scratch();

	if (!s)
		return 0;
	ct_reply_key(&s->ct, p, fwd->nat_addr, fwd->nat_port, fwd->flags & CT_F_HAIRPIN);
	struct ct_value *rv = bpf_map_lookup_elem(ct_map(p->proto), &s->ct);
	if (rv && rv->expires_ns > now && rv->svc_id == fwd->svc_id && rv->backend_id == fwd->backend_id)
		return rv->flags & CT_F_REPLIED;
	/* Made again under the key just looked up: replies are rewritten
	 * back to the service address p was sent to. */
	count(COUNTER_CT_REPLY_RESTORED);
	struct ct_value *v = &s->ctv;

	__builtin_memset(v, 0, sizeof(*v));
	v->flags = fwd->flags & (CT_F_HAIRPIN | CT_F_ESTABLISHED | CT_F_REPLIED | CT_F_MASQ);
	v->expires_ns = now + ct_update(p, &v->flags);
	v->backend_id = fwd->backend_id;
	v->svc_id = fwd->svc_id;
	v->masq_port = fwd->masq_port;
	__builtin_memcpy(v->nat_addr, p->dst, SLUICE_ADDR_LEN);
	v->nat_port = p->dport;
	ct_put(&s->ct, v);
	return 0;
}

/* ct_keep_forward is ct_keep_reply's mirror, when a reply refreshed the
 * reply entry of a live service flow (rk and ct: that entry): a forward entry
 * gone from the map is made again, so the client's next packet keeps its
 * backend rather than being balanced afresh (perhaps elsewhere). Hairpin
 * flows are left alone: their reply entry does not name the client; so
 * are flows received by direct server return, whose forward entry is on
 * the node the client sent to. */
static __noinline void ct_keep_forward(const struct ct_key *rk, const struct ct_value *ct, __u64 now)
{
	struct key_scratch *s = key_scratch();

	if (!s || (ct->flags & (CT_F_HAIRPIN | CT_F_DSR)))
		return;
	struct ct_key *k = &s->ct;

	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->src, rk->dst, SLUICE_ADDR_LEN);
	__builtin_memcpy(k->dst, ct->nat_addr, SLUICE_ADDR_LEN);
	k->sport = rk->dport;
	k->dport = ct->nat_port;
	k->proto = rk->proto;
	k->dir = CT_DIR_SERVICE;
	struct ct_value *fv = bpf_map_lookup_elem(ct_map(rk->proto), k);
	if (fv && fv->expires_ns > now && fv->svc_id == ct->svc_id && fv->backend_id == ct->backend_id) {
		if (!(fv->flags & CT_F_REPLIED))
			fv->flags |= CT_F_REPLIED;
		return;
	}
	count(COUNTER_CT_FORWARD_RESTORED);
	struct ct_value *v = &s->ctv;

	__builtin_memset(v, 0, sizeof(*v));
	v->flags = ct->flags | CT_F_REPLIED;
	v->expires_ns = ct->expires_ns;
	v->backend_id = ct->backend_id;
	v->svc_id = ct->svc_id;
	v->masq_port = ct->masq_port;
	__builtin_memcpy(v->nat_addr, rk->src, SLUICE_ADDR_LEN);
	v->nat_port = rk->sport;
	ct_put(k, v);
}

/* forget_stale_reply: a pod opens a connection straight to an address and
 * port that an earlier service flow from the same client port was
 * translated to. The earlier flow's reply entry would rewrite this
 * connection's replies to come from the service, so it goes: a new SYN
 * means the old flow on this 4-tuple is over. */
static __noinline void forget_stale_reply(const struct pkt *p)
{
	struct key_scratch *s = key_scratch();

	if (!s)
		return;
	ct_key_of(&s->ct, p, 1, CT_DIR_REPLY);
	bpf_map_delete_elem(ct_map(p->proto), &s->ct);
}

#endif
