/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* xdp_masq.h: the XDP masquerade in xdp_netdev (the flows and their
 * entries: lib/masq.h). */
#ifndef SLUICE_LIB_XDP_MASQ_H
#define SLUICE_LIB_XDP_MASQ_H

#include "conntrack.h"
#include "lb.h"
#include "masq.h"
#include "xdp.h"

/* masq_forward sends a flow from outside to the service svc on to a
 * remote backend from this node's address. It returns the XDP verdict, or
 * -1 to leave the packet to from_netdev unchanged: a flow tc began, a
 * local backend, no route or neighbour, no free port, no TTL left. */
static __always_inline int masq_forward(struct xdp_md *ctx, struct pkt *p, const struct svc_value *svc)
{
	struct key_scratch *s = key_scratch();
	struct ct_value *ct;
	__u32 backend_id = 0;
	__u64 now = ct_now();
	struct backend_value *be = xdp_flow(p, svc, CT_F_MASQ, now, &backend_id, &ct);

	if (!s || !be)
		return -1;
	int fresh = !ct;
	__be16 mport = ct ? ct->masq_port : 0;
	const __u8 *self = node_addr(p->family);
	const struct fib_cache_entry *way = self ? xdp_way(ctx, be->addr, self, now) : 0;
	if (!way || !ttl_left((void *)(long)ctx->data, (void *)(long)ctx->data_end, p->family))
		return -1;
	if (fresh) {
		mport = masq_claim(p, be, self, flow_hash(p), now);
		if (!mport)
			return -1;
		struct ct_value *v = &s->ctv;

		ct_key_of(&s->ct, p, 0, CT_DIR_SERVICE);
		__builtin_memset(v, 0, sizeof(*v));
		v->expires_ns = now + ct_update(p, &v->flags);
		v->flags |= CT_F_MASQ;
		v->backend_id = backend_id;
		v->svc_id = svc->id;
		v->masq_port = mport;
		__builtin_memcpy(v->nat_addr, be->addr, SLUICE_ADDR_LEN);
		v->nat_port = be->port;
		ct_put(&s->ct, v);
		ct_reply_key(&s->ct, p, be->addr, be->port, 0);
		__builtin_memcpy(v->nat_addr, p->dst, SLUICE_ADDR_LEN);
		v->nat_port = p->dport;
		ct_put(&s->ct, v);
	} else if (ct_refresh(ct, p, now, 0)) {
		__u8 replied = ct_keep_reply(p, ct, now);

		if (replied & ~ct->flags)
			ct->flags |= replied;
		if (masq_keep(p, ct, now) < 0) {
			masq_lost(p);
			xdp_record_drop(ctx, p, DROP_NAT_FAILED, svc->id);
			return XDP_DROP;
		}
	}

	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (ttl_dec(data, end, p->family) < 0)
		return -1;
	if (xdp_nat(data, end, p, 0, be->addr, be->port) < 0 || xdp_nat(data, end, p, 1, self, mport) < 0) {
		xdp_record_drop(ctx, p, DROP_NAT_FAILED, svc->id);
		return XDP_DROP;
	}
	count(COUNTER_MASQ_FORWARD);
	if (fresh && events_on())
		xdp_event_service(ctx, p, svc->id, backend_id, be);
	return xdp_send(ctx, way);
}

/* masq_reply sends a backend's reply to a masqueraded flow (p: to this
 * node's address and a port of the range) back to the client, from the
 * service. It returns the XDP verdict, or -1 when p is none (or has no
 * way back yet), for from_netdev. */
static __always_inline int masq_reply(struct xdp_md *ctx, const struct pkt *p)
{
	struct ct_key rk;
	__u64 now = ct_now();
	struct ct_value *m = masq_entry(p, now, &rk);
	struct ct_value *r = m ? masq_reply_entry(p, m, &rk, now) : 0;
	const struct fib_cache_entry *way = r ? xdp_way(ctx, rk.dst, r->nat_addr, now) : 0;

	if (!way)
		return -1;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (ttl_dec(data, end, p->family) < 0)
		return -1;
	masq_reply_seen(p, m, r, &rk, now);
	if (xdp_nat(data, end, p, 1, r->nat_addr, r->nat_port) < 0 ||
	    xdp_nat(data, end, p, 0, rk.dst, rk.dport) < 0) {
		xdp_record_drop(ctx, p, DROP_NAT_FAILED, r->svc_id);
		return XDP_DROP;
	}
	count(COUNTER_MASQ_REPLY);
	return xdp_send(ctx, way);
}

#endif
