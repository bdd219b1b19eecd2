// Package observeapi is the agent's observer API: what the `sluice` CLI
// asks an agent about its datapath (status, services, endpoints, policy,
// conntrack, drops) and the flows it saw. HTTP with JSON bodies; flows are
// a stream of JSON objects, one per line (NDJSON), so `--follow` is one
// long response that curl, the CLI and the API server's pod proxy all pass
// through as it comes, with no code generation and no new protocol. The
// agent serves it on a unix socket (the CLI inside the agent's pod or on
// the node) and, for the CLI on a workstation, on a TLS port reached
// through the API server's pod proxy, where a request must carry a token
// of the observer service account (TokenHeader).
package observeapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultSocket is where the agent serves the API unless configured
// otherwise; the CLI's --socket default.
const DefaultSocket = "/run/sluice/observer.sock"

// DefaultPort is the agent's TLS port for remote observers (the API
// server's pod proxy), named PortName in the DaemonSet.
const (
	DefaultPort = 4245
	PortName    = "observer"
)

// TokenHeader carries the observer service account's token on the TLS
// port. Not Authorization: the API server removes that header from a
// request once it has authenticated it, before proxying.
const TokenHeader = "Sluice-Observer-Token"

// TokenAudience is the audience of observer tokens: a token made for it is
// refused by the API server itself, so an agent cannot replay it there.
const TokenAudience = "sluice-observer"

// Paths.
const (
	PathStatus    = "/v1/status"
	PathServices  = "/v1/services"
	PathEndpoints = "/v1/endpoints"
	PathPolicy    = "/v1/policy"    // ?pod=NAMESPACE/NAME
	PathConntrack = "/v1/conntrack" // ?pod=&service=&proto=
	PathDrops     = "/v1/drops"
	PathFlows     = "/v1/flows" // FlowFilter.Query()
)

// Status is an agent's view of itself and its datapath.
type Status struct {
	Node    string `json:"node"`
	Version string `json:"version"`
	Ready   bool   `json:"ready"`
	// NotReady says why the agent is not ready; "" when it is.
	NotReady string `json:"notReady,omitempty"`
	// Attach is how programs are attached: "tcx" or "tc" (clsact).
	Attach    string    `json:"attach"`
	Uplinks   []string  `json:"uplinks"`
	StartedAt time.Time `json:"startedAt"`
	// LastSync is each controller's last successful sync.
	LastSync map[string]time.Time `json:"lastSync"`
	Maps     []MapFill            `json:"maps"`
	Flows    FlowBufferStatus     `json:"flows"`
}

// MapFill is one pinned map's fill level and kernel memory.
type MapFill struct {
	Name string `json:"name"`
	// Entries and Capacity are -1 for a map whose fill is not reported
	// (only its memory is).
	Entries  int `json:"entries"`
	Capacity int `json:"capacity"`
	// MemoryBytes is the kernel's memory accounting of the map
	// (sluice_bpf_map_memory_bytes).
	MemoryBytes uint64 `json:"memoryBytes"`
}

// FlowBufferStatus describes the agent's flow buffer and the event ring.
type FlowBufferStatus struct {
	Buffered int `json:"buffered"`
	Capacity int `json:"capacity"`
	// Seen counts flow events read from the ring since the agent started.
	Seen uint64 `json:"seen"`
	// Lost counts events the datapath could not put on a full ring;
	// Suppressed those its per-CPU rate limit held back. Both since the
	// datapath was loaded.
	Lost       uint64 `json:"lost"`
	Suppressed uint64 `json:"suppressed"`
}

// Service is one frontend as the datapath holds it, named from the API.
type Service struct {
	Service   string `json:"service"`  // NAMESPACE/NAME
	Port      string `json:"port"`     // the ServicePort's name; "" when unnamed
	Frontend  string `json:"frontend"` // ADDRESS:PORT/PROTO
	Type      string `json:"type"`     // ClusterIP, NodePort, ExternalIP, LoadBalancer
	Scope     string `json:"scope"`    // internal (pods, the node) or external (from outside)
	ID        uint32 `json:"id"`
	LocalOnly bool   `json:"localOnly,omitempty"`
	// TerminatingFallback: no ready backend, so terminating ones serve.
	TerminatingFallback bool `json:"terminatingFallback,omitempty"`
	// AffinitySeconds is the ClientIP affinity timeout; 0 without affinity.
	AffinitySeconds uint32    `json:"affinitySeconds,omitempty"`
	MaglevSize      int       `json:"maglevSize"`
	Backends        []Backend `json:"backends"`
}

// Backend is one backend of a frontend.
type Backend struct {
	Addr string `json:"addr"` // ADDRESS:PORT
	Pod  string `json:"pod,omitempty"`
	ID   uint32 `json:"id"`
	// Weight is the backend's share of the Maglev table, in slots.
	Weight      int  `json:"weight"`
	Local       bool `json:"local,omitempty"`
	Terminating bool `json:"terminating,omitempty"`
}

// Endpoint is a pod on this node as policy sees it.
type Endpoint struct {
	Pod      string   `json:"pod"` // NAMESPACE/NAME
	Addrs    []string `json:"addrs"`
	PolicyID uint32   `json:"policyID,omitempty"` // its number in policy rules; 0 when not isolated
	Identity uint32   `json:"identity"`           // its labels' identity, as other endpoints' rules name it
	// IngressPolicies and EgressPolicies are the NetworkPolicies that
	// isolate the pod that way (NAMESPACE/NAME); none: not isolated.
	IngressPolicies []string `json:"ingressPolicies,omitempty"`
	EgressPolicies  []string `json:"egressPolicies,omitempty"`
}

// Policy is what one endpoint admits: its isolation and the peers and
// ports its rules allow, each with the policies it comes from.
type Policy struct {
	Endpoint Endpoint     `json:"endpoint"`
	Rules    []PolicyRule `json:"rules"`
}

// PolicyRule is one admitted (direction, peer, protocol, ports).
type PolicyRule struct {
	Direction string `json:"direction"` // ingress or egress
	Peer      Peer   `json:"peer"`
	Proto     string `json:"proto"` // TCP, UDP, SCTP, or "any"
	Ports     string `json:"ports"` // "80", "8000-8099", or "any"
	// Policies are the NetworkPolicies allowing it, as
	// NAMESPACE/NAME[DIRECTION RULE-INDEX], e.g. "demo/allow-web[ingress 0]".
	Policies []string `json:"policies"`
}

// Peer is a remote identity of policy.
type Peer struct {
	Identity uint32 `json:"identity"`
	// Kind: "pods" (a namespace and label set), "cidr" (ipBlock
	// prefixes), "any" (every remote), "host" or "world".
	Kind      string            `json:"kind"`
	Namespace string            `json:"namespace,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	CIDRs     []string          `json:"cidrs,omitempty"`
	// Pods are the pods that have the identity now.
	Pods []string `json:"pods,omitempty"`
}

// ConntrackEntry is one live conntrack entry.
type ConntrackEntry struct {
	Proto string `json:"proto"`
	// Kind: service (client to frontend), reply (backend to client),
	// masq (backend to this node's port, under the XDP masquerade),
	// policy-egress or policy-ingress (a flow policy let through).
	Kind      string        `json:"kind"`
	Src       Addr          `json:"src"`
	Dst       Addr          `json:"dst"`
	Service   string        `json:"service,omitempty"` // NAMESPACE/NAME:PORT
	Backend   *Addr         `json:"backend,omitempty"` // service entries: the chosen backend
	Client    *Addr         `json:"client,omitempty"`  // masq entries: where the replies go back to
	Flags     []string      `json:"flags,omitempty"`   // established, replied, closing, hairpin
	ExpiresIn time.Duration `json:"expiresIn"`
}

// Addr is an address and port, with the pod that has the address.
type Addr struct {
	IP   string `json:"ip"`
	Port uint16 `json:"port,omitempty"`
	Pod  string `json:"pod,omitempty"` // NAMESPACE/NAME
	// Node is set when the address is a node's own.
	Node string `json:"node,omitempty"`
}

// Drops counts dropped packets by reason and hook.
type Drops struct {
	Since time.Time   `json:"since"` // when the datapath was loaded
	Drops []DropCount `json:"drops"`
}

// DropCount is one reason at one hook.
type DropCount struct {
	Reason    string `json:"reason"`
	Hook      string `json:"hook"`      // from_pod, to_pod, from_netdev, to_netdev
	Direction string `json:"direction"` // egress (leaving a pod or the node) or ingress
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
	// LastMinute is the packets counted in the last minute the agent has
	// watched (less when it started under a minute ago).
	LastMinute uint64 `json:"lastMinute"`
}

// Verdicts of a flow.
const (
	VerdictDropped    = "dropped"
	VerdictForwarded  = "forwarded"  // a new flow policy judged and allowed
	VerdictTranslated = "translated" // a new service flow sent to a backend
)

// Flow is one event of the datapath, named: a dropped packet, or a new
// flow that was translated to a backend or allowed by policy.
type Flow struct {
	Time    time.Time `json:"time"`
	Node    string    `json:"node"`
	Verdict string    `json:"verdict"`
	// Reason is why a packet was dropped (a drop reason's name).
	Reason    string `json:"reason,omitempty"`
	Hook      string `json:"hook"`                // from_pod, to_pod, from_netdev, to_netdev; socket: translated at a pod's socket
	Direction string `json:"direction,omitempty"` // policy: ingress or egress, seen from the local pod
	Proto     string `json:"proto"`
	Src       Addr   `json:"src"`
	// Dst is the destination as sent: a Service's frontend when the flow
	// was translated, then Backend is where it went.
	Dst     Addr   `json:"dst"`
	Service string `json:"service,omitempty"` // NAMESPACE/NAME:PORT
	Backend *Addr  `json:"backend,omitempty"`
	// Policies: for a policy drop, the policies isolating the endpoint
	// that way (none allowed the packet); for an allowed flow, the rules
	// that allowed it, as in PolicyRule.Policies.
	Policies []string `json:"policies,omitempty"`
	// Suppressed counts events of the same CPU the datapath's rate limit
	// held back just before this one.
	Suppressed uint32 `json:"suppressed,omitempty"`
}

// FlowFilter selects flows. Empty fields match everything.
type FlowFilter struct {
	// Pod matches flows either side of which is this pod (NAMESPACE/NAME).
	Pod string
	// Namespace matches flows either side of which is in the namespace.
	Namespace string
	// Service matches flows translated for (or dropped at) the Service
	// (NAMESPACE/NAME).
	Service string
	Verdict string
	Since   time.Time
	// Follow keeps the response open, sending flows as they come.
	Follow bool
	// Last limits the buffered flows sent first to the newest Last; 0: all.
	Last int
}

// Query encodes the filter for PathFlows.
func (f FlowFilter) Query() url.Values {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("pod", f.Pod)
	set("namespace", f.Namespace)
	set("service", f.Service)
	set("verdict", f.Verdict)
	if !f.Since.IsZero() {
		q.Set("since", f.Since.UTC().Format(time.RFC3339Nano))
	}
	if f.Follow {
		q.Set("follow", "true")
	}
	if f.Last > 0 {
		q.Set("last", strconv.Itoa(f.Last))
	}
	return q
}

// ParseFlowFilter decodes a PathFlows query, naming the parameter that is
// wrong.
func ParseFlowFilter(q url.Values) (FlowFilter, error) {
	f := FlowFilter{Pod: q.Get("pod"), Namespace: q.Get("namespace"), Service: q.Get("service"), Verdict: q.Get("verdict")}
	switch f.Verdict {
	case "", VerdictDropped, VerdictForwarded, VerdictTranslated:
	default:
		return f, fmt.Errorf("verdict %q: want %s, %s or %s", f.Verdict, VerdictDropped, VerdictForwarded, VerdictTranslated)
	}
	for _, p := range []struct{ name, v string }{{"pod", f.Pod}, {"service", f.Service}} {
		if p.v != "" && strings.Count(p.v, "/") != 1 {
			return f, fmt.Errorf("%s %q: want NAMESPACE/NAME", p.name, p.v)
		}
	}
	if s := q.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return f, fmt.Errorf("since %q: want an RFC 3339 time: %w", s, err)
		}
		f.Since = t
	}
	if s := q.Get("follow"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return f, fmt.Errorf("follow %q: want true or false", s)
		}
		f.Follow = b
	}
	if s := q.Get("last"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return f, fmt.Errorf("last %q: want a count of flows (0 or more)", s)
		}
		f.Last = n
	}
	return f, nil
}

// Match reports whether fl passes the filter.
func (f FlowFilter) Match(fl Flow) bool {
	if f.Verdict != "" && fl.Verdict != f.Verdict {
		return false
	}
	if !f.Since.IsZero() && fl.Time.Before(f.Since) {
		return false
	}
	sides := []string{fl.Src.Pod, fl.Dst.Pod}
	if fl.Backend != nil {
		sides = append(sides, fl.Backend.Pod)
	}
	if f.Pod != "" && !contains(sides, func(p string) bool { return p == f.Pod }) {
		return false
	}
	if f.Namespace != "" && !contains(sides, func(p string) bool { return strings.HasPrefix(p, f.Namespace+"/") }) {
		return false
	}
	if f.Service != "" && fl.Service != f.Service && !strings.HasPrefix(fl.Service, f.Service+":") {
		return false
	}
	return true
}

func contains(s []string, pred func(string) bool) bool {
	for _, v := range s {
		if v != "" && pred(v) {
			return true
		}
	}
	return false
}

// DecodeFlows reads an NDJSON flow stream, calling fn for each flow until
// the stream ends (nil), fn fails or a line is not a flow.
func DecodeFlows(r io.Reader, fn func(Flow) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		var fl Flow
		if err := json.Unmarshal(line, &fl); err != nil {
			return fmt.Errorf("flow stream: %w (line %q)", err, truncate(line, 200))
		}
		if err := fn(fl); err != nil {
			return err
		}
	}
	return sc.Err()
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// Error is an error response: the agent's message and the HTTP status.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("agent: %s (HTTP %d)", e.Message, e.Status) }

// Client talks to one agent over its unix socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client of the agent listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &Client{Socket: socket, http: &http.Client{Transport: tr}}
}

// Get decodes the JSON answer to path?query into out.
func (c *Client) Get(ctx context.Context, path string, query url.Values, out any) error {
	return GetJSON(ctx, c.Stream, "agent at "+c.Socket, path, query, out)
}

// StreamFunc asks one agent for path?query: a Client's Stream, or the
// CLI's way through the API server's pod proxy.
type StreamFunc func(ctx context.Context, path string, query url.Values) (io.ReadCloser, error)

// GetJSON decodes the JSON answer stream gives for path?query into out;
// name says which agent, for errors.
func GetJSON(ctx context.Context, stream StreamFunc, name, path string, query url.Values, out any) error {
	body, err := stream(ctx, path, query)
	if err != nil {
		return err
	}
	defer body.Close()
	if err := json.NewDecoder(body).Decode(out); err != nil {
		return fmt.Errorf("%s: %s: bad answer: %w", name, path, err)
	}
	return nil
}

// Stream returns the body of the answer to path?query, for the caller to
// read as it comes and close.
func (c *Client) Stream(ctx context.Context, path string, query url.Values) (io.ReadCloser, error) {
	u := url.URL{Scheme: "http", Host: "agent", Path: path, RawQuery: query.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent at %s (is the agent running on this node? --socket): %w", c.Socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, ReadError(resp.StatusCode, resp.Body)
	}
	return resp.Body, nil
}

// ReadError turns an error response's body into an *Error.
func ReadError(status int, body io.Reader) error {
	b, _ := io.ReadAll(io.LimitReader(body, 4096))
	msg := strings.TrimSpace(string(b))
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &Error{Status: status, Message: msg}
}
