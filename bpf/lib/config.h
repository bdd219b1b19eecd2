/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* config.h: load-time constants. The loader sets every one of them on the
 * CollectionSpec from bpf.Config (bpf/loader.go), which holds the only
 * defaults; here they are declared, never valued. */
#ifndef SLUICE_LIB_CONFIG_H
#define SLUICE_LIB_CONFIG_H

#include <linux/types.h>

#include "sluice.h"

/* Slots of each table of the earlier releases' single-size Maglev map
 * (sluice_maglev_v1, MAGLEV_CLASS_LEGACY); the size classes' maps have
 * their size in their name. */
volatile const __u32 maglev_size;
/* Conntrack lifetimes by state (bpf.Config.CTTimeout*); unreplied is for
 * flows other than TCP until their first reply. */
volatile const __u64 ct_timeout_syn_ns;
volatile const __u64 ct_timeout_tcp_ns;
volatile const __u64 ct_timeout_close_ns;
volatile const __u64 ct_timeout_other_ns;
volatile const __u64 ct_timeout_unreplied_ns;
/* Socket LB translates only sockets of this network namespace (the
 * node's); pods are left to from_pod, whose ClientIP affinity sees the
 * pod's address as kube-proxy's does. 0 translates every namespace. */
volatile const __u64 host_netns_cookie = 0;
/* Flow events: at most event_rate per second per CPU, in bursts of at
 * most event_burst (bpf.Config.EventRate, EventBurst); 0 sends none.
 * event_interval_ns is the loader's 1e9 / event_rate, which spares the
 * datapath a division per event. */
volatile const __u32 event_rate;
volatile const __u32 event_burst;
volatile const __u64 event_interval_ns;
/* loadBalancerMode dsr (bpf.Config.DSR): xdp_netdev sends flows from
 * outside to remote backends on to the backend's node, Geneve over UDP
 * port dsr_port, whose replies go straight back to the client. Their
 * packets may be at most dsr_max_inner bytes (the uplink MTU less the
 * encapsulation): larger ones are dropped, and the backend's node lowers
 * the MSS of a DSR flow's SYN-ACK to fit. */
volatile const __u32 dsr_enabled;
volatile const __u32 dsr_port;
volatile const __u32 dsr_max_inner;
/* XDP masquerade (bpf.Config.MasqPorts): under loadBalancerMode snat,
 * xdp_netdev sends flows from outside to remote backends on from this
 * node's address and a source port of masq_port_min..masq_port_max (host
 * order), a range no socket of the node and no netfilter masquerade uses,
 * and sends the replies back. 0 leaves such flows to tc and netfilter. */
volatile const __u32 masq_port_min;
volatile const __u32 masq_port_max;
/* Source address used when a pod is load-balanced to itself (hairpin):
 * bpf.HairpinAddr4 and bpf.HairpinAddr6, written by the loader. */
volatile const __u8 hairpin_addr4[SLUICE_ADDR_LEN];
volatile const __u8 hairpin_addr6[SLUICE_ADDR_LEN];

/* hairpin_addr copies the family's hairpin address. The copy reads through
 * a volatile pointer: a plain memcpy from a const global lets clang fold in
 * the compile-time (zero) value instead of the one the loader set. */
static __always_inline void hairpin_addr(__u8 family, __u8 *out)
{
	const volatile __u64 *h = (const volatile __u64 *)(family == 4 ? hairpin_addr4 : hairpin_addr6);
	__u64 w[2] = {h[0], h[1]};

	__builtin_memcpy(out, w, SLUICE_ADDR_LEN);
}

#endif
