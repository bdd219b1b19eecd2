/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* xdp.h: the uplinks' XDP path: early drops, and direct server return
 * (sending a flow on to its backend's node in Geneve, and receiving it
 * there). */
#ifndef SLUICE_LIB_XDP_H
#define SLUICE_LIB_XDP_H

#include <linux/udp.h>

#include "conntrack.h"
#include "drop.h"
#include "lb.h"
#include "maps.h"
#include "parse.h"

/* Outer headers of a DSR packet after the Ethernet header. */
#define DSR_HDR4      (sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof(struct geneve_dsr))
#define DSR_HDR6      (sizeof(struct ipv6hdr) + sizeof(struct udphdr) + sizeof(struct geneve_dsr))
#define DSR_OUTER_TTL 64

/* xdp_event_drop is event_drop for XDP: a drop event at the uplink,
 * reported as from_netdev's. */
static __noinline void xdp_event_drop(struct xdp_md *ctx, const struct pkt *p, __u16 reason, __u32 svc_id)
{
	event_drop_at(ctx->ingress_ifindex, p, reason, svc_id, HOOK_FROM_NETDEV);
}

/* xdp_record_drop is record_drop for XDP: a drop by reason, of the service
 * svc_id or of none, counted and reported at the uplink (HOOK_FROM_NETDEV,
 * the hook XDP runs ahead of). */
static __always_inline void xdp_record_drop(struct xdp_md *ctx, const struct pkt *p, __u16 reason,
					    __u32 svc_id)
{
	count_drop_len(ctx->data_end - ctx->data, reason, HOOK_FROM_NETDEV);
	if (events_on())
		xdp_event_drop(ctx, p, reason, svc_id);
}

/* xdp_event_service reports a new flow XDP sent on to its backend's node:
 * the TRACE_SERVICE event from_netdev would have sent for it. */
static __noinline void xdp_event_service(struct xdp_md *ctx, const struct pkt *p, __u32 svc_id,
					 __u32 backend_id, const struct backend_value *be)
{
	struct key_scratch *s = key_scratch();

	if (!s || !event_rate)
		return;
	event_no_policy(&s->ev);
	s->ev.type = EVENT_TRACE;
	s->ev.reason = TRACE_SERVICE;
	s->ev.svc_id = svc_id;
	s->ev.backend_id = backend_id;
	__builtin_memcpy(s->ev.nat_addr, be->addr, SLUICE_ADDR_LEN);
	s->ev.nat_port = be->port;
	s->ev.pad = 0;
	event_emit(s, ctx->ingress_ifindex, p, HOOK_FROM_NETDEV);
}

/* xdp_nat rewrites the source (is_src) or destination of the TCP or UDP
 * packet p (whose Ethernet header is at data) to addr:port, keeping its
 * checksums exact. It reads the old address and port from the packet, so
 * p may still describe the packet as it came. */
static __always_inline int xdp_nat(void *data, void *end, const struct pkt *p, int is_src, const __u8 *addr,
				   __be16 port)
{
	__u64 l4 = p->l4_off;

	if (l4 > PARSE_MAX_OFF)
		return -1;
	asm volatile("%0 &= 0x3ff" : "+r"(l4));
	void *l4h = data + l4;
	__sum16 *l4sum = 0;
	if (p->proto == IPPROTO_TCP) {
		if (l4h + sizeof(struct tcphdr) > end)
			return -1;
		l4sum = &((struct tcphdr *)l4h)->check;
	} else if (p->proto == IPPROTO_UDP) {
		if (l4h + sizeof(struct udphdr) > end)
			return -1;
		l4sum = &((struct udphdr *)l4h)->check;
		/* A zero UDP checksum over IPv4 means none: it stays none. */
		if (p->family == 4 && *l4sum == 0)
			l4sum = 0;
	} else {
		return -1;
	}
	__be16 *l4port = is_src ? l4h : l4h + 2;
	if (p->family == 4) {
		struct iphdr *ip = data + ETH_HLEN;

		if ((void *)(ip + 1) > end)
			return -1;
		__be32 *at = is_src ? &ip->saddr : &ip->daddr;
		__be32 from = *at, to;
		__builtin_memcpy(&to, addr + 12, 4);
		csum_replace_words(&ip->check, &from, &to, 1);
		if (l4sum)
			csum_replace_words(l4sum, &from, &to, 1);
		*at = to;
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > end)
			return -1;
		void *at = is_src ? (void *)&ip6->saddr : (void *)&ip6->daddr;
		__be32 from[4], to[4];
		__builtin_memcpy(from, at, 16);
		__builtin_memcpy(to, addr, 16);
		csum_replace_words(l4sum, from, to, 4);
		__builtin_memcpy(at, to, 16);
	}
	if (l4sum) {
		csum_replace2(l4sum, *l4port, port);
		if (p->proto == IPPROTO_UDP && *l4sum == 0)
			*l4sum = 0xffff;
	}
	*l4port = port;
	return 0;
}

/* How long XDP trusts an answer of the FIB: a lookup costs as much as
 * the rest of a forwarded packet's work, and a flood asks it again for
 * every packet. A route or neighbour change reaches XDP this much later
 * at most (the kernel's neighbour entries themselves are trusted for
 * seconds). */
#define FIB_CACHE_NS (100ULL * 1000 * 1000)

static __always_inline __u32 fib_cache_slot(const __u8 *dst)
{
	__u32 w[4];

	__builtin_memcpy(w, dst, 16);
	return ((w[0] ^ w[1] ^ w[2] ^ w[3]) * 0x9e3779b1u) >> 24; /* FIB_CACHE_SLOTS */
}

/* xdp_way is the way from src to dst (16-byte addresses of one family)
 * for a packet that came in on ctx's device: this CPU's cached answer of
 * the FIB while it is fresh, else the FIB's, cached. 0 when the FIB has a
 * route and a resolved neighbour: XDP cannot resolve a neighbour, and the
 * agent keeps the other nodes' resolved (managed entries). */
static __always_inline const struct fib_cache_entry *xdp_way(struct xdp_md *ctx, const __u8 *dst,
							     const __u8 *src, __u64 now)
{
	__u32 slot = fib_cache_slot(dst);
	struct fib_cache_entry *e = bpf_map_lookup_elem(&sluice_fib_cache, &slot);

	if (!e)
		return 0;
	if (e->expires_ns > now && e->in_ifindex == ctx->ingress_ifindex && addr_eq(e->dst, dst) &&
	    addr_eq(e->src, src))
		return e;
	struct bpf_fib_lookup fib;
	if (fib_lookup_way(ctx, ctx->ingress_ifindex, dst, src, 0, &fib) != BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	__builtin_memcpy(e->dst, dst, SLUICE_ADDR_LEN);
	__builtin_memcpy(e->src, src, SLUICE_ADDR_LEN);
	e->in_ifindex = ctx->ingress_ifindex;
	e->ifindex = fib.ifindex;
	__builtin_memcpy(e->dmac, fib.dmac, ETH_ALEN);
	__builtin_memcpy(e->smac, fib.smac, ETH_ALEN);
	e->expires_ns = now + FIB_CACHE_NS;
	return e;
}

/* xdp_send puts the frame on its way: the next hop's Ethernet header,
 * then out of the device it came in on (XDP_TX) or another. */
static __always_inline int xdp_send(struct xdp_md *ctx, const struct fib_cache_entry *way)
{
	struct ethhdr *eth = (void *)(long)ctx->data;

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, way->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, way->smac, ETH_ALEN);
	if (way->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(way->ifindex, 0);
}

/* ---- sending a flow on (the node that received it) ---- */

/* dsr_route finds the way towards the backend's node ep, and this node's
 * address of its family (the outer source). */
static __always_inline const struct fib_cache_entry *dsr_route(struct xdp_md *ctx, const __u8 *ep, __u8 *self,
							       __u64 now)
{
	const __u8 *own = node_addr(is_v4_mapped(ep) ? 4 : 6);

	if (!own || addr_eq(own, ep))
		return 0;
	__builtin_memcpy(self, own, SLUICE_ADDR_LEN);
	return xdp_way(ctx, ep, self, now);
}

/* ipv4_csum is the header checksum of a 20-byte IPv4 header. */
static __always_inline __u16 ipv4_csum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 c = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		c += w[i];
	return csum_fold32(c);
}

/* dsr_encap wraps the packet (its inner destination translated already)
 * for the backend's node ep (xdp_send writes the Ethernet addresses):
 * outer IP from self, UDP from a port of the flow's hash (so that routers spread
 * flows, not packets), Geneve with the service address option. The IPv4
 * UDP checksum is zero (none); over IPv6 too, which the receiving
 * xdp_netdev accepts (it takes the packet before any socket would check).
 * On failure the frame is unusable: the caller drops it. */
static __always_inline int dsr_encap(struct xdp_md *ctx, const struct pkt *p, const __u8 *ep,
				     const __u8 *self, const __u8 *vip, __be16 vport, __u32 hash)
{
	int outer4 = is_v4_mapped(ep);
	__u32 hdr = outer4 ? DSR_HDR4 : DSR_HDR6;
	__u32 inner_len = p->l4_off - ETH_HLEN + p->l4_len;

	if (bpf_xdp_adjust_head(ctx, -(int)hdr) < 0)
		return -1;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	/* Either family's headers: any inner packet is longer than the
	 * difference. */
	if (data + ETH_HLEN + DSR_HDR6 > end)
		return -1;
	struct udphdr *udp;
	if (outer4) {
		struct iphdr *ip = data + ETH_HLEN;

		eth->h_proto = bpf_htons(ETH_P_IP);
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = 0;
		ip->tot_len = bpf_htons(hdr + inner_len);
		ip->id = 0;
		ip->frag_off = bpf_htons(0x4000); /* DF: path MTU, not fragments */
		ip->ttl = DSR_OUTER_TTL;
		ip->protocol = IPPROTO_UDP;
		ip->check = 0;
		__builtin_memcpy(&ip->saddr, self + 12, 4);
		__builtin_memcpy(&ip->daddr, ep + 12, 4);
		ip->check = ipv4_csum(ip);
		udp = (void *)(ip + 1);
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN;

		eth->h_proto = bpf_htons(ETH_P_IPV6);
		*(__be32 *)ip6 = bpf_htonl(0x60000000);
		ip6->payload_len = bpf_htons(hdr - sizeof(*ip6) + inner_len);
		ip6->nexthdr = IPPROTO_UDP;
		ip6->hop_limit = DSR_OUTER_TTL;
		__builtin_memcpy(&ip6->saddr, self, 16);
		__builtin_memcpy(&ip6->daddr, ep, 16);
		udp = (void *)(ip6 + 1);
	}
	struct geneve_dsr *g = (void *)(udp + 1);
	if ((void *)(g + 1) > end)
		return -1;
	udp->source = bpf_htons(0xc000 | (hash & 0x3fff));
	udp->dest = bpf_htons(dsr_port);
	udp->len = bpf_htons(sizeof(*udp) + sizeof(*g) + inner_len);
	udp->check = 0;
	g->ver_optlen = sizeof(struct dsr_opt) / 4;
	g->flags = 0;
	g->proto = bpf_htons(p->family == 4 ? ETH_P_IP : ETH_P_IPV6);
	g->vni[0] = 0;
	g->vni[1] = 0;
	g->vni[2] = 0;
	g->reserved = 0;
	g->opt.opt_class = bpf_htons(DSR_OPT_CLASS);
	g->opt.type = DSR_OPT_TYPE;
	g->opt.len = (sizeof(struct dsr_opt) - 4) / 4;
	__builtin_memcpy(g->opt.vip, vip, SLUICE_ADDR_LEN);
	g->opt.vport = vport;
	g->opt.pad = 0;
	return 0;
}

/* xdp_flow finds the backend for XDP of p's flow to svc: the one its live
 * forward entry names when that entry is XDP's (flag: CT_F_DSR or
 * CT_F_MASQ; *live is then set to it), else a new choice (*live 0). 0
 * when the packet is tc's: the service has no backend, a flow tc began,
 * what no client sends first (a SYN-ACK or RST, as from_netdev judges),
 * SCTP, a local backend. */
static __always_inline struct backend_value *xdp_flow(struct pkt *p, const struct svc_value *svc, __u8 flag,
						      __u64 now, __u32 *backend_id, struct ct_value **live)
{
	struct key_scratch *s = key_scratch();
	struct backend_value *be = 0;

	*live = 0;
	if (!s || svc->backend_count == 0 || p->proto == IPPROTO_SCTP)
		return 0;
	if (p->proto == IPPROTO_TCP &&
	    ((p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK) ||
	     (p->tcp_flags & TCP_FLAG_RST)))
		return 0;
	ct_key_of(&s->ct, p, 0, CT_DIR_SERVICE);
	struct ct_value *ct = bpf_map_lookup_elem(ct_map(p->proto), &s->ct);
	if (ct && ct->expires_ns > now && ct->svc_id == svc->id &&
	    !((ct->flags & CT_F_CLOSING) && opens_connection(p))) {
		if (!(ct->flags & flag))
			return 0;
		be = bpf_map_lookup_elem(&sluice_backends_v2, &ct->backend_id);
		if (be && be->svc_id == svc->id && addr_eq(be->addr, ct->nat_addr) &&
		    be->port == ct->nat_port) {
			*backend_id = ct->backend_id;
			*live = ct;
		} else {
			be = 0;
		}
	}
	if (!be)
		be = select_backend(svc, p, now, backend_id);
	if (!be || (be->flags & BACKEND_F_LOCAL))
		return 0;
	return be;
}

/* dsr_forward sends a flow from outside to the service svc on to a remote
 * backend's node (loadBalancerMode dsr). It returns the XDP verdict, or -1
 * to leave the packet to from_netdev (tc) unchanged: a flow tc began, a
 * local backend, a backend of no node's pod CIDR (hostNetwork), no route
 * or neighbour yet. Which flows are sent on is kept in conntrack, so a
 * flow stays on the path it started on. */
static __always_inline int dsr_forward(struct xdp_md *ctx, struct pkt *p, const struct svc_value *svc)
{
	struct key_scratch *s = key_scratch();
	struct ct_value *ct;
	__u32 backend_id = 0;
	__u64 now = ct_now();
	struct backend_value *be = xdp_flow(p, svc, CT_F_DSR, now, &backend_id, &ct);

	if (!s || !be)
		return -1;
	int fresh = !ct;

	struct cidr_key key = {.prefixlen = 128};
	__builtin_memcpy(key.addr, be->addr, SLUICE_ADDR_LEN);
	struct tunnel_endpoint *ep = bpf_map_lookup_elem(&sluice_tunnel_v1, &key);
	const struct fib_cache_entry *way;
	__u8 self[SLUICE_ADDR_LEN];
	if (!ep || !(way = dsr_route(ctx, ep->addr, self, now)))
		return -1;
	if (p->l4_off - ETH_HLEN + p->l4_len > dsr_max_inner) {
		xdp_record_drop(ctx, p, DROP_DSR_TOO_BIG, svc->id);
		return XDP_DROP;
	}
	if (fresh) {
		struct ct_value *v = &s->ctv;

		__builtin_memset(v, 0, sizeof(*v));
		v->expires_ns = now + ct_update(p, &v->flags);
		v->flags |= CT_F_DSR;
		v->backend_id = backend_id;
		v->svc_id = svc->id;
		__builtin_memcpy(v->nat_addr, be->addr, SLUICE_ADDR_LEN);
		v->nat_port = be->port;
		ct_put(&s->ct, v);
	} else if (ct) {
		ct_refresh(ct, p, now, 0);
	}

	__u8 vip[SLUICE_ADDR_LEN];
	__be16 vport = p->dport;
	__u32 hash = flow_hash(p);
	__builtin_memcpy(vip, p->dst, SLUICE_ADDR_LEN);
	if (xdp_nat((void *)(long)ctx->data, (void *)(long)ctx->data_end, p, 0, be->addr, be->port) < 0 ||
	    dsr_encap(ctx, p, ep->addr, self, vip, vport, hash) < 0) {
		xdp_record_drop(ctx, p, DROP_NAT_FAILED, svc->id);
		return XDP_DROP;
	}
	count(COUNTER_DSR_SENT);
	if (fresh && events_on())
		xdp_event_service(ctx, p, svc->id, backend_id, be);
	return xdp_send(ctx, way);
}

/* ---- receiving it (the backend's node) ---- */

/* dsr_receive takes a packet sent on by another node's dsr_forward (p: its
 * outer headers): it records the reply entry that makes the backend's
 * replies come from the service address again (to_netdev), and strips the
 * outer headers for the kernel to deliver the inner packet to the
 * backend. It returns the XDP verdict, or -1 when the packet is not one. */
static __always_inline int dsr_receive(struct xdp_md *ctx, const struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 hdr = p->family == 4 ? DSR_HDR4 : DSR_HDR6;

	/* Only the outer headers dsr_encap writes: no IPv4 options, no IPv6
	 * extension headers. */
	if (p->proto != IPPROTO_UDP || p->frag || p->dport != bpf_htons(dsr_port) ||
	    p->l4_off != ETH_HLEN + hdr - sizeof(struct udphdr) - sizeof(struct geneve_dsr))
		return -1;
	struct geneve_dsr *g = data + ETH_HLEN + hdr - sizeof(struct geneve_dsr);
	if ((void *)(g + 1) > end)
		return -1;
	if (g->ver_optlen != sizeof(struct dsr_opt) / 4 || g->opt.opt_class != bpf_htons(DSR_OPT_CLASS) ||
	    g->opt.type != DSR_OPT_TYPE || g->opt.len != (sizeof(struct dsr_opt) - 4) / 4)
		return -1;
	__u32 idx = p->family == 4 ? 0 : 1;
	struct node_key *own = bpf_map_lookup_elem(&sluice_node_addrs_v1, &idx);
	if (!own || !addr_eq(own->addr, p->dst))
		return -1;

	/* From here on it claims to be ours: what does not hold is dropped.
	 * Only a node may send a flow on (a pod could otherwise hand a
	 * backend packets from any source), only to a backend of this node,
	 * only for a service. */
	struct key_scratch *s = key_scratch();
	if (!s)
		return XDP_DROP;
	struct pkt *in = &s->inner;
	__u8 family;
	if (g->proto == bpf_htons(ETH_P_IP))
		family = 4;
	else if (g->proto == bpf_htons(ETH_P_IPV6))
		family = 6;
	else
		goto invalid;
	__builtin_memset(in, 0, sizeof(*in));
	if (parse_l3_at(data, end, ETH_HLEN + hdr, family, in) < 0 || in->frag ||
	    (in->proto != IPPROTO_TCP && in->proto != IPPROTO_UDP))
		goto invalid;
	if (!bpf_map_lookup_elem(&sluice_nodes_v1, p->src) ||
	    !bpf_map_lookup_elem(&sluice_endpoints_v1, in->dst))
		goto invalid;
	if (in->proto == IPPROTO_TCP) {
		__u64 off = in->l4_off + 13;

		if (off > PARSE_MAX_OFF)
			goto invalid;
		asm volatile("%0 &= 0x3ff" : "+r"(off));
		__u8 *flags = data + off;
		if ((void *)(flags + 1) > end)
			goto invalid;
		in->tcp_flags = *flags;
	}
	struct svc_key sk = {};
	__u8 vip[SLUICE_ADDR_LEN];
	__be16 vport = g->opt.vport;
	__builtin_memcpy(vip, g->opt.vip, SLUICE_ADDR_LEN);
	__builtin_memcpy(sk.addr, vip, SLUICE_ADDR_LEN);
	sk.port = vport;
	sk.proto = in->proto;
	sk.scope = SVC_SCOPE_EXTERNAL;
	struct svc_value *svc = bpf_map_lookup_elem(&sluice_services_v1, &sk);
	if (!svc) {
		/* A NodePort on the sending node's address: this node serves
		 * the same port on its own. */
		__u32 vidx = is_v4_mapped(vip) ? 0 : 1;
		struct node_key *mine = bpf_map_lookup_elem(&sluice_node_addrs_v1, &vidx);

		if (!mine)
			goto invalid;
		__builtin_memcpy(sk.addr, mine->addr, SLUICE_ADDR_LEN);
		svc = bpf_map_lookup_elem(&sluice_services_v1, &sk);
		if (!svc)
			goto invalid;
	}

	/* The reply entry: the backend to the client, restoring the service. */
	__u64 now = ct_now();
	ct_key_of(&s->ct, in, 1, CT_DIR_REPLY);
	struct ct_value *ct = bpf_map_lookup_elem(ct_map(in->proto), &s->ct);
	if (ct && ct->expires_ns > now && (ct->flags & CT_F_DSR) && ct->svc_id == svc->id &&
	    addr_eq(ct->nat_addr, vip) && ct->nat_port == vport) {
		ct_refresh(ct, in, now, 0);
	} else {
		struct ct_value *v = &s->ctv;

		__builtin_memset(v, 0, sizeof(*v));
		v->expires_ns = now + ct_update(in, &v->flags);
		v->flags |= CT_F_DSR;
		v->svc_id = svc->id;
		__builtin_memcpy(v->nat_addr, vip, SLUICE_ADDR_LEN);
		v->nat_port = vport;
		ct_put(&s->ct, v);
	}

	/* The inner packet gets the outer Ethernet header, then the outer
	 * headers go. */
	struct ethhdr *eth = data;
	struct ethhdr *inner_eth = data + hdr;
	if ((void *)(eth + 1) > end || (void *)(inner_eth + 1) > end)
		return XDP_DROP;
	__builtin_memmove(inner_eth->h_dest, eth->h_dest, ETH_ALEN);
	__builtin_memmove(inner_eth->h_source, eth->h_source, ETH_ALEN);
	inner_eth->h_proto = g->proto;
	if (bpf_xdp_adjust_head(ctx, hdr) < 0)
		return XDP_DROP;
	count(COUNTER_DSR_RECEIVED);
	return XDP_PASS;
invalid:
	xdp_record_drop(ctx, p, DROP_DSR_INVALID, 0);
	return XDP_DROP;
}

#endif
