package metrics

import "github.com/prometheus/client_golang/prometheus"

// Service is what the service controller reports beyond the shared sync
// metrics.
type Service struct {
	// FrontendConflicts is the number of frontends more than one Service
	// claims (the oldest owns each).
	FrontendConflicts prometheus.Gauge

	// Under kube-proxy's names, for the dashboards and alerts written for
	// it: the duration and end of every successful sync, and the time
	// from an EndpointSlice change (its last-change-trigger-time) to the
	// sync that programmed it.
	SyncProxyRules     prometheus.Observer
	SyncProxyRulesLast prometheus.Gauge
	NetworkProgramming prometheus.Observer
}

// RegisterService registers the service controller's metrics; call it
// once per Metrics.
func (m *Metrics) RegisterService() *Service {
	s := &Service{
		FrontendConflicts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_service_frontend_conflicts",
			Help: "Frontends (address, port, protocol, scope) more than one Service claims: the oldest Service owns each, the others get a FrontendConflict Event.",
		}),
	}
	sync := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "kubeproxy_sync_proxy_rules_duration_seconds", Help: "Time of one successful sync of the service maps (as kube-proxy's rule sync).",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
	})
	last := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kubeproxy_sync_proxy_rules_last_timestamp_seconds", Help: "Unix time the last successful sync of the service maps ended.",
	})
	programming := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "kubeproxy_network_programming_duration_seconds",
		Help:    "Time from an EndpointSlice change (its endpoints.kubernetes.io/last-change-trigger-time) to the sync that programmed it.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 18),
	})
	s.SyncProxyRules, s.SyncProxyRulesLast, s.NetworkProgramming = sync, last, programming
	m.Registry.MustRegister(s.FrontendConflicts, sync, last, programming)
	return s
}

// ProxyHealth counts the answers of the kube-proxy compatible health
// server, under kube-proxy's names.
type ProxyHealth struct {
	Healthz, Livez *prometheus.CounterVec // by code
}

// RegisterProxyHealth registers the health server's counters; call it
// once per Metrics.
func (m *Metrics) RegisterProxyHealth() ProxyHealth {
	p := ProxyHealth{
		Healthz: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_healthz_total", Help: "Answers of the kube-proxy compatible /healthz, by HTTP code.",
		}, []string{"code"}),
		Livez: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_livez_total", Help: "Answers of the kube-proxy compatible /livez, by HTTP code.",
		}, []string{"code"}),
	}
	m.Registry.MustRegister(p.Healthz, p.Livez)
	return p
}
