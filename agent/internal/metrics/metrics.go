// Package metrics defines the agent's Prometheus metrics (all documented in
// docs/reference.md) and collects the datapath's drop and event counters
// at scrape.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sluice-net/sluice/bpf"
)

// Metrics is the agent's registry and the metrics it updates.
type Metrics struct {
	Registry *prometheus.Registry

	syncDuration *prometheus.HistogramVec
	syncErrors   *prometheus.CounterVec
	objectErrors *prometheus.CounterVec

	ServicesProgrammed prometheus.Gauge
	BackendsProgrammed prometheus.Gauge
	MapCapacity        *prometheus.GaugeVec
	MapEntries         *prometheus.GaugeVec
	// MapFull counts syncs that found a map full, by map: some Service or
	// some pod's policy could not be programmed.
	MapFull *prometheus.CounterVec
	ct      conntrackMetrics

	PolicyEndpointsIsolated prometheus.Gauge
	// XDPMode is 1 for the mode xdp_netdev runs in on each uplink
	// (acceleration native or generic).
	XDPMode *prometheus.GaugeVec
}

// Controller is what every controller reports about its syncs, labelled
// with its name.
type Controller struct {
	SyncDuration prometheus.Observer
	SyncErrors   prometheus.Counter
	// ObjectErrors counts objects, or fields of them, the controller could
	// not use.
	ObjectErrors prometheus.Counter
}

// New registers every metric the agent updates; RegisterDatapath adds
// what the datapath itself reports.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sluice_sync_duration_seconds",
			Help: "Time one sync of a controller takes: compile its objects and apply the difference " +
				"(service: Services and EndpointSlices to the service maps; netpol: Pods, Namespaces and " +
				"NetworkPolicies to the policy maps; routes: Nodes to the routing table).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"controller"}),
		syncErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_sync_errors_total", Help: "Syncs of a controller that failed (they are retried).",
		}, []string{"controller"}),
		objectErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_object_errors_total",
			Help: "Objects, or fields of them, a controller could not use (the rest is programmed; the log names object and field).",
		}, []string{"controller"}),
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
		MapFull: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_map_full_total",
			Help: "Syncs that found a datapath map full, by map: some Service or some pod's NetworkPolicy could not be programmed (the log and an Event on the Service or the Node say which; raise the map's size).",
		}, []string{"map"}),
		ct: newConntrackMetrics(),
		PolicyEndpointsIsolated: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_policy_endpoints_isolated", Help: "Local pods isolated by NetworkPolicy (ingress, egress or both).",
		}),
		XDPMode: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_xdp_mode",
			Help: "1 for the mode (native, generic) the XDP program runs in on an uplink; no series with acceleration off.",
		}, []string{"device", "mode"}),
	}
	m.Registry.MustRegister(m.syncDuration, m.syncErrors, m.objectErrors, m.ServicesProgrammed, m.BackendsProgrammed,
		m.MapCapacity, m.MapEntries, m.MapFull, m.PolicyEndpointsIsolated, m.XDPMode,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.Registry.MustRegister(m.ct.collectors()...)
	return m
}

// Controller returns the sync metrics of the named controller; its series
// exist (at zero) from then on.
func (m *Metrics) Controller(name string) Controller {
	return Controller{
		SyncDuration: m.syncDuration.WithLabelValues(name),
		SyncErrors:   m.syncErrors.WithLabelValues(name),
		ObjectErrors: m.objectErrors.WithLabelValues(name),
	}
}

// RegisterDatapath publishes dp's map capacities and collects its drop
// and event counters and its maps' kernel memory at every scrape.
func (m *Metrics) RegisterDatapath(dp *bpf.Datapath) {
	m.Registry.MustRegister(&dropCollector{dp: dp}, &counterCollector{dp: dp}, &memoryCollector{dp: dp})
	for name, mp := range map[string]interface{ MaxEntries() uint32 }{
		"services": dp.Services, "backends": dp.Backends, "conntrack_tcp": dp.ConntrackTCP, "conntrack_other": dp.ConntrackOther,
		"affinity": dp.Affinity, "endpoints": dp.Endpoints, "sock_revnat": dp.SockRevnat, "sock_netns": dp.SockNetns, "lb_ranges": dp.LBRanges,
		"ipcache": dp.IPCache, "policy_cidrs": dp.PolicyCIDRs, "policy_endpoints": dp.PolicyEndpoints, "policy": dp.Policy,
	} {
		m.MapCapacity.WithLabelValues(name).Set(float64(mp.MaxEntries()))
	}
}

var (
	dropPackets = prometheus.NewDesc("sluice_drops_total", "Packets the datapath dropped or rejected, by reason and direction.", []string{"reason", "direction"}, nil)
	dropBytes   = prometheus.NewDesc("sluice_drop_bytes_total", "Bytes the datapath dropped or rejected, by reason and direction.", []string{"reason", "direction"}, nil)
)

// dropCollector reads the per-CPU drop counters at scrape time.
type dropCollector struct{ dp *bpf.Datapath }

func (c *dropCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- dropPackets
	ch <- dropBytes
}

func (c *dropCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.dp.DropCountsByHook()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(dropPackets, err)
		return
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(dropPackets, prometheus.CounterValue, float64(n.Packets), k.Reason.String(), k.Hook.Direction())
		ch <- prometheus.MustNewConstMetric(dropBytes, prometheus.CounterValue, float64(n.Bytes), k.Reason.String(), k.Hook.Direction())
	}
}
