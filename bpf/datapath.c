//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The Sluice datapath: one object, whose SEC() entry points are here and
 * whose parts live in lib/ (see docs/architecture.md for the map of lib/).
 *
 *   from_pod     tcx ingress of a pod's host-side veth (what the pod sends):
 *                service load balancing, DNAT, conntrack, reject of
 *                services without backends, hairpin, egress policy.
 *   to_pod       tcx egress of the same veth (what the pod receives):
 *                reverse NAT of replies and ICMP errors, ingress policy.
 *   from_netdev  tcx ingress of the node's uplinks: NodePort, ExternalIP and
 *   to_netdev    LoadBalancer traffic from outside, and its replies.
 *   xdp_netdev   XDP on the same uplinks, ahead of from_netdev: early drops,
 *                direct server return (lib/xdp.h) and the masquerade of
 *                flows to remote backends (lib/xdp_masq.h, lib/masq.h).
 *   sock*        cgroup hooks: socket-level load balancing of the node's
 *                own sockets.
 *
 * Headers are read by direct packet access (pulled into the linear area
 * once when they are not there) and written with the csum helpers where
 * the checksum may be partial.
 */
#include "sluice.h"
#include "lib/config.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/events.h"
#include "lib/drop.h"
#include "lib/csum.h"
#include "lib/nat.h"
#include "lib/reject.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/frag.h"
#include "lib/source.h"
#include "lib/lb.h"
#include "lib/revnat.h"
#include "lib/sock.h"
#include "lib/xdp.h"
#include "lib/xdp_masq.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Force the exported types into BTF so bpf2go -type can generate them. */
const struct flow_event *unused_flow_event __attribute__((unused));
const enum event_type *unused_event_type __attribute__((unused));
const enum trace_point *unused_trace_point __attribute__((unused));
const enum event_flags *unused_event_flags __attribute__((unused));
const struct endpoint_key *unused_endpoint_key __attribute__((unused));
const struct endpoint_value *unused_endpoint_value __attribute__((unused));
const enum drop_reason *unused_drop_reason __attribute__((unused));
const enum svc_flags *unused_svc_flags __attribute__((unused));
const enum backend_flags *unused_backend_flags __attribute__((unused));
const enum ct_flags *unused_ct_flags __attribute__((unused));
const enum ct_dir *unused_ct_dir __attribute__((unused));
const enum svc_scope *unused_svc_scope __attribute__((unused));
const enum hook *unused_hook __attribute__((unused));
const enum mark *unused_mark __attribute__((unused));
const enum identity *unused_identity __attribute__((unused));
const enum policy_endpoint_flags *unused_policy_endpoint_flags __attribute__((unused));
const enum policy_dir *unused_policy_dir __attribute__((unused));
const enum policy_key_bits *unused_policy_key_bits __attribute__((unused));
const struct frag_key *unused_frag_key __attribute__((unused));
const struct endpoint_slot *unused_endpoint_slot __attribute__((unused));
const struct node_cidr *unused_node_cidr __attribute__((unused));
const enum endpoint_slots *unused_endpoint_slots __attribute__((unused));
const struct frag_value *unused_frag_value __attribute__((unused));
const enum frag_flags *unused_frag_flags __attribute__((unused));
const enum counter *unused_counter __attribute__((unused));
const enum sock_netns_flags *unused_sock_netns_flags __attribute__((unused));

/* judge applies the endpoint's policy (dir) to a packet that is not a
 * service flow; a first fragment that passes leaves its decision for the
 * rest of its datagram. */
static __always_inline int judge(struct __sk_buff *skb, struct pkt *p, __u8 dir, __u8 hook)
{
	if (!policy_active())
		return TC_ACT_OK;
	/* An ICMP error about a flow the endpoint has passes either way. */
	if (is_icmp_error(p) && icmp_error_of_flow(skb, p))
		return TC_ACT_OK;
	int verdict = policy_enforce(skb, p, dir, 0);

	if (verdict & POLICY_EVENT) {
		event_send(skb, p, hook);
		verdict &= ~POLICY_EVENT;
	}
	if (verdict == TC_ACT_OK && p->frag_first)
		frag_record(p, 0, 0, 0, hook);
	return verdict;
}

/* unreadable decides a packet parse could not read: dropped when the
 * endpoint it belongs to (at local) is isolated that way, otherwise left
 * to the kernel's own checks. */
static __always_inline int unreadable(struct __sk_buff *skb, const struct pkt *p, const __u8 *local, __u8 dir,
				      __u8 hook)
{
	if (!policy_active() || !policy_isolates(local, dir))
		return TC_ACT_OK;
	record_drop(skb, p, DROP_UNPARSEABLE, 0, hook);
	return TC_ACT_SHOT;
}

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	struct pkt p = {};
	int parsed = parse(skb, &p);

	if (parsed == PARSE_NOT_IP)
		return TC_ACT_OK;
	/* A pod may send only from its own addresses, policy or not: under
	 * policy a remote's address is its identity, and a pod without
	 * policy must not lend another pod's. */
	if (p.addrs && !pod_source_ok(&p, skb->ifindex)) {
		record_drop(skb, &p, DROP_SPOOFED_SOURCE, 0, HOOK_FROM_POD);
		return TC_ACT_SHOT;
	}
	if (parsed != PARSE_OK)
		return unreadable(skb, &p, p.src, POLICY_EGRESS, HOOK_FROM_POD);
	if (link_control(&p))
		return TC_ACT_OK;
	if (p.frag)
		return frag_follow(skb, &p, HOOK_FROM_POD,
				   policy_active() && policy_isolates(p.src, POLICY_EGRESS));
	if (has_ports(p.proto)) {
		if (addr_eq(p.dst, p.family == 4 ? hairpin_addr4 : hairpin_addr6))
			return hairpin_reply(skb, &p);
		struct svc_value *svc = lookup_service(&p, SVC_SCOPE_INTERNAL);
		if (svc)
			return lb_service(skb, &p, svc, HOOK_FROM_POD);
		if (p.proto == IPPROTO_TCP && (p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			forget_stale_reply(&p);
	}
	return judge(skb, &p, POLICY_EGRESS, HOOK_FROM_POD);
}

SEC("tc")
int to_pod(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (skb->mark == MARK_BOUNCED) {
		skb->mark = 0;
		return TC_ACT_OK; /* made or turned around by from_pod: final */
	}
	int parsed = parse(skb, &p);
	if (parsed == PARSE_NOT_IP)
		return TC_ACT_OK;
	if (parsed != PARSE_OK)
		return unreadable(skb, &p, p.dst, POLICY_INGRESS, HOOK_TO_POD);
	if (link_control(&p))
		return TC_ACT_OK;
	if (p.frag)
		return frag_follow(skb, &p, HOOK_TO_POD,
				   policy_active() && policy_isolates(p.dst, POLICY_INGRESS));
	if (p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6) {
		/* Judged as the pod will see it: an error about a service flow
		 * quotes the backend, as the flow was recorded. */
		if (judge(skb, &p, POLICY_INGRESS, HOOK_TO_POD) != TC_ACT_OK)
			return TC_ACT_SHOT;
		return icmp_error_translate(skb, &p, HOOK_TO_POD);
	}
	if (has_ports(p.proto)) {
		int verdict;

		if (service_reply(skb, &p, HOOK_TO_POD, &verdict))
			return verdict;
	}
	return judge(skb, &p, POLICY_INGRESS, HOOK_TO_POD);
}

/* ---- the node's uplink -------------------------------------------------------
 *
 * from_netdev (ingress) load-balances NodePort, ExternalIP and LoadBalancer
 * traffic (scope EXTERNAL entries); a flow to a backend on another node is
 * marked for masquerade (MARK_SNAT). to_netdev (egress) turns the backends'
 * replies back into replies from the service address.
 */

SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (parse(skb, &p) != PARSE_OK)
		return TC_ACT_OK;
	if (uplink_source_spoofed(&p)) {
		record_drop(skb, &p, DROP_SPOOFED_UPLINK, 0, HOOK_FROM_NETDEV);
		return TC_ACT_SHOT;
	}
	if (p.frag)
		return frag_follow(skb, &p, HOOK_FROM_NETDEV, 0);
	if (p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6)
		return icmp_error_translate(skb, &p, HOOK_FROM_NETDEV);
	if (!has_ports(p.proto))
		return TC_ACT_OK;
	if (masq_port_of(&p)) {
		int verdict = masq_reply_tc(skb, &p);

		if (verdict >= 0)
			return verdict;
	}
	struct svc_value *svc = lookup_service(&p, SVC_SCOPE_EXTERNAL);
	if (!svc) {
		if (frontend_unserved(skb, skb->ifindex, &p)) {
			record_drop(skb, &p, DROP_NO_FRONTEND_PORT, 0, HOOK_FROM_NETDEV);
			return TC_ACT_SHOT;
		}
		return TC_ACT_OK;
	}
	return lb_service(skb, &p, svc, HOOK_FROM_NETDEV);
}

/* xdp_netdev (acceleration native or generic) sees what arrives on an
 * uplink before the kernel allocates anything for it. It drops what must
 * never reach the stack (sources outside a frontend's
 * loadBalancerSourceRanges, ports of a frontend address no Service
 * serves), and under loadBalancerMode dsr sends flows
 * for remote backends on to the backend's node and takes those sent to
 * this node. Everything else passes to from_netdev unchanged. */
SEC("xdp")
int xdp_netdev(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct pkt p = {};
	__u8 family;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		family = 4;
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		family = 6;
	else
		return XDP_PASS;
	/* Fragments (the first one too) take the tc path, which follows a
	 * datagram's fragments. */
	if (parse_frame(data, end, family, &p) < 0 || p.frag || p.frag_first || !has_ports(p.proto) ||
	    uplink_source_spoofed(&p))
		return XDP_PASS;
	if (dsr_enabled) {
		int verdict = dsr_receive(ctx, &p);

		if (verdict >= 0)
			return verdict;
	} else if (masq_port_of(&p)) {
		int verdict = masq_reply(ctx, &p);

		if (verdict >= 0)
			return verdict;
	}
	struct svc_value *svc = lookup_service(&p, SVC_SCOPE_EXTERNAL);
	if (!svc) {
		if (frontend_unserved(ctx, ctx->ingress_ifindex, &p)) {
			xdp_record_drop(ctx, &p, DROP_NO_FRONTEND_PORT, 0);
			return XDP_DROP;
		}
		return XDP_PASS;
	}
	if ((svc->flags & SVC_F_SOURCE_RANGES) && !source_in_ranges(&p)) {
		xdp_record_drop(ctx, &p, DROP_SOURCE_RANGE, svc->id);
		return XDP_DROP;
	}
	int verdict = -1;
	if (dsr_enabled)
		verdict = dsr_forward(ctx, &p, svc);
	else if (masq_on())
		verdict = masq_forward(ctx, &p, svc);
	return verdict >= 0 ? verdict : XDP_PASS;
}

SEC("tc")
int to_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (parse(skb, &p) != PARSE_OK)
		return TC_ACT_OK;
	if (p.frag)
		return frag_follow(skb, &p, HOOK_TO_NETDEV, 0);
	if (p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6)
		return icmp_error_translate(skb, &p, HOOK_TO_NETDEV);
	if (!has_ports(p.proto))
		return TC_ACT_OK;
	int verdict;
	if (service_reply(skb, &p, HOOK_TO_NETDEV, &verdict))
		return verdict;
	return TC_ACT_OK;
}

/* ---- the overlay device ------------------------------------------------------
 *
 * to_tunnel (egress of the collect_md VXLAN device, routingMode vxlan)
 * picks the outer destination of every packet routed into the overlay:
 * the node whose pod CIDR holds the inner destination. Nothing else
 * crosses the overlay (the device has no neighbours to resolve).
 */

#define TUNNEL_VNI 1
#define TUNNEL_TTL 64

/* Every node's overlay device has one MAC (the device resolves no
 * neighbours, so frames leave addressed to it). The VXLAN driver drops a
 * frame from its own MAC as a loop, so the inner source becomes this. */
#define TUNNEL_SRC_MAC {0x0e, 0x73, 0x6c, 0x75, 0x69, 0x62}

SEC("tc")
int to_tunnel(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (parse(skb, &p) != PARSE_OK && !p.addrs)
		return TC_ACT_SHOT;
	struct cidr_key key = {.prefixlen = 128};
	__builtin_memcpy(key.addr, p.dst, SLUICE_ADDR_LEN);
	struct tunnel_endpoint *ep = bpf_map_lookup_elem(&sluice_tunnel_v1, &key);
	if (!ep) {
		record_drop(skb, &p, DROP_NO_TUNNEL_ENDPOINT, 0, HOOK_TO_NETDEV);
		return TC_ACT_SHOT;
	}
	struct bpf_tunnel_key tk = {.tunnel_id = TUNNEL_VNI, .tunnel_ttl = TUNNEL_TTL};
	__u64 flags = 0;
	if (is_v4_mapped(ep->addr)) {
		tk.remote_ipv4 = bpf_ntohl(*(__be32 *)&ep->addr[12]);
	} else {
		__builtin_memcpy(tk.remote_ipv6, ep->addr, SLUICE_ADDR_LEN);
		flags = BPF_F_TUNINFO_IPV6;
	}
	__u8 src_mac[ETH_ALEN] = TUNNEL_SRC_MAC;
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), src_mac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_set_tunnel_key(skb, &tk, sizeof(tk), flags) < 0) {
		record_drop(skb, &p, DROP_NO_TUNNEL_ENDPOINT, 0, HOOK_TO_NETDEV);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx) { return sock_lb(ctx, 4); }

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx) { return sock_lb(ctx, 4); }

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx) { return sock_revnat(ctx, 4); }

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx) { return sock_revnat(ctx, 4); }

SEC("cgroup/connect6")
int sock6_connect(struct bpf_sock_addr *ctx) { return sock_lb(ctx, 6); }

SEC("cgroup/sendmsg6")
int sock6_sendmsg(struct bpf_sock_addr *ctx) { return sock_lb(ctx, 6); }

SEC("cgroup/recvmsg6")
int sock6_recvmsg(struct bpf_sock_addr *ctx) { return sock_revnat(ctx, 6); }

SEC("cgroup/getpeername6")
int sock6_getpeername(struct bpf_sock_addr *ctx) { return sock_revnat(ctx, 6); }
