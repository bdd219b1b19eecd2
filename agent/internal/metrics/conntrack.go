package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-net/sluice/bpf"
)

// Conntrack map labels, as bpf.CTStats names them.
var ctMaps = []string{"tcp", "other"}

// conntrackMetrics are what conntrack garbage collection reports.
type conntrackMetrics struct {
	entries  *prometheus.GaugeVec
	fill     *prometheus.GaugeVec
	deleted  *prometheus.CounterVec
	runs     *prometheus.CounterVec
	duration prometheus.Histogram
	interval prometheus.Gauge
}

func newConntrackMetrics() conntrackMetrics {
	c := conntrackMetrics{
		entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_conntrack_entries",
			Help: "Live entries of a conntrack map (tcp, other) after the last garbage collection (two per flow).",
		}, []string{"map"}),
		fill: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_conntrack_fill_ratio",
			Help: "Live entries of a conntrack map over its capacity, 0 to 1, after the last garbage collection.",
		}, []string{"map"}),
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_conntrack_gc_deleted_total", Help: "Expired conntrack entries deleted by garbage collection, by map.",
		}, []string{"map"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_conntrack_gc_runs_total", Help: "Conntrack garbage collection passes, by result (ok, error).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sluice_conntrack_gc_duration_seconds",
			Help:    "Time one conntrack garbage collection pass over both maps takes.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		interval: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_conntrack_gc_interval_seconds",
			Help: "Time from the last conntrack garbage collection to the next: conntrackGCInterval, shorter as the maps fill.",
		}),
	}
	// Every series exists, at zero, from the start.
	for _, m := range ctMaps {
		c.entries.WithLabelValues(m)
		c.fill.WithLabelValues(m)
		c.deleted.WithLabelValues(m)
	}
	c.runs.WithLabelValues("ok")
	c.runs.WithLabelValues("error")
	return c
}

func (c *conntrackMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{c.entries, c.fill, c.deleted, c.runs, c.duration, c.interval}
}

// ObserveConntrackGC records one garbage collection pass: the stats of the
// maps it went through (all of them unless it failed), how long it took,
// whether it failed, and the time until the next pass.
func (m *Metrics) ObserveConntrackGC(stats []bpf.CTStats, took time.Duration, err error, next time.Duration) {
	c := &m.ct
	result := "ok"
	if err != nil {
		result = "error"
	}
	c.runs.WithLabelValues(result).Inc()
	c.duration.Observe(took.Seconds())
	for _, s := range stats {
		c.entries.WithLabelValues(s.Map).Set(float64(s.Live))
		c.fill.WithLabelValues(s.Map).Set(s.Fill())
		c.deleted.WithLabelValues(s.Map).Add(float64(s.Deleted))
		m.MapEntries.WithLabelValues("conntrack_" + s.Map).Set(float64(s.Live))
	}
	m.SetConntrackGCInterval(next)
}

// SetConntrackGCInterval publishes the time until the next pass.
func (m *Metrics) SetConntrackGCInterval(next time.Duration) {
	m.ct.interval.Set(next.Seconds())
}

// The datapath's event counters (bpf.Counter), at scrape.
var (
	ctRestored = prometheus.NewDesc("sluice_conntrack_restored_total",
		"Service flows whose conntrack entry of one direction was missing (evicted) and was made again from the other's: "+
			"direction reply (at a forward packet) or forward (at a reply).", []string{"direction"}, nil)
	ctReopened = prometheus.NewDesc("sluice_conntrack_reopened_total",
		"TCP SYNs that reused the tuple of a closing service flow: the flow was opened afresh, its backend chosen again.", nil, nil)
	affinityStale = prometheus.NewDesc("sluice_affinity_stale_total",
		"Session affinity entries ignored because their backend no longer belongs to their service.", nil, nil)
	ctInsertFailed = prometheus.NewDesc("sluice_conntrack_insert_failed_total",
		"Conntrack or affinity inserts that failed (a map full of entries that cannot be evicted, or out of memory).", nil, nil)
	eventsLost = prometheus.NewDesc("sluice_flow_events_lost_total",
		"Flow events the datapath could not put on its ring because it was full (the agent fell behind).", nil, nil)
	eventsSuppressed = prometheus.NewDesc("sluice_flow_events_suppressed_total",
		"Flow events the datapath's per-CPU rate limit held back (flowEventRate, flowEventBurst).", nil, nil)
	dsrPackets = prometheus.NewDesc("sluice_dsr_packets_total",
		"Direct server return (loadBalancerMode dsr), by direction: sent (a packet from outside sent on to its backend's node), "+
			"received (one sent on here, for a local backend) and replied (a backend's reply sent straight to the client).",
		[]string{"direction"}, nil)
	masqPackets = prometheus.NewDesc("sluice_xdp_masquerade_packets_total",
		"XDP masquerade (loadBalancerMode snat with acceleration), by direction: forward (a packet from outside sent on to a remote "+
			"backend from the node's address) and reply (a backend's reply sent back to the client).",
		[]string{"direction"}, nil)
	masqPortsBusy = prometheus.NewDesc("sluice_xdp_masquerade_ports_busy_total",
		"New flows the XDP masquerade left to tc and netfilter's masquerade because none of the ports it tried for their backend was free.",
		nil, nil)
)

// counterCollector reads the per-CPU event counters at scrape time.
type counterCollector struct{ dp *bpf.Datapath }

func (c *counterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- ctRestored
	ch <- ctReopened
	ch <- affinityStale
	ch <- ctInsertFailed
	ch <- eventsLost
	ch <- eventsSuppressed
	ch <- dsrPackets
	ch <- masqPackets
	ch <- masqPortsBusy
}

func (c *counterCollector) Collect(ch chan<- prometheus.Metric) {
	v, err := c.dp.CounterValues()
	if err != nil {
		for _, d := range []*prometheus.Desc{ctRestored, ctReopened, affinityStale, ctInsertFailed, eventsLost, eventsSuppressed, dsrPackets, masqPackets, masqPortsBusy} {
			ch <- prometheus.NewInvalidMetric(d, err)
		}
		return
	}
	counter := func(d *prometheus.Desc, n uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), labels...)
	}
	counter(ctRestored, v[bpf.CounterCTReplyRestored], "reply")
	counter(ctRestored, v[bpf.CounterCTForwardRestored], "forward")
	counter(ctReopened, v[bpf.CounterCTReopened])
	counter(affinityStale, v[bpf.CounterAffinityStale])
	counter(ctInsertFailed, v[bpf.CounterCTInsertFailed])
	counter(eventsLost, v[bpf.CounterEventsLost])
	counter(eventsSuppressed, v[bpf.CounterEventsSuppressed])
	counter(dsrPackets, v[bpf.CounterDSRSent], "sent")
	counter(dsrPackets, v[bpf.CounterDSRReceived], "received")
	counter(dsrPackets, v[bpf.CounterDSRReplies], "replied")
	counter(masqPackets, v[bpf.CounterMasqForward], "forward")
	counter(masqPackets, v[bpf.CounterMasqReply], "reply")
	counter(masqPortsBusy, v[bpf.CounterMasqPortsBusy])
}
