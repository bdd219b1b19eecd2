/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* drop.h: drop counters and drop events. */
#ifndef SLUICE_LIB_DROP_H
#define SLUICE_LIB_DROP_H

#include "events.h"
#include "maps.h"
#include "parse.h"

/* count_drop_len counts a drop of len bytes by reason and hook. */
static __always_inline void count_drop_len(__u32 len, __u16 reason, __u8 hook)
{
	__u32 key = (__u32)hook * DROP_REASON_MAX + reason;
	struct drop_counter *c = bpf_map_lookup_elem(&sluice_drops_v2, &key);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

/* count_drop counts a drop by reason and hook. */
static __always_inline void count_drop(struct __sk_buff *skb, __u16 reason, __u8 hook)
{
	count_drop_len(skb->len, reason, hook);
}

/* record_drop counts a drop and reports it on the event ring, with the
 * service (svc_id) when it is a service's. Policy drops are policy.h's. */
static __always_inline void record_drop(struct __sk_buff *skb, const struct pkt *p, __u16 reason,
					__u32 svc_id, __u8 hook)
{
	count_drop(skb, reason, hook);
	if (events_on())
		event_drop(skb, p, reason, svc_id, hook);
}

#endif
