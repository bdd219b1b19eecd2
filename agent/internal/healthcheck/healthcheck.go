// Package healthcheck serves the healthCheckNodePort of every LoadBalancer
// Service with externalTrafficPolicy Local, answering like kube-proxy: 200
// with the count of this node's endpoints when there are some, 503 when
// there are none, so load balancers skip nodes that would drop the traffic.
package healthcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/sluice-net/sluice/agent/internal/service/compile"
)

// Server owns one listener per health check port.
type Server struct {
	log  *slog.Logger
	host string // listen address; "" means every address

	mu      sync.Mutex
	servers map[uint16]*http.Server
	checks  map[uint16]compile.HealthCheck
}

// New makes a server listening on host (e.g. "" or a node address).
func New(log *slog.Logger, host string) *Server {
	return &Server{log: log, host: host, servers: map[uint16]*http.Server{}, checks: map[uint16]compile.HealthCheck{}}
}

type response struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

func (s *Server) handler(port uint16) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		hc := s.checks[port]
		s.mu.Unlock()
		var r response
		r.Service.Namespace, r.Service.Name = hc.Service.Namespace, hc.Service.Name
		r.LocalEndpoints = hc.LocalEndpoints
		r.ServiceProxyHealthy = true
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if hc.LocalEndpoints == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(r)
	})
}

// Sync serves exactly the given health checks: new ports start listening,
// ports no longer wanted stop, counts update in place.
func (s *Server) Sync(checks []compile.HealthCheck) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := map[uint16]compile.HealthCheck{}
	var errs []error
	for _, hc := range checks {
		if prev, dup := want[hc.Port]; dup {
			errs = append(errs, fmt.Errorf("healthCheckNodePort %d claimed by both %s and %s", hc.Port, prev.Service, hc.Service))
			continue
		}
		want[hc.Port] = hc
	}
	for port, srv := range s.servers {
		if _, ok := want[port]; !ok {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = srv.Shutdown(ctx)
			cancel()
			delete(s.servers, port)
			s.log.Info("health check port closed", "port", port)
		}
	}
	s.checks = want
	for port, hc := range want {
		if _, ok := s.servers[port]; ok {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(s.host, strconv.Itoa(int(port))))
		if err != nil {
			errs = append(errs, fmt.Errorf("health check for %s on port %d: %w", hc.Service, port, err))
			continue
		}
		srv := &http.Server{Handler: s.handler(port), ReadHeaderTimeout: 5 * time.Second}
		s.servers[port] = srv
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("health check server stopped", "port", port, "err", err)
			}
		}()
		s.log.Info("health check port open", "port", port, "service", hc.Service.String())
	}
	return errors.Join(errs...)
}

// Close stops every listener.
func (s *Server) Close() {
	_ = s.Sync(nil)
}
