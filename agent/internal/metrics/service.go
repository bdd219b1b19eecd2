package metrics

import "github.com/prometheus/client_golang/prometheus"

// Service is what the service controller reports beyond the shared sync
// metrics.
type Service struct {
	// MapFull counts syncs that found a map full, by map (backends,
	// services, maglev): some Service could not be programmed.
	MapFull *prometheus.CounterVec
	// FrontendConflicts is the number of frontends more than one Service
	// claims (the oldest owns each).
	FrontendConflicts prometheus.Gauge
}

// RegisterService registers the service controller's metrics; call it
// once per Metrics.
func (m *Metrics) RegisterService() *Service {
	s := &Service{
		MapFull: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_map_full_total",
			Help: "Syncs that found a datapath map full, by map: some Service could not be programmed (the log and an Event on it say which; raise the map's size).",
		}, []string{"map"}),
		FrontendConflicts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_service_frontend_conflicts",
			Help: "Frontends (address, port, protocol, scope) more than one Service claims: the oldest Service owns each, the others get a FrontendConflict Event.",
		}),
	}
	m.Registry.MustRegister(s.MapFull, s.FrontendConflicts)
	return s
}
