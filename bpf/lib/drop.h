/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* drop.h: drop counters and drop events. */
#ifndef SLUICE_LIB_DROP_H
#define SLUICE_LIB_DROP_H

#include "maps.h"
#include "parse.h"

/* record_drop_of counts a drop by reason and hook and reports it on the
 * event ring: for policy drops with the endpoint (id) and the remote's
 * identity, otherwise with the service (id). */
static __always_inline void record_drop_of(struct __sk_buff *skb, const struct pkt *p, __u16 reason, __u32 id,
					   __u32 identity, __u8 hook)
{
	__u32 key = (__u32)hook * DROP_REASON_MAX + reason;
	struct drop_counter *c = bpf_map_lookup_elem(&sluice_drops_v2, &key);

	if (c) {
		c->packets++;
		c->bytes += skb->len;
	}
	struct drop_event *e = bpf_ringbuf_reserve(&sluice_events_v2, sizeof(*e), 0);
	if (!e)
		return;
	e->timestamp_ns = bpf_ktime_get_ns();
	e->ifindex = skb->ifindex;
	e->reason = reason;
	e->proto = p->proto;
	e->hook = hook;
	__builtin_memcpy(e->src, p->src, SLUICE_ADDR_LEN);
	__builtin_memcpy(e->dst, p->dst, SLUICE_ADDR_LEN);
	e->sport = p->sport;
	e->dport = p->dport;
	e->svc_id = id;
	e->identity = identity;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void record_drop(struct __sk_buff *skb, const struct pkt *p, __u16 reason,
					__u32 svc_id, __u8 hook)
{
	record_drop_of(skb, p, reason, svc_id, 0, hook);
}

#endif
