/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* drop.h: drop counters and drop events. */
#ifndef SLUICE_LIB_DROP_H
#define SLUICE_LIB_DROP_H

#include "maps.h"
#include "parse.h"

static __always_inline void record_drop(struct __sk_buff *skb, const struct pkt *p, __u16 reason,
					__u32 svc_id, __u8 hook)
{
	__u32 key = reason;
	struct drop_counter *c = bpf_map_lookup_elem(&sluice_drops_v1, &key);

	if (c) {
		c->packets++;
		c->bytes += skb->len;
	}
	struct drop_event *e = bpf_ringbuf_reserve(&sluice_events_v1, sizeof(*e), 0);
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
	e->svc_id = svc_id;
	bpf_ringbuf_submit(e, 0);
}

#endif
