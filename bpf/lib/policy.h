/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* policy.h: NetworkPolicy verdicts. */
#ifndef SLUICE_LIB_POLICY_H
#define SLUICE_LIB_POLICY_H

#include <linux/pkt_cls.h>

#include "conntrack.h"
#include "drop.h"

/* ---- NetworkPolicy ---------------------------------------------------------
 *
 * Judged at the pod's veth: egress in from_pod (after DNAT, so against the
 * chosen backend), ingress in to_pod (with the real client address, since
 * DNAT happened on the client's node). Every IP protocol is judged: a rule
 * without ports admits any protocol, one with ports only its protocols.
 * A flow let through by a judged packet is recorded in conntrack
 * (CT_DIR_POLICY_EGRESS/INGRESS) so its later packets and its replies
 * pass, in both directions, while policies change. Nothing else admits a
 * packet: a packet of an isolated direction without such an entry is
 * judged as new (a mid-stream packet of a flow opened before isolation
 * included), and a TCP SYN is always judged against today's rules. ICMP
 * errors pass when they quote a recorded flow.
 */

static __always_inline int policy_active(void)
{
	__u32 zero = 0;
	struct policy_state *st = bpf_map_lookup_elem(&sluice_policy_state_v1, &zero);

	return st && st->isolated_endpoints;
}

/* rule_matches looks up the endpoint's rules for one remote identity: the
 * LPM finds the most specific protocol/port entry, wildcards included. */
static __always_inline int rule_matches(struct key_scratch *s, __u32 endpoint, __u32 remote, __u8 dir,
					const struct pkt *p)
{
	s->rule.prefixlen = POLICY_KEY_BITS;
	s->rule.endpoint = endpoint;
	s->rule.remote = remote;
	s->rule.dir = dir;
	s->rule.proto = p->proto;
	s->rule.port = p->dport;
	return bpf_map_lookup_elem(&sluice_policy_v1, &s->rule) != 0;
}

/* policy_allows decides a new flow of an isolated direction: the remote's
 * pod identity, its CIDR identity (or world) and "any remote" are tried.
 * It leaves the remote's identity and the remote of the rule that matched
 * in the scratch event. */
static __always_inline int policy_allows(struct key_scratch *s, __u32 endpoint, __u8 dir, const __u8 *remote,
					 const struct pkt *p)
{
	struct ipcache_value *pod = bpf_map_lookup_elem(&sluice_ipcache_v1, remote);

	s->ev.identity = IDENTITY_WORLD;
	if (pod) {
		s->ev.identity = pod->identity;
		s->ev.matched = pod->identity;
		if (pod->identity == IDENTITY_HOST)
			return 1; /* kubelet probes and the node's own traffic */
		if (rule_matches(s, endpoint, pod->identity, dir, p))
			return 1;
	}
	s->cidr.prefixlen = 128;
	__builtin_memcpy(s->cidr.addr, remote, SLUICE_ADDR_LEN);
	struct ipcache_value *cidr = bpf_map_lookup_elem(&sluice_policy_cidrs_v1, &s->cidr);
	__u32 cidr_id = cidr ? cidr->identity : IDENTITY_WORLD;
	if (!pod)
		s->ev.identity = cidr_id;
	s->ev.matched = cidr_id;
	if (rule_matches(s, endpoint, cidr_id, dir, p))
		return 1;
	s->ev.matched = IDENTITY_ANY;
	return rule_matches(s, endpoint, IDENTITY_ANY, dir, p);
}

/* ct_live looks up s->ct and refreshes a live entry with p, adding flags
 * (CT_F_REPLIED when p goes the other way from the recorded flow). */
static __always_inline int ct_live(struct key_scratch *s, const struct pkt *p, __u64 now, __u8 add)
{
	struct ct_value *ct = bpf_map_lookup_elem(ct_map(s->ct.proto), &s->ct);

	if (!ct || ct->expires_ns <= now)
		return 0;
	ct_refresh(ct, p, now, add);
	return 1;
}

/* icmp_error_of_flow reports whether an ICMP error quotes a packet of a
 * flow recorded for policy, either way round (the endpoint may have sent
 * the quoted packet or received it). The quote is that of the packet as it
 * crossed this veth, so it matches the recorded tuple. */
static __noinline int icmp_error_of_flow(struct __sk_buff *skb, const struct pkt *p)
{
	struct key_scratch *s = key_scratch();

	if (!s)
		return 0;
	struct pkt *in = &s->inner;
	__u64 now = ct_now();

	__builtin_memset(in, 0, sizeof(*in));
	if (parse_l3(skb, p->l4_off + 8, p->family, in) < 0 || in->frag)
		return 0;
	for (int rev = 0; rev < 2; rev++) {
		ct_key_of(&s->ct, in, rev, CT_DIR_POLICY_EGRESS);
		if (ct_live(s, in, now, 0))
			return 1;
		ct_key_of(&s->ct, in, rev, CT_DIR_POLICY_INGRESS);
		if (ct_live(s, in, now, 0))
			return 1;
	}
	return 0;
}

/* policy_event makes the scratch event pending: its type and reason, its
 * policy part (policy_allows left identity and matched when the endpoint
 * is isolated in dir) and, outside a service flow, no service part. */
static __always_inline void policy_event(struct key_scratch *s, __u8 type, __u16 reason, __u32 endpoint,
					 __u8 dir, __u16 flags, __u32 svc_id)
{
	if (!(flags & EVENT_F_ISOLATED)) {
		s->ev.identity = 0;
		s->ev.matched = 0;
	}
	s->ev.type = type;
	s->ev.reason = reason;
	s->ev.flags = EVENT_F_POLICY | flags;
	s->ev.dir = dir;
	s->ev.endpoint = endpoint;
	s->ev.pad2 = 0;
	if (!svc_id)
		event_no_service(&s->ev);
}

/* policy_enforce's verdict carries this bit when it left an event to send. */
#define POLICY_EVENT 0x100

/* policy_enforce judges the packet for the local endpoint at local (the
 * source for egress, the destination for ingress). It returns TC_ACT_OK
 * or TC_ACT_SHOT, counting a drop. Not inlined, so its few locals do not
 * grow the callers' frames.
 *
 * Events: for a drop, or a new flow it records (TRACE_POLICY), it leaves
 * a pending event in the scratch and sets POLICY_EVENT in the verdict; the
 * caller sends it (event_send: from here the stack would be too deep), so
 * a packet of a known flow costs nothing more. A service flow's caller
 * makes it its one TRACE_SERVICE event, with the policy part
 * (EVENT_F_POLICY set when policy judged or recorded the flow). */
static __noinline int policy_enforce(struct __sk_buff *skb, const struct pkt *p, __u8 dir, __u32 svc_id)
{
	const __u8 *local = dir == POLICY_EGRESS ? p->src : p->dst;
	const __u8 *remote = dir == POLICY_EGRESS ? p->dst : p->src;
	struct key_scratch *s = key_scratch();

	if (!s)
		return TC_ACT_SHOT; /* cannot happen: a one-slot per-CPU array */
	s->ev.type = 0;
	s->ev.flags = 0;
	struct policy_endpoint_value *ep = bpf_map_lookup_elem(&sluice_policy_endpoints_v1, local);
	if (!ep || !(ep->flags & (POLICY_F_INGRESS_ISOLATED | POLICY_F_EGRESS_ISOLATED)))
		return TC_ACT_OK;
	__u32 isolated = dir == POLICY_EGRESS ? POLICY_F_EGRESS_ISOLATED : POLICY_F_INGRESS_ISOLATED;
	__u8 hook = dir == POLICY_EGRESS ? HOOK_FROM_POD : HOOK_TO_POD;
	__u16 reason = dir == POLICY_EGRESS ? DROP_POLICY_EGRESS : DROP_POLICY_INGRESS;

	if (is_icmp_error(p)) {
		/* Not about a flow of ours (the caller asked
		 * icmp_error_of_flow): judged like any ICMP, not recorded. */
		if (!(ep->flags & isolated) || policy_allows(s, ep->id, dir, remote, p))
			return TC_ACT_OK;
		goto drop;
	}

	__u8 this_way = dir == POLICY_EGRESS ? CT_DIR_POLICY_EGRESS : CT_DIR_POLICY_INGRESS;
	__u8 other_way = dir == POLICY_EGRESS ? CT_DIR_POLICY_INGRESS : CT_DIR_POLICY_EGRESS;
	__u64 now = ct_now();
	/* A SYN opens a connection: it is judged against today's rules even
	 * when an older flow left an entry on its tuple, and it is never a
	 * reply. */
	if (!opens_connection(p)) {
		/* A reply to a flow this endpoint let through the other way,
		 * or the next packet of one it let through this way. */
		ct_key_of(&s->ct, p, 1, other_way);
		if (ct_live(s, p, now, CT_F_REPLIED))
			return TC_ACT_OK;
		ct_key_of(&s->ct, p, 0, this_way);
		if (ct_live(s, p, now, 0))
			return TC_ACT_OK;
	}
	__u16 judged = ep->flags & isolated ? EVENT_F_ISOLATED : 0;
	if (judged && !policy_allows(s, ep->id, dir, remote, p))
		goto drop;
	/* Record the flow so its replies pass even through the other, also
	 * isolated, direction of this endpoint. */
	ct_key_of(&s->ct, p, 0, this_way);
	__u8 flags = 0;
	__builtin_memset(&s->ctv, 0, sizeof(s->ctv));
	s->ctv.svc_id = svc_id;
	s->ctv.expires_ns = now + ct_update(p, &flags);
	s->ctv.flags = flags;
	ct_put(&s->ct, &s->ctv);
	if (!events_on())
		return TC_ACT_OK;
	policy_event(s, EVENT_TRACE, TRACE_POLICY, ep->id, dir, judged, svc_id);
	return TC_ACT_OK | POLICY_EVENT;
drop:
	count_drop(skb, reason, hook);
	if (!events_on())
		return TC_ACT_SHOT;
	policy_event(s, EVENT_DROP, reason, ep->id, dir, EVENT_F_ISOLATED, svc_id);
	return TC_ACT_SHOT | POLICY_EVENT;
}

/* policy_isolates reports whether the endpoint at addr is isolated in dir:
 * its packets that cannot be judged (unreadable, orphan fragments) go. */
static __always_inline int policy_isolates(const __u8 *addr, __u8 dir)
{
	struct policy_endpoint_value *ep = bpf_map_lookup_elem(&sluice_policy_endpoints_v1, addr);
	__u32 isolated = dir == POLICY_EGRESS ? POLICY_F_EGRESS_ISOLATED : POLICY_F_INGRESS_ISOLATED;

	return ep && (ep->flags & isolated);
}

#endif
