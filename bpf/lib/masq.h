/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* masq.h: the XDP masquerade's flows (loadBalancerMode snat with
 * acceleration). xdp_netdev (lib/xdp_masq.h) sends a flow from outside to
 * a remote backend on itself, from this node's address and a port of its
 * own range, instead of leaving it to tc and netfilter's masquerade, and
 * sends the backend's replies back to the client the same way. A flow has
 * three conntrack entries: forward (client -> service, CT_F_MASQ, with
 * the port), reply (backend -> client, naming the service, as any service
 * flow's) and masq (backend -> this node's port, naming the client).
 *
 * What XDP leaves of such flows comes here, at from_netdev: fragments,
 * and packets XDP found no way on for (or all of them, once acceleration
 * is off). tc translates them the same way and sends them on itself: the
 * kernel would not forward a packet from its own address. */
#ifndef SLUICE_LIB_MASQ_H
#define SLUICE_LIB_MASQ_H

#include <linux/pkt_cls.h>

#include "conntrack.h"
#include "drop.h"
#include "frag.h"
#include "maps.h"
#include "nat.h"

/* Ports a new flow tries before it is left to netfilter: the range is
 * per backend, so it is full only for a backend with about as many
 * flows through this node as it has ports. */
#define MASQ_TRIES 8

static __always_inline int masq_on(void) { return masq_port_min != 0 && masq_port_max >= masq_port_min; }

/* masq_port_of says whether p (TCP or UDP) is addressed to a port of the
 * range: the only packets that can be replies of a masqueraded flow. The
 * hooks ask it inline, before any call, since every packet passes here. */
static __always_inline int masq_port_of(const struct pkt *p)
{
	__u32 port = bpf_ntohs(p->dport);

	return masq_on() && port >= masq_port_min && port <= masq_port_max &&
	       (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP);
}

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

/* masq_holds reports whether the live masq entry m is the one of the
 * flow p (from the client, as it came) of service svc_id. */
static __always_inline int masq_holds(const struct ct_value *m, const struct pkt *p, __u32 svc_id, __u64 now)
{
	return m->expires_ns > now && addr_eq(m->nat_addr, p->src) && m->nat_port == p->sport &&
	       m->svc_id == svc_id;
}

/* masq_claim finds a port of the range for the new flow p (from the
 * client, as it came) to backend be, starting where hash points, and
 * writes the flow's masq entry under it. It returns the port (network
 * order), or 0 when the tries found none free. A port is free when no
 * live masq entry of the same backend holds it; one whose entry names
 * this very flow (its forward entry was lost) is taken back, so the
 * backend still sees the flow it knows. An expired entry is taken over
 * with a compare-and-swap of its lifetime: two CPUs cannot both win it. */
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
		if (!old)
			continue;
		if (masq_holds(old, p, be->svc_id, now)) {
			/* The same tuple opened again: its state starts afresh. */
			old->flags = v->flags;
			old->expires_ns = v->expires_ns;
			return k->dport;
		}
		__u64 seen = old->expires_ns;
		if (seen <= now &&
		    __sync_val_compare_and_swap(&old->expires_ns, seen, v->expires_ns) == seen) {
			__builtin_memcpy(old->nat_addr, p->src, SLUICE_ADDR_LEN);
			old->nat_port = p->sport;
			old->flags = v->flags;
			old->svc_id = v->svc_id;
			old->masq_port = k->dport;
			return k->dport;
		}
	}
	count(COUNTER_MASQ_PORTS_BUSY);
	return 0;
}

/* masq_keep runs when a forward packet of a live masqueraded flow
 * refreshed its entry fwd (as ct_keep_reply does). The masq entry must
 * live at least as long as the forward entry, or another flow could claim
 * the port while this one still sends from it: it is extended (made
 * again when gone), and closes when the forward entry does. -1 when
 * another flow holds the port (its entry was lost, a full map): this flow
 * cannot go on from it. */
static __noinline int masq_keep(const struct pkt *p, const struct ct_value *fwd, __u64 now)
{
	struct key_scratch *s = key_scratch();
	const __u8 *self = node_addr(p->family);

	if (!s || !self)
		return 0;
	masq_key(&s->ct, fwd->nat_addr, fwd->nat_port, self, fwd->masq_port, p->proto);
	struct ct_value *m = bpf_map_lookup_elem(ct_map(p->proto), &s->ct);
	if (m && m->expires_ns > now) {
		if (!masq_holds(m, p, fwd->svc_id, now))
			return -1;
		if (fwd->flags & CT_F_CLOSING) {
			m->flags |= CT_F_CLOSING;
			m->expires_ns = fwd->expires_ns;
		} else if (m->expires_ns < fwd->expires_ns) {
			m->expires_ns = fwd->expires_ns;
		}
		return 0;
	}
	count(COUNTER_CT_REPLY_RESTORED);
	struct ct_value *v = &s->ctv;

	__builtin_memset(v, 0, sizeof(*v));
	__builtin_memcpy(v->nat_addr, p->src, SLUICE_ADDR_LEN);
	v->nat_port = p->sport;
	v->flags = fwd->flags & (CT_F_ESTABLISHED | CT_F_REPLIED | CT_F_CLOSING | CT_F_MASQ);
	v->expires_ns = fwd->expires_ns;
	v->svc_id = fwd->svc_id;
	v->masq_port = fwd->masq_port;
	ct_put(&s->ct, v);
	return 0;
}

/* masq_lost forgets the forward entry of flow p, whose port another flow
 * holds, and drops the packet: the next one starts the flow afresh. */
static __noinline void masq_lost(const struct pkt *p)
{
	struct key_scratch *s = key_scratch();

	if (!s)
		return;
	ct_key_of(&s->ct, p, 0, CT_DIR_SERVICE);
	bpf_map_delete_elem(ct_map(p->proto), &s->ct);
}

/* ttl_left says whether the packet (Ethernet header at data) has a hop
 * left to take, before anything is claimed for it. */
static __always_inline int ttl_left(void *data, void *end, __u8 family)
{
	if (family == 4) {
		struct iphdr *ip = data + ETH_HLEN;

		return (void *)(ip + 1) <= end && ip->ttl > 1;
	}
	struct ipv6hdr *ip6 = data + ETH_HLEN;

	return (void *)(ip6 + 1) <= end && ip6->hop_limit > 1;
}

/* masq_entry finds the masq entry of a reply p (backend -> this node's
 * address and a port of the range) and makes rk the key of the flow's
 * reply entry (backend -> client). 0 when p is no reply of a live
 * masqueraded flow. */
static __always_inline struct ct_value *masq_entry(const struct pkt *p, __u64 now, struct ct_key *rk)
{
	if (!masq_port_of(p))
		return 0;
	const __u8 *self = node_addr(p->family);
	if (!self || !addr_eq(self, p->dst))
		return 0;
	ct_key_of(rk, p, 0, CT_DIR_MASQ);
	struct ct_value *m = bpf_map_lookup_elem(ct_map(p->proto), rk);
	if (!m || m->expires_ns <= now)
		return 0;
	__builtin_memcpy(rk->dst, m->nat_addr, SLUICE_ADDR_LEN);
	rk->dport = m->nat_port;
	rk->dir = CT_DIR_REPLY;
	return m;
}

/* masq_reply_entry is the reply entry (key rk, from masq_entry) of the
 * masqueraded flow whose masq entry is m: nat_addr and nat_port name the
 * service the reply comes from. 0 when it is gone or another flow's. */
static __always_inline struct ct_value *masq_reply_entry(const struct pkt *p, const struct ct_value *m,
							 const struct ct_key *rk, __u64 now)
{
	struct ct_value *r = bpf_map_lookup_elem(ct_map(p->proto), rk);

	if (!r || r->expires_ns <= now || !(r->flags & CT_F_MASQ) || r->svc_id != m->svc_id ||
	    r->masq_port != p->dport)
		return 0;
	return r;
}

/* masq_reply_seen refreshes a reply's two entries and, when the reply
 * entry was written (a second at most apart), the forward entry, made
 * again if gone so the client's next packet keeps its port. A reply never
 * shortens the masq entry's life (a backend's FIN would, while the client
 * may still send): the forward side closes it (masq_keep). */
static __always_inline void masq_reply_seen(const struct pkt *p, struct ct_value *m, struct ct_value *r,
					    const struct ct_key *rk, __u64 now)
{
	__u64 held = m->expires_ns;

	ct_refresh(m, p, now, CT_F_REPLIED);
	if (m->expires_ns < held)
		m->expires_ns = held;
	if (ct_refresh(r, p, now, CT_F_REPLIED))
		ct_keep_forward(rk, r, now);
}

/* ttl_dec takes one hop off the TTL (hop limit) of the packet whose
 * Ethernet header is at data, as a router does; -1 when it has none left
 * to give. The IPv4 header checksum is never offloaded: plain arithmetic
 * keeps it. */
static __always_inline int ttl_dec(void *data, void *end, __u8 family)
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

/* ---- the tc path's share ---- */

/* tc_send_on sends skb, translated (p: its addresses now), the way the
 * FIB says, resolving the neighbour if need be; the kernel's forwarding
 * would take no packet from the node's own address. -1 without a route,
 * or with no TTL left. The lookup's parameters live in the scratch: the
 * fragment path's frames leave no room. */
static __noinline int tc_send_on(struct __sk_buff *skb, const struct pkt *p)
{
	struct key_scratch *s = key_scratch();
	long rc = -1;

	if (!s)
		return TC_ACT_SHOT;
	struct bpf_fib_lookup *fib = (void *)s->fib;
	if (ttl_dec((void *)(long)skb->data, (void *)(long)skb->data_end, p->family) == 0)
		rc = fib_lookup_way(skb, skb->ifindex, p->dst, p->src, p->proto, fib);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		struct ethhdr *eth = (void *)(long)skb->data;

		if ((void *)(eth + 1) > (void *)(long)skb->data_end)
			return TC_ACT_SHOT;
		__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
		return bpf_redirect(fib->ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh *nh = (void *)s->nh;

		__builtin_memset(nh, 0, sizeof(*nh));
		if (fib->family == AF_INET) {
			nh->nh_family = AF_INET;
			nh->ipv4_nh = fib->ipv4_dst;
		} else {
			nh->nh_family = AF_INET6;
			__builtin_memcpy(nh->ipv6_nh, fib->ipv6_dst, 16);
		}
		return bpf_redirect_neigh(fib->ifindex, nh, sizeof(*nh), 0);
	}
	return -1;
}

/* masq_send_on is tc_send_on, dropping (no_route) what has no way on. */
static __always_inline int masq_send_on(struct __sk_buff *skb, const struct pkt *p, __u32 svc_id)
{
	int verdict = tc_send_on(skb, p);

	if (verdict >= 0)
		return verdict;
	record_drop(skb, p, DROP_NO_ROUTE, svc_id, HOOK_FROM_NETDEV);
	return TC_ACT_SHOT;
}

/* masq_forward_tc sends on a forward packet of a masqueraded flow that XDP
 * left (lb_service translated its destination already): from this node's
 * address and the flow's port mport, as XDP would have. fwd is the flow's
 * forward key, under which a first fragment's later ones will follow. */
static __always_inline int masq_forward_tc(struct __sk_buff *skb, struct pkt *p, const struct ct_key *fwd,
					   __be16 mport, __u32 svc_id)
{
	const __u8 *self = node_addr(p->family);

	if (!self || nat_src(skb, p, self, mport) < 0) {
		record_drop(skb, p, DROP_NAT_FAILED, svc_id, HOOK_FROM_NETDEV);
		return TC_ACT_SHOT;
	}
	if (p->frag_first)
		frag_record(p, fwd, 0, FRAG_F_MASQ_FWD, HOOK_FROM_NETDEV);
	count(COUNTER_MASQ_FORWARD);
	return masq_send_on(skb, p, svc_id);
}

/* masq_reply_tc sends a backend's reply to a masqueraded flow back to the
 * client, from the service, when XDP left it. It returns the verdict, or
 * -1 when p is none. Its frame is small (from_netdev's comes first): the
 * reply key in the scratch, the service address where the entry keeps it. */
static __noinline int masq_reply_tc(struct __sk_buff *skb, struct pkt *p)
{
	struct key_scratch *s = key_scratch();
	__u64 now = ct_now();

	if (!s)
		return -1;
	struct ct_key *rk = &s->ct2;
	struct ct_value *m = masq_entry(p, now, rk);
	struct ct_value *r = m ? masq_reply_entry(p, m, rk, now) : 0;
	if (!r)
		return -1;
	masq_reply_seen(p, m, r, rk, now);
	if (p->frag_first)
		frag_record(p, 0, 0, FRAG_F_MASQ_REPLY, HOOK_FROM_NETDEV);
	if (nat_src(skb, p, r->nat_addr, r->nat_port) < 0 || nat_dst(skb, p, rk->dst, rk->dport) < 0) {
		record_drop(skb, p, DROP_NAT_FAILED, r->svc_id, HOOK_FROM_NETDEV);
		return TC_ACT_SHOT;
	}
	count(COUNTER_MASQ_REPLY);
	return masq_send_on(skb, p, r->svc_id);
}

/* masq_frag_store writes the addresses src and dst into the IP header of
 * the later fragment p (it has no L4 header), and into p. */
static __always_inline int masq_frag_store(struct __sk_buff *skb, struct pkt *p, const __u8 *src,
					   const __u8 *dst)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	const __u32 *o = (const __u32 *)p->src, *n = (const __u32 *)src;

	if (ip_store_addr(data, end, p->family, 1, n, 1, addr_csum_diff(p->family, o, n)) < 0)
		return -1;
	o = (const __u32 *)p->dst;
	n = (const __u32 *)dst;
	if (ip_store_addr(data, end, p->family, 0, n, 1, addr_csum_diff(p->family, o, n)) < 0)
		return -1;
	__builtin_memcpy(p->src, src, SLUICE_ADDR_LEN);
	__builtin_memcpy(p->dst, dst, SLUICE_ADDR_LEN);
	return 0;
}

/* masq_frag_follow sends on a later fragment of a masqueraded flow (flags:
 * its first fragment's record, whose ports p now carries), translated as
 * the flow's entries say. Its frame is small (frag_follow's and
 * from_netdev's come first): keys in the scratch, addresses read where
 * the entries keep them. */
static __noinline int masq_frag_follow(struct __sk_buff *skb, struct pkt *p, __u32 flags)
{
	struct key_scratch *s = key_scratch();
	__u64 now = ct_now();
	const __u8 *src, *dst;
	__u32 svc_id;

	if (!s)
		return TC_ACT_SHOT;
	if (flags & FRAG_F_MASQ_FWD) {
		ct_key_of(&s->ct, p, 0, CT_DIR_SERVICE);
		struct ct_value *ct = bpf_map_lookup_elem(ct_map(p->proto), &s->ct);
		src = node_addr(p->family);
		if (!ct || ct->expires_ns <= now || !(ct->flags & CT_F_MASQ) || !src)
			goto gone;
		dst = ct->nat_addr;
		svc_id = ct->svc_id;
	} else {
		struct ct_value *m = masq_entry(p, now, &s->ct);
		struct ct_value *r = m ? masq_reply_entry(p, m, &s->ct, now) : 0;
		if (!r)
			goto gone;
		src = r->nat_addr;
		dst = m->nat_addr;
		svc_id = r->svc_id;
	}
	if (masq_frag_store(skb, p, src, dst) < 0) {
		record_drop(skb, p, DROP_NAT_FAILED, svc_id, HOOK_FROM_NETDEV);
		return TC_ACT_SHOT;
	}
	count(flags & FRAG_F_MASQ_FWD ? COUNTER_MASQ_FORWARD : COUNTER_MASQ_REPLY);
	return masq_send_on(skb, p, svc_id);
gone:
	record_drop(skb, p, DROP_FRAG_NO_FLOW, 0, HOOK_FROM_NETDEV);
	return TC_ACT_SHOT;
}

#endif
