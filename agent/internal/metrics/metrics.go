// Package metrics defines the agent's Prometheus metrics (all documented in
// docs/reference.md) and collects the datapath's drop counters at scrape.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sluice-net/sluice/bpf"
)

// Metrics is the agent's registry and the metrics it updates.
type Metrics struct {
	Registry *prometheus.Registry

	SyncDuration       prometheus.Histogram
	SyncErrors         prometheus.Counter
	ObjectErrors       prometheus.Counter
	ServicesProgrammed prometheus.Gauge
	BackendsProgrammed prometheus.Gauge
	MapCapacity        *prometheus.GaugeVec
	MapEntries         *prometheus.GaugeVec
	ConntrackEntries   prometheus.Gauge
	ConntrackGCDeleted prometheus.Counter

	PolicySyncDuration      prometheus.Histogram
	PolicyEndpointsIsolated prometheus.Gauge
}

// New registers every metric, plus the drop counters read from dp.
func New(dp *bpf.Datapath) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		SyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sluice_sync_duration_seconds",
			Help:    "Time to compile Services and EndpointSlices and apply the difference to the datapath maps.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		SyncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_sync_errors_total", Help: "Datapath syncs that failed (they are retried).",
		}),
		ObjectErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_object_errors_total", Help: "Malformed fields found in Services (the rest of the object is programmed).",
		}),
		ServicesProgrammed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_services_programmed", Help: "Service frontends (address, port, protocol, scope) in the datapath.",
		}),
		BackendsProgrammed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_backends_programmed", Help: "Backends (per service and endpoint) in the datapath.",
		}),
		MapCapacity: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_map_capacity", Help: "Maximum entries of a datapath map.",
		}, []string{"map"}),
		MapEntries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_map_entries", Help: "Entries in a datapath map (fill level against sluice_map_capacity).",
		}, []string{"map"}),
		ConntrackEntries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_conntrack_entries", Help: "Live conntrack entries after the last garbage collection (two per flow).",
		}),
		ConntrackGCDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_conntrack_gc_deleted_total", Help: "Expired conntrack entries deleted by garbage collection.",
		}),
		PolicySyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sluice_policy_sync_duration_seconds",
			Help:    "Time to compile Pods, Namespaces and NetworkPolicies and apply the difference to the policy maps.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		PolicyEndpointsIsolated: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_policy_endpoints_isolated", Help: "Local pods isolated by NetworkPolicy (ingress, egress or both).",
		}),
	}
	m.Registry.MustRegister(m.SyncDuration, m.SyncErrors, m.ObjectErrors, m.ServicesProgrammed, m.BackendsProgrammed,
		m.MapCapacity, m.MapEntries, m.ConntrackEntries, m.ConntrackGCDeleted, m.PolicySyncDuration, m.PolicyEndpointsIsolated,
		&dropCollector{dp: dp},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for name, mp := range map[string]interface{ MaxEntries() uint32 }{
		"services": dp.Services, "backends": dp.Backends, "conntrack": dp.Conntrack,
		"affinity": dp.Affinity, "endpoints": dp.Endpoints, "sock_revnat": dp.SockRevnat,
		"ipcache": dp.IPCache, "policy_cidrs": dp.PolicyCIDRs, "policy_endpoints": dp.PolicyEndpoints, "policy": dp.Policy,
	} {
		m.MapCapacity.WithLabelValues(name).Set(float64(mp.MaxEntries()))
	}
	return m
}

var (
	dropPackets = prometheus.NewDesc("sluice_drops_total", "Packets the datapath dropped or rejected, by reason.", []string{"reason"}, nil)
	dropBytes   = prometheus.NewDesc("sluice_drop_bytes_total", "Bytes the datapath dropped or rejected, by reason.", []string{"reason"}, nil)
)

// dropCollector reads the per-CPU drop counters at scrape time.
type dropCollector struct{ dp *bpf.Datapath }

func (c *dropCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- dropPackets
	ch <- dropBytes
}

func (c *dropCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.dp.DropCounts()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(dropPackets, err)
		return
	}
	for reason, n := range counts {
		ch <- prometheus.MustNewConstMetric(dropPackets, prometheus.CounterValue, float64(n.Packets), reason.String())
		ch <- prometheus.MustNewConstMetric(dropBytes, prometheus.CounterValue, float64(n.Bytes), reason.String())
	}
}
