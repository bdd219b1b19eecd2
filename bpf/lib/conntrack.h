/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* conntrack.h: conntrack state and lifetimes, and the two entries of a
 * service flow. */
#ifndef SLUICE_LIB_CONNTRACK_H
#define SLUICE_LIB_CONNTRACK_H

#include "config.h"
#include "maps.h"
#include "parse.h"

/* ct_update folds the packet's TCP flags into the entry's state and returns
 * its new lifetime. */
static __always_inline __u64 ct_update(const struct pkt *p, __u8 *flags)
{
	if (p->proto != IPPROTO_TCP)
		return ct_timeout_other_ns;
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

/* ct_refresh extends a live entry. Writes are skipped unless the state
 * changes or a second has passed, to keep the entry's cache line clean. */
static __always_inline void ct_refresh(struct ct_value *ct, const struct pkt *p, __u64 now)
{
	__u8 flags = ct->flags;
	__u64 expires = now + ct_update(p, &flags);

	if (flags != ct->flags)
		ct->flags = flags;
	else if (expires < ct->expires_ns + 1000000000ULL && expires >= ct->expires_ns)
		return;
	ct->expires_ns = expires;
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
	struct ct_key *rev = &s->ct;

	__builtin_memset(v, 0, sizeof(*v));
	v->expires_ns = now + ct_update(p, &v->flags);
	v->backend_id = backend_id;
	v->svc_id = svc->id;
	if (hairpin)
		v->flags |= CT_F_HAIRPIN;
	__builtin_memcpy(v->nat_addr, be->addr, SLUICE_ADDR_LEN);
	v->nat_port = be->port;
	bpf_map_update_elem(&sluice_ct_v1, fwd, v, BPF_ANY);

	/* The reply comes from the backend to the client, or to the hairpin
	 * address when the client is its own backend. */
	__builtin_memset(rev, 0, sizeof(*rev));
	__builtin_memcpy(rev->src, be->addr, SLUICE_ADDR_LEN);
	if (hairpin)
		hairpin_addr(p->family, rev->dst);
	else
		__builtin_memcpy(rev->dst, p->src, SLUICE_ADDR_LEN);
	rev->sport = be->port;
	rev->dport = p->sport;
	rev->proto = p->proto;
	rev->dir = CT_DIR_REPLY;
	__builtin_memcpy(v->nat_addr, p->dst, SLUICE_ADDR_LEN);
	v->nat_port = p->dport;
	bpf_map_update_elem(&sluice_ct_v1, rev, v, BPF_ANY);
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
	bpf_map_delete_elem(&sluice_ct_v1, &s->ct);
}

#endif
