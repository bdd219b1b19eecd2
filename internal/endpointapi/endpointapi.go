// Package endpointapi is the node-local API between the CNI plugin and the
// agent: before ADD returns, and so before the pod's first packet, the
// plugin asks the agent to program the new pod's NetworkPolicy (its
// endpoint, identity and rules) and waits for the answer, as Cilium's CNI
// asks its agent to create the endpoint. HTTP with JSON bodies on a unix
// socket: both ends are Go, curl can talk to it, and nothing listens on
// the network.
package endpointapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// DefaultSocket is where the agent listens unless configured otherwise.
const DefaultSocket = "/run/sluice/agent.sock"

// Endpoint is a pod the CNI plugin is wiring (or has unwired).
type Endpoint struct {
	Namespace   string       `json:"namespace"`
	Name        string       `json:"name"`
	ContainerID string       `json:"containerID"`
	Addrs       []netip.Addr `json:"addrs"`
	// NetnsCookie identifies the pod's network namespace to socket-level
	// load balancing (SO_NETNS_COOKIE of a socket inside it).
	NetnsCookie uint64 `json:"netnsCookie,omitempty"`
}

func (e Endpoint) validate() error {
	switch {
	case e.Namespace == "" || e.Name == "":
		return errors.New("namespace and name: missing (the runtime passes them as K8S_POD_NAMESPACE and K8S_POD_NAME)")
	case e.ContainerID == "":
		return errors.New("containerID: missing")
	}
	for i, a := range e.Addrs {
		if !a.IsValid() {
			return fmt.Errorf("addrs[%d]: not an IP address", i)
		}
	}
	return nil
}

// Agent is what the server asks. EnsureEndpoint returns once the pod's
// policy is in the datapath's maps; ForgetEndpoint drops what Ensure
// remembered of a pod the API may not show yet. Ready tells whether the
// agent can enforce policy at all, and why not.
type Agent interface {
	EnsureEndpoint(ctx context.Context, ep Endpoint) error
	ForgetEndpoint(ep Endpoint)
	Ready() (bool, string)
}

// Serve answers on the unix socket at path until ctx ends. A socket file
// left by an earlier agent is replaced.
func Serve(ctx context.Context, log *slog.Logger, path string, a Agent) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("endpoint API socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale endpoint API socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("endpoint API socket %s: %w", path, err)
	}
	srv := &http.Server{Handler: handler(log, a), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	log.Info("serving the endpoint API for the CNI plugin", "socket", path)
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("endpoint API on %s: %w", path, err)
	}
	return nil
}

func handler(log *slog.Logger, a Agent) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ready", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := a.Ready(); !ok {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("PUT /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		ep, err := decode(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		start := time.Now()
		if err := a.EnsureEndpoint(r.Context(), ep); err != nil {
			log.Warn("pod's policy not programmed", "pod", ep.Namespace+"/"+ep.Name, "err", err)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		log.Debug("pod's policy programmed", "pod", ep.Namespace+"/"+ep.Name, "addrs", ep.Addrs, "took", time.Since(start))
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		ep, err := decode(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		a.ForgetEndpoint(ep)
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func decode(r *http.Request) (Endpoint, error) {
	var ep Endpoint
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ep); err != nil {
		return ep, fmt.Errorf("endpoint: %w", err)
	}
	return ep, ep.validate()
}

// Client talks to the agent's endpoint API.
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{path: path, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// Ensure asks the agent to program ep's policy and waits for it.
func (c *Client) Ensure(ctx context.Context, ep Endpoint) error {
	if err := ep.validate(); err != nil {
		return err
	}
	return c.do(ctx, http.MethodPut, "/v1/endpoints", ep)
}

// Forget tells the agent the pod is gone.
func (c *Client) Forget(ctx context.Context, ep Endpoint) error {
	return c.do(ctx, http.MethodDelete, "/v1/endpoints", ep)
}

// Ready reports an error unless the agent answers that it can enforce.
func (c *Client) Ready(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/v1/ready", nil)
}

func (c *Client) do(ctx context.Context, method, path string, body any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("agent endpoint API at %s: %w (is sluice-agent running on this node?)", c.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		return nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return fmt.Errorf("agent endpoint API %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(msg))
}
