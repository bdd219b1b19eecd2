/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* events.h: flow events (struct flow_event) on sluice_events_v3, rate
 * limited per CPU. An event is made in the per-CPU scratch: the caller
 * fills its service and policy parts, event_send the rest. */
#ifndef SLUICE_LIB_EVENTS_H
#define SLUICE_LIB_EVENTS_H

#include "config.h"
#include "maps.h"
#include "parse.h"

/* The reader is woken when this much is unread (of the 1 MiB ring); an
 * event takes its size plus the ring's 8-byte header. */
#define EVENT_WAKEUP_BYTES (64 << 10)
#define EVENT_RECORD_BYTES (sizeof(struct flow_event) + 8)

/* events_on is false when the loader turned events off (event_rate 0);
 * the verifier then prunes every event path as dead code. */
static __always_inline int events_on(void) { return event_rate != 0; }

static __always_inline void event_no_service(struct flow_event *e)
{
	e->nat_port = 0;
	e->pad = 0;
	__builtin_memset(e->nat_addr, 0, SLUICE_ADDR_LEN);
	e->svc_id = 0;
	e->backend_id = 0;
}

static __always_inline void event_no_policy(struct flow_event *e)
{
	e->flags = 0;
	e->dir = 0;
	e->endpoint = 0;
	e->identity = 0;
	e->matched = 0;
	e->pad2 = 0;
}

/* event_emit sends the scratch event, whose type, reason, service and
 * policy parts the caller set, with the packet's tuple, unless this CPU's
 * rate limit holds it back: a GCRA bucket of event_burst events refilled
 * at event_rate per second (the loader keeps event_burst >= 1). The event
 * is filled before the bucket is asked, so that little lives across the
 * helper calls: its callers' frames sit deep in from_pod's. */
static __always_inline void event_emit(struct key_scratch *s, __u32 ifindex, const struct pkt *p, __u8 hook)
{
	struct flow_event *e = &s->ev;
	__u32 zero = 0;

	e->ifindex = ifindex;
	e->hook = hook;
	e->proto = p->proto;
	__builtin_memcpy(e->src, p->src, SLUICE_ADDR_LEN);
	__builtin_memcpy(e->dst, p->dst, SLUICE_ADDR_LEN);
	e->sport = p->sport;
	e->dport = p->dport;
	struct event_bucket *b = bpf_map_lookup_elem(&sluice_event_bucket, &zero);
	if (!b)
		return;
	__u64 now = bpf_ktime_get_ns();
	__u64 interval = event_interval_ns;
	__u64 tat = b->tat > now ? b->tat : now;

	if (tat - now > interval * (__u64)(event_burst - 1)) {
		b->suppressed++;
		e->type = 0;
		count(COUNTER_EVENTS_SUPPRESSED);
		return;
	}
	b->tat = tat + interval;
	e->timestamp_ns = now;
	e->suppressed = b->suppressed;
	/* No wakeup per event: the reader polls (bpf.EventReader), and is
	 * woken when the unread events cross EVENT_WAKEUP_BYTES. A wakeup
	 * per event would cost an interrupt each (a self-IPI: ~15 us in a
	 * VM). */
	__u64 unread = bpf_ringbuf_query(&sluice_events_v3, BPF_RB_AVAIL_DATA);
	__u64 wake = unread < EVENT_WAKEUP_BYTES && unread + EVENT_RECORD_BYTES >= EVENT_WAKEUP_BYTES
			     ? BPF_RB_FORCE_WAKEUP
			     : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&sluice_events_v3, e, sizeof(*e), wake) < 0) {
		/* What it carried is reported by the next one. */
		e->type = 0;
		count(COUNTER_EVENTS_LOST);
		return;
	}
	b->suppressed = 0;
	e->type = 0;
}

/* event_send sends the scratch event if one is pending (its type set):
 * policy_enforce leaves its events for its caller to send, from a frame
 * less deep, as does the service path. */
static __noinline void event_send(struct __sk_buff *skb, const struct pkt *p, __u8 hook)
{
	struct key_scratch *s = key_scratch();

	if (s && s->ev.type && event_rate)
		event_emit(s, skb->ifindex, p, hook);
}

/* event_drop_at sends a drop event, of the service svc_id or of none, of a
 * packet seen at hook on device ifindex (tc's and XDP's callers). */
static __always_inline void event_drop_at(__u32 ifindex, const struct pkt *p, __u16 reason, __u32 svc_id,
					  __u8 hook)
{
	struct key_scratch *s = key_scratch();

	if (!s || !event_rate)
		return;
	event_no_service(&s->ev);
	event_no_policy(&s->ev);
	s->ev.svc_id = svc_id;
	s->ev.type = EVENT_DROP;
	s->ev.reason = reason;
	event_emit(s, ifindex, p, hook);
}

/* event_drop sends a drop event, of the service svc_id or of none. */
static __noinline void event_drop(struct __sk_buff *skb, const struct pkt *p, __u16 reason, __u32 svc_id,
				  __u8 hook)
{
	event_drop_at(skb->ifindex, p, reason, svc_id, hook);
}

#endif
