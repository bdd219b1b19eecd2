/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sock.h: socket-level load balancing (cgroup connect, sendmsg,
 * recvmsg, getpeername hooks). */
#ifndef SLUICE_LIB_SOCK_H
#define SLUICE_LIB_SOCK_H

#include "lb.h"

/* ---- socket-level load balancing --------------------------------------------
 *
 * cgroup hooks translate a service address once per socket (connect) or per
 * datagram (sendmsg) instead of per packet, and host processes (kubelet,
 * hostNetwork pods), whose packets never cross a pod veth, reach services
 * at all. recvmsg and getpeername show the service address again.
 *
 * Sockets of the node's network namespace are always served; a pod's only
 * once the agent has entered its namespace in sluice_sock_netns_v1 (and the
 * pod has not opted out). Everything else, and what these hooks never see
 * (raw sockets, SCTP, packets of sockets connected before), is left to the
 * tc programs on the pod's veth, which translate per packet.
 */

#define EPERM	     1
#define ECONNREFUSED 111

static __always_inline void sock_addr_load(struct bpf_sock_addr *ctx, __u8 family, __u8 *addr)
{
	if (family == 4) {
		addr_from_v4(addr, ctx->user_ip4);
		return;
	}
	__u32 w[4];

	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
	__builtin_memcpy(addr, w, 16);
}

static __always_inline void sock_addr_store(struct bpf_sock_addr *ctx, __u8 family, const __u8 *addr,
					    __be16 port)
{
	if (family == 4) {
		__u32 v4;

		__builtin_memcpy(&v4, addr + 12, 4);
		ctx->user_ip4 = v4;
	} else {
		__u32 w[4];

		__builtin_memcpy(w, addr, 16);
		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
	}
	ctx->user_port = (__u32)port;
}

/* sock_client finds who a socket's connection counts as: 0 (serve it,
 * with the zero address) for the node's own namespace, the pod's address
 * of the destination's family for a served pod; -1 leaves the socket to
 * the tc path. */
static __always_inline int sock_client(struct bpf_sock_addr *ctx, const __u8 *dst, __u8 *client)
{
	if (!host_netns_cookie)
		return 0; /* unit tests: every namespace is the node's */
	__u64 netns = bpf_get_netns_cookie(ctx);

	if (netns == host_netns_cookie)
		return 0;
	struct sock_netns_value *pod = bpf_map_lookup_elem(&sluice_sock_netns_v1, &netns);

	if (!pod || !(pod->flags & SOCK_NETNS_F_LB))
		return -1;
	/* An IPv6 socket may reach an IPv4 service by its v4-mapped address:
	 * the packets are IPv4, from the pod's IPv4 address. */
	const __u8 *own = is_v4_mapped(dst) ? pod->addr4 : pod->addr6;
	if (addr_is_zero(own))
		return -1; /* no address of that family: the tc path refuses it */
	__builtin_memcpy(client, own, SLUICE_ADDR_LEN);
	return 0;
}

/* event_sock reports a pod's connection translated at its socket as the tc
 * path reports a new service flow: TRACE_SERVICE from the pod, flagged
 * EVENT_F_SOCKET. */
static __noinline void event_sock(const struct pkt *p, __u32 svc_id, __u32 backend_id,
				  const struct backend_value *be)
{
	struct key_scratch *s = key_scratch();

	if (!s || !event_rate)
		return;
	event_service(svc_id, backend_id, be, 0, 0);
	s->ev.flags = EVENT_F_SOCKET;
	event_emit(s, 0, p, HOOK_FROM_POD);
}

/* sock_lb translates a connect or sendmsg to a service into one to a
 * backend, choosing it as the tc path would for the same client: Maglev,
 * or the client's ClientIP affinity, consulted and renewed here. */
static __always_inline int sock_lb(struct bpf_sock_addr *ctx, __u8 family)
{
	__u8 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	struct svc_key key = {};
	sock_addr_load(ctx, family, key.addr);
	key.port = (__be16)ctx->user_port;
	key.proto = proto;
	key.scope = SVC_SCOPE_INTERNAL;
	struct svc_value *svc = bpf_map_lookup_elem(&sluice_services_v1, &key);
	if (!svc)
		return 1;
	struct pkt p = {};
	if (sock_client(ctx, key.addr, p.src) < 0)
		return 1;
	if (svc->flags & SVC_F_SOURCE_RANGES) {
		/* A pod is judged by its address; the node's sockets have none
		 * yet, and pass when a node address is in the ranges. */
		__builtin_memcpy(p.dst, key.addr, SLUICE_ADDR_LEN);
		p.dport = key.port;
		p.proto = proto;
		if (addr_is_zero(p.src) ? !(svc->flags & SVC_F_SOURCE_RANGES_NODE) : !source_in_ranges(&p)) {
			bpf_set_retval(-EPERM);
			return 0;
		}
	}
	if (svc->backend_count == 0) {
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	/* No packet yet: the socket cookie stands in for the client port.
	 * Processes of the node share one client (the zero address). */
	__u64 cookie = bpf_get_socket_cookie(ctx);
	p.family = is_v4_mapped(key.addr) ? 4 : 6;
	p.proto = proto;
	p.sport = (__be16)cookie;
	p.dport = (__be16)(cookie >> 16);
	__u32 backend_id;
	struct backend_value *be = select_backend(svc, &p, ct_now(), &backend_id);
	if (!be)
		return 1; /* the tc path will count it */

	struct sock_revnat_key rk = {.cookie = cookie, .port = be->port};
	struct sock_revnat_value rv = {.port = key.port};
	__builtin_memcpy(rk.addr, be->addr, SLUICE_ADDR_LEN);
	__builtin_memcpy(rv.addr, key.addr, SLUICE_ADDR_LEN);
	bpf_map_update_elem(&sluice_sock_revnat_v1, &rk, &rv, BPF_ANY);
	sock_addr_store(ctx, family, be->addr, be->port);
	if (events_on() && !addr_is_zero(p.src)) {
		struct bpf_sock *sk = ctx->sk;

		__builtin_memcpy(p.dst, key.addr, SLUICE_ADDR_LEN);
		p.dport = key.port;
		p.sport = sk ? bpf_htons((__u16)sk->src_port) : 0;
		event_sock(&p, svc->id, backend_id, be);
	}
	return 1;
}

/* sock_revnat shows the service instead of the backend to recvmsg and
 * getpeername of a translated socket. */
static __always_inline int sock_revnat(struct bpf_sock_addr *ctx, __u8 family)
{
	struct sock_revnat_key rk = {.cookie = bpf_get_socket_cookie(ctx)};

	sock_addr_load(ctx, family, rk.addr);
	rk.port = (__be16)ctx->user_port;
	struct sock_revnat_value *rv = bpf_map_lookup_elem(&sluice_sock_revnat_v1, &rk);
	if (rv)
		sock_addr_store(ctx, family, rv->addr, rv->port);
	return 1;
}

#endif
