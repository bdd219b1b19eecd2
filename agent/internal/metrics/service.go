package metrics

import "github.com/prometheus/client_golang/prometheus"

// Service is what the service controller reports beyond the shared sync
// metrics.
type Service struct {
	// FrontendConflicts is the number of frontends more than one Service
	// claims (the oldest owns each).
	FrontendConflicts prometheus.Gauge
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
	m.Registry.MustRegister(s.FrontendConflicts)
	return s
}
