/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* masq.h: XDP masquerade (loadBalancerMode snat with acceleration).
 * xdp_netdev sends a flow from outside to a remote backend on itself, from
 * this node's address and a port of its own range, instead of leaving it
 * to tc and netfilter's masquerade; it sends the backend's replies back to
 * the client the same way. A flow has three conntrack entries: forward
 * (client -> service, CT_F_MASQ, with the port), reply (backend -> client,
 * naming the service, as any service flow's) and masq (backend -> this
 * node's port, naming the client). */
#ifndef SLUICE_LIB_MASQ_H
#define SLUICE_LIB_MASQ_H

#include "conntrack.h"
#include "lb.h"
#include "xdp.h"

/* Ports a new flow tries before it is left to netfilter: the range is
 * per backend, so it is full only for a backend with about as many
 * flows through this node as it has ports. */
#define MASQ_TRIES 8

static __always_inline int masq_on(void) { return masq_port_min != 0 && masq_port_max >= masq_port_min; }

/* masq_key is the key of the masq entry of a flow to the backend addr:port
 * given the source port mport of this node's address self. */
static __always_inline void masq_key(struct ct_key *k, const __u8 *addr, __be16 port, const __u8 *self,
				     __be16 mport, __u8 proto)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->src, addr, SLUICE_ADDR_LEN);
	__builtin_memcpy(k->dst, self, SLUICE_ADDR_LEN);
	k->sport = port;
	k->dport = mport;
	k->proto = proto;
	k->dir = CT_DIR_MASQ;
}

/* masq_claim finds a free port of the range for the new flow p (from the
 * client, as it came) to backend be, starting where hash points, and
 * writes the flow's masq entry under it. It returns the port (network
 * order), or 0 when the tries found none free. A port is free when no
 * live masq entry of the same backend holds it. */
static __noinline __be16 masq_claim(const struct pkt *p, const struct backend_value *be, const __u8 *self,
				    __u32 hash, __u64 now)
{
	struct key_scratch *s = key_scratch();

	if (!s)
		return 0;
	struct ct_key *k = &s->ct;
	struct ct_value *v = &s->ctv;
	void *map = ct_map(p->proto);
	__u32 span = masq_port_max - masq_port_min + 1;
	__u32 first = hash % span;

	masq_key(k, be->addr, be->port, self, 0, p->proto);
	__builtin_memset(v, 0, sizeof(*v));
	__builtin_memcpy(v->nat_addr, p->src, SLUICE_ADDR_LEN);
	v->nat_port = p->sport;
	v->expires_ns = now + ct_update(p, &v->flags);
	v->flags |= CT_F_MASQ;
	v->svc_id = be->svc_id;
	for (__u32 i = 0; i < MASQ_TRIES; i++) {
		k->dport = bpf_htons((__u16)(masq_port_min + (first + i) % span));
		v->masq_port = k->dport;
		if (bpf_map_update_elem(map, k, v, BPF_NOEXIST) == 0)
			return k->dport;
		struct ct_value *old = bpf_map_lookup_elem(map, k);
		if (old && old->expires_ns <= now && bpf_map_update_elem(map, k, v, BPF_ANY) == 0)
			return k->dport;
	}
	count(COUNTER_MASQ_PORTS_BUSY);
	return 0;
}

/* masq_keep runs when a forward packet of a live masqueraded flow
 * refreshed its entry fwd (as ct_keep_reply does): the masq entry, gone
 * from the map, is made again, so replies still find the client. A live
 * entry of another client on the port is left alone: this flow lost it. */
static __noinline void masq_keep(const struct pkt *p, const struct ct_value *fwd, const __u8 *self, __u64 now)
{
	struct key_scratch *s = key_scratch();

	if (!s)
		return;
	masq_key(&s->ct, fwd->nat_addr, fwd->nat_port, self, fwd->masq_port, p->proto);
	struct ct_value *m = bpf_map_lookup_elem(ct_map(p->proto), &s->ct);
	if (m && m->expires_ns > now)
		return;
	count(COUNTER_CT_REPLY_RESTORED);
	struct ct_value *v = &s->ctv;

	__builtin_memset(v, 0, sizeof(*v));
	__builtin_memcpy(v->nat_addr, p->src, SLUICE_ADDR_LEN);
	v->nat_port = p->sport;
	v->flags = fwd->flags & (CT_F_ESTABLISHED | CT_F_REPLIED | CT_F_MASQ);
	v->expires_ns = fwd->expires_ns;
	v->svc_id = fwd->svc_id;
	v->masq_port = fwd->masq_port;
	ct_put(&s->ct, v);
}

/* xdp_ttl takes one hop off the packet's TTL (hop limit), as a router
 * does; -1 when it has none left to give, for the kernel to answer. */
static __always_inline int xdp_ttl(void *data, void *end, __u8 family)
{
	if (family == 4) {
		struct iphdr *ip = data + ETH_HLEN;

		if ((void *)(ip + 1) > end || ip->ttl <= 1)
			return -1;
		__be16 *word = (void *)&ip->ttl; /* TTL, protocol */
		__be16 from = *word;
		ip->ttl--;
		csum_replace2(&ip->check, from, *word);
		return 0;
	}
	struct ipv6hdr *ip6 = data + ETH_HLEN;

	if ((void *)(ip6 + 1) > end || ip6->hop_limit <= 1)
		return -1;
	ip6->hop_limit--;
	return 0;
}

/* masq_forward sends a flow from outside to the service svc on to a
 * remote backend from this node's address. It returns the XDP verdict, or
 * -1 to leave the packet to from_netdev unchanged: a flow tc began, a
 * local backend, no route or neighbour, no free port. */
static __always_inline int masq_forward(struct xdp_md *ctx, struct pkt *p, const struct svc_value *svc)
{
	struct key_scratch *s = key_scratch();
	struct backend_value *be = 0;
	__u32 backend_id = 0;
	__be16 mport = 0;
	__u64 now = ct_now();

	if (!s || svc->backend_count == 0 || p->proto == IPPROTO_SCTP)
		return -1;
	/* As from_netdev: a SYN-ACK or RST is no client's first packet. */
	if (p->proto == IPPROTO_TCP &&
	    ((p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK) ||
	     (p->tcp_flags & TCP_FLAG_RST)))
		return -1;
	ct_key_of(&s->ct, p, 0, CT_DIR_SERVICE);
	struct ct_value *ct = bpf_map_lookup_elem(ct_map(p->proto), &s->ct);
	if (ct && ct->expires_ns > now && ct->svc_id == svc->id &&
	    !((ct->flags & CT_F_CLOSING) && opens_connection(p))) {
		if (!(ct->flags & CT_F_MASQ))
			return -1;
		be = bpf_map_lookup_elem(&sluice_backends_v2, &ct->backend_id);
		if (be && be->svc_id == svc->id && addr_eq(be->addr, ct->nat_addr) &&
		    be->port == ct->nat_port) {
			backend_id = ct->backend_id;
			mport = ct->masq_port;
		} else {
			be = 0;
		}
	}
	int fresh = !be;
	if (fresh)
		be = select_backend(svc, p, now, &backend_id);
	if (!be || (be->flags & BACKEND_F_LOCAL))
		return -1;
	const __u8 *self = node_addr(p->family);
	struct bpf_fib_lookup fib;
	if (!self || xdp_fib(ctx, be->addr, self, &fib) < 0)
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
		masq_keep(p, ct, self, now);
	}

	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (xdp_ttl(data, end, p->family) < 0)
		return -1;
	if (xdp_nat(data, end, p, 0, be->addr, be->port) < 0 || xdp_nat(data, end, p, 1, self, mport) < 0) {
		xdp_record_drop(ctx, p, DROP_NAT_FAILED, svc->id);
		return XDP_DROP;
	}
	count(COUNTER_MASQ_FORWARD);
	if (fresh && events_on())
		xdp_event_service(ctx, p, svc->id, backend_id, be);
	return xdp_send(ctx, &fib);
}

/* masq_reply sends a backend's reply to a masqueraded flow (p: to this
 * node's address and a port of the range) back to the client, from the
 * service. It returns the XDP verdict, or -1 when p is none (or has no
 * way back yet), for from_netdev. */
static __always_inline int masq_reply(struct xdp_md *ctx, const struct pkt *p)
{
	__u32 port = bpf_ntohs(p->dport);

	if (port < masq_port_min || port > masq_port_max ||
	    (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP))
		return -1;
	const __u8 *self = node_addr(p->family);
	struct key_scratch *s = key_scratch();
	if (!self || !s || !addr_eq(self, p->dst))
		return -1;
	__u64 now = ct_now();
	ct_key_of(&s->ct, p, 0, CT_DIR_MASQ);
	struct ct_value *m = bpf_map_lookup_elem(ct_map(p->proto), &s->ct);
	if (!m || m->expires_ns <= now)
		return -1;
	/* The reply entry (backend -> client) names the service. */
	struct ct_key rk = s->ct;
	__builtin_memcpy(rk.dst, m->nat_addr, SLUICE_ADDR_LEN);
	rk.dport = m->nat_port;
	rk.dir = CT_DIR_REPLY;
	struct ct_value *r = bpf_map_lookup_elem(ct_map(p->proto), &rk);
	if (!r || r->expires_ns <= now || !(r->flags & CT_F_MASQ) || r->svc_id != m->svc_id ||
	    r->masq_port != p->dport)
		return -1;
	struct bpf_fib_lookup fib;
	if (xdp_fib(ctx, rk.dst, r->nat_addr, &fib) < 0)
		return -1;
	ct_refresh(m, p, now, CT_F_REPLIED);
	if (ct_refresh(r, p, now, CT_F_REPLIED))
		ct_keep_forward(&rk, r, now);

	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (xdp_ttl(data, end, p->family) < 0)
		return -1;
	if (xdp_nat(data, end, p, 1, r->nat_addr, r->nat_port) < 0 ||
	    xdp_nat(data, end, p, 0, rk.dst, rk.dport) < 0) {
		xdp_record_drop(ctx, p, DROP_NAT_FAILED, r->svc_id);
		return XDP_DROP;
	}
	count(COUNTER_MASQ_REPLY);
	return xdp_send(ctx, &fib);
}

#endif
