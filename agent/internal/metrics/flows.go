package metrics

import "github.com/prometheus/client_golang/prometheus"

// Flows is what the flow reader (agent/internal/flows) reports.
type Flows struct {
	// Processed counts flow events read from the datapath's ring, by
	// verdict (dropped, forwarded, translated), type (drop, trace) and
	// protocol (tcp, udp, ...), as Hubble's hubble_flows_processed_total.
	Processed *prometheus.CounterVec
	// Errors counts records of the ring that could not be read.
	Errors prometheus.Counter
	// FollowerDrops counts flows not sent to an observer that did not keep
	// up (its stream skips them).
	FollowerDrops prometheus.Counter
	// Buffered is the number of flows in the agent's buffer, Capacity its
	// size (flowBufferSize).
	Buffered, Capacity prometheus.Gauge
}

// RegisterFlows registers the flow metrics; call it once per Metrics.
func (m *Metrics) RegisterFlows() *Flows {
	f := &Flows{
		Processed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_flows_processed_total",
			Help: "Flow events read from the datapath, by verdict (dropped, forwarded: a new flow NetworkPolicy allowed, translated: a new service flow sent to a backend), type (drop, trace) and protocol.",
		}, []string{"verdict", "type", "protocol"}),
		Errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_flow_read_errors_total", Help: "Records of the datapath's event ring the agent could not read or decode.",
		}),
		FollowerDrops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_flow_follower_drops_total",
			Help: "Flows not sent to an observer (sluice observe --follow) that did not keep up; its stream skips them.",
		}),
		Buffered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_flow_buffer_flows", Help: "Flows in the agent's flow buffer (the last ones, served by sluice observe).",
		}),
		Capacity: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_flow_buffer_capacity", Help: "Size of the agent's flow buffer in flows (flowBufferSize).",
		}),
	}
	m.Registry.MustRegister(f.Processed, f.Errors, f.FollowerDrops, f.Buffered, f.Capacity)
	return f
}
