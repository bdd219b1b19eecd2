// Package config holds the agent's settings: defaults, a config file (the
// keys the install ConfigMap carries) and flags, in rising precedence.
package config

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/sluice-net/sluice/agent/internal/clustercidrs"
	"github.com/sluice-net/sluice/agent/internal/masq"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/endpointapi"
	"github.com/sluice-net/sluice/internal/nodestate"
	"github.com/sluice-net/sluice/internal/observeapi"
)

// Config is every agent setting. The JSON names are the config file keys;
// each has a flag of the same name (see docs/reference.md).
type Config struct {
	// Command is "cleanup" for `sluice-agent cleanup` (remove what Sluice
	// installed on the node), else "" (run the agent).
	Command string `json:"-"`

	// API server access. ClusterIPs do not work before the agent runs, so
	// the real address is configured: k8sAPIServer, or host and port.
	K8sAPIServer   string `json:"k8sAPIServer,omitempty"`
	K8sServiceHost string `json:"k8sServiceHost,omitempty"`
	K8sServicePort string `json:"k8sServicePort,omitempty"`
	Kubeconfig     string `json:"kubeconfig,omitempty"`

	NodeName string `json:"nodeName,omitempty"`

	BPFRoot         string `json:"bpfRoot,omitempty"`
	MaglevTableSize uint32 `json:"maglevTableSize,omitempty"`
	// Datapath map capacities (bpf.Config's), checked against
	// capacityRange.
	MaxServices uint32 `json:"maxServices,omitempty"`
	MaxBackends uint32 `json:"maxBackends,omitempty"`
	// Conntrack capacities: TCP flows, and flows of every other protocol.
	// 0 (the default) sizes them to the node's memory (ConntrackSizes).
	MaxConntrackTCP   uint32 `json:"maxConntrackTCP,omitempty"`
	MaxConntrackOther uint32 `json:"maxConntrackOther,omitempty"`
	MaxAffinity       uint32 `json:"maxAffinity,omitempty"`
	MaxEndpoints      uint32 `json:"maxEndpoints,omitempty"`
	MaxIPCache        uint32 `json:"maxIPCache,omitempty"`
	MaxPolicyCIDRs    uint32 `json:"maxPolicyCIDRs,omitempty"`
	MaxPolicyRules    uint32 `json:"maxPolicyRules,omitempty"`

	// Conntrack lifetimes (bpf.Config's CTTimeout*).
	CTTimeoutSYN       Duration `json:"conntrackTimeoutSYN,omitempty"`
	CTTimeoutTCP       Duration `json:"conntrackTimeoutTCP,omitempty"`
	CTTimeoutClose     Duration `json:"conntrackTimeoutClose,omitempty"`
	CTTimeoutOther     Duration `json:"conntrackTimeoutOther,omitempty"`
	CTTimeoutUnreplied Duration `json:"conntrackTimeoutUnreplied,omitempty"`

	NodeStateFile string `json:"nodeStateFile,omitempty"`
	// CNIConfFile is the CNI configuration the install wrote; only
	// cleanup uses it (it removes the file).
	CNIConfFile string `json:"cniConfFile,omitempty"`
	// EndpointSocket is the unix socket of the endpoint API: the CNI
	// plugin's ADD waits there until the new pod's policy is programmed.
	EndpointSocket string `json:"endpointSocket,omitempty"`
	// NodePortAddresses are CIDRs selecting the node addresses NodePorts
	// answer on; empty means every InternalIP and ExternalIP of the Node.
	NodePortAddresses []string `json:"nodePortAddresses,omitempty"`

	// Devices are the node's uplinks: NodePort, ExternalIP and
	// LoadBalancer traffic from outside is load-balanced on them. Empty:
	// every interface with a global unicast address.
	Devices []string `json:"devices,omitempty"`

	// RoutingMode is how pod traffic reaches other nodes' pods: "native"
	// routes every other node's pod CIDRs via its InternalIP (nodes on one
	// L2 network, or an underlay that routes pod CIDRs); "vxlan"
	// encapsulates it to the node's InternalIP (nodes need only reach each
	// other); "none" leaves routing to someone else. Empty: native, or
	// none when the older nativeRouting is false.
	RoutingMode string `json:"routingMode,omitempty"`
	// NativeRouting is the older switch for routing (routingMode native or
	// none); kept so that configurations written for it still work.
	NativeRouting *bool `json:"nativeRouting,omitempty"`

	// Acceleration runs the datapath's XDP program on the uplinks ahead of
	// tc: "native" in the driver (generic where the driver has no XDP),
	// "generic" in the kernel's receive path, "off" (the default) not at
	// all. LoadBalancerMode is how traffic from outside reaches a backend
	// on another node: "snat" (the default) through this node, masqueraded;
	// "dsr" sent on to the backend's node, which answers the client
	// directly with the client's address kept (needs acceleration).
	Acceleration     string `json:"acceleration,omitempty"`
	LoadBalancerMode string `json:"loadBalancerMode,omitempty"`

	// SocketLBCgroup is the cgroup v2 directory whose processes get
	// socket-level load balancing (host processes, hostNetwork pods; pods
	// too when it is the root). Empty disables it.
	SocketLBCgroup string `json:"socketLBCgroup,omitempty"`

	// SocketLBPods lets socket LB serve pods too (those not annotated
	// sluice.dev/socket-lb: disabled) when SocketLBCgroup holds them; off,
	// it serves the node's own namespace only and pods are translated per
	// packet.
	SocketLBPods *bool `json:"socketLBPods,omitempty"`

	// ClusterCIDRs are the pod CIDRs of the whole cluster; pod traffic to
	// anywhere outside them is masqueraded to the node's address. The
	// element "nodes" adds every Node's spec.podCIDRs, kept current.
	// Empty: no masquerade.
	ClusterCIDRs []string `json:"clusterCIDRs,omitempty"`
	// NodePortRange is the cluster's Service NodePort range (the API
	// server's --service-node-port-range). Masqueraded flows get source
	// ports outside it (masq.PortsOutside), so that their replies do not
	// look like NodePort traffic.
	NodePortRange string `json:"nodePortRange,omitempty"`

	SyncMinInterval Duration `json:"syncMinInterval,omitempty"`
	SyncMaxInterval Duration `json:"syncMaxInterval,omitempty"`
	// CTGCInterval is the longest time between conntrack garbage
	// collections; passes come sooner as a map fills (ctgc.NextInterval).
	CTGCInterval Duration `json:"conntrackGCInterval,omitempty"`

	MetricsAddr string `json:"metricsAddr,omitempty"`
	HealthAddr  string `json:"healthAddr,omitempty"`
	// ProxyHealthAddr serves kube-proxy's /healthz and /livez, which
	// cloud load balancers probe; "" turns it off.
	ProxyHealthAddr string `json:"proxyHealthAddr"`

	// The observer API (the sluice CLI): ObserverSocket is its unix
	// socket on the node, ObserverAddr its TLS address for remote
	// observers through the API server's pod proxy; "" turns either off.
	// A remote request must carry a token of ObserverServiceAccount (in
	// the agent's namespace, $POD_NAMESPACE).
	ObserverSocket         string `json:"observerSocket"`
	ObserverAddr           string `json:"observerAddr"`
	ObserverServiceAccount string `json:"observerServiceAccount,omitempty"`
	// Namespace is the agent's namespace ($POD_NAMESPACE).
	Namespace string `json:"-"`
	// FlowBufferSize is how many of the last flows the agent keeps.
	FlowBufferSize int `json:"flowBufferSize,omitempty"`
	// FlowEventRate is how many flow events (drops and new flows) each
	// CPU may send per second, FlowEventBurst how many at once; 0 turns
	// flow events off. What the limit holds back is counted.
	FlowEventRate  uint32 `json:"flowEventRate"`
	FlowEventBurst uint32 `json:"flowEventBurst,omitempty"`
	LogFormat      string `json:"logFormat,omitempty"`
	LogLevel       string `json:"logLevel,omitempty"`
}

// Duration is a time.Duration written as "250ms" in the config file.
type Duration struct{ time.Duration }

// UnmarshalJSON accepts Go duration strings.
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := string(b)
	if len(s) >= 2 && s[0] == '"' {
		s = s[1 : len(s)-1]
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 250ms or 1m", s)
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return []byte(`"` + d.String() + `"`), nil }

// Default returns the settings used when nothing is configured. The
// datapath's are the loader's own defaults, except the conntrack
// capacities: 0, sized to the node's memory when the datapath is loaded.
func Default() Config {
	dp := bpf.DefaultConfig()
	return Config{
		BPFRoot:                dp.PinRoot,
		MaglevTableSize:        dp.MaglevSize,
		MaxServices:            dp.MaxServices,
		MaxBackends:            dp.MaxBackends,
		MaxAffinity:            dp.MaxAffinity,
		MaxEndpoints:           dp.MaxEndpoints,
		MaxIPCache:             dp.MaxIPCache,
		MaxPolicyCIDRs:         dp.MaxPolicyCIDRs,
		MaxPolicyRules:         dp.MaxPolicyRules,
		CTTimeoutSYN:           Duration{dp.CTTimeoutSYN},
		CTTimeoutTCP:           Duration{dp.CTTimeoutTCP},
		CTTimeoutClose:         Duration{dp.CTTimeoutClose},
		CTTimeoutOther:         Duration{dp.CTTimeoutOther},
		CTTimeoutUnreplied:     Duration{dp.CTTimeoutUnreplied},
		NodeStateFile:          nodestate.DefaultPath,
		CNIConfFile:            "/etc/cni/net.d/10-sluice.conflist",
		EndpointSocket:         endpointapi.DefaultSocket,
		NativeRouting:          ptr(true),
		SocketLBPods:           ptr(true),
		NodePortRange:          "30000-32767",
		SyncMinInterval:        Duration{time.Second},
		SyncMaxInterval:        Duration{time.Hour},
		CTGCInterval:           Duration{time.Minute},
		MetricsAddr:            ":9962",
		HealthAddr:             ":9963",
		ProxyHealthAddr:        ":10256",
		ObserverSocket:         observeapi.DefaultSocket,
		ObserverAddr:           fmt.Sprintf(":%d", observeapi.DefaultPort),
		ObserverServiceAccount: "sluice-observer",
		Namespace:              "sluice-system",
		FlowBufferSize:         4096,
		FlowEventRate:          dp.EventRate,
		FlowEventBurst:         dp.EventBurst,
		LogFormat:              "json",
		LogLevel:               "info",
	}
}

// capacity is one map capacity setting.
type capacity struct {
	key  string
	v    *uint32
	help string
	// auto: 0 is allowed and means "sized by the agent".
	auto bool
}

// capacities lists c's map capacity settings, in the same order for every
// Config.
func (c *Config) capacities() []capacity {
	return []capacity{
		{"maxServices", &c.MaxServices, "service map capacity (and the Maglev map's)", false},
		{"maxBackends", &c.MaxBackends, "backend map capacity", false},
		{"maxConntrackTCP", &c.MaxConntrackTCP, "conntrack map capacity for TCP (a flow takes 2 entries; 0: sized to the node's memory)", true},
		{"maxConntrackOther", &c.MaxConntrackOther, "conntrack map capacity for protocols other than TCP (0: sized to the node's memory)", true},
		{"maxAffinity", &c.MaxAffinity, "ClientIP session affinity entries", false},
		{"maxEndpoints", &c.MaxEndpoints, "local pod endpoints", false},
		{"maxIPCache", &c.MaxIPCache, "pod IPs of the cluster known to NetworkPolicy", false},
		{"maxPolicyCIDRs", &c.MaxPolicyCIDRs, "NetworkPolicy ipBlock prefixes", false},
		{"maxPolicyRules", &c.MaxPolicyRules, "NetworkPolicy allow rules of this node's endpoints", false},
	}
}

// duration is one duration setting.
type duration struct {
	key  string
	v    *Duration
	help string
	min  time.Duration
}

// durations lists c's duration settings, in the same order for every
// Config, with the least each may be.
func (c *Config) durations() []duration {
	return []duration{
		{"syncMinInterval", &c.SyncMinInterval, "minimum time between datapath syncs", time.Nanosecond},
		{"syncMaxInterval", &c.SyncMaxInterval, "maximum time between full datapath syncs", time.Nanosecond},
		{"conntrackGCInterval", &c.CTGCInterval, "longest time between conntrack garbage collections (shorter as the maps fill)", time.Nanosecond},
		{"conntrackTimeoutSYN", &c.CTTimeoutSYN, "lifetime of a TCP flow that has only sent its SYN", time.Second},
		{"conntrackTimeoutTCP", &c.CTTimeoutTCP, "lifetime of an established TCP flow, refreshed by traffic", time.Second},
		{"conntrackTimeoutClose", &c.CTTimeoutClose, "lifetime of a TCP flow after FIN or RST", time.Second},
		{"conntrackTimeoutOther", &c.CTTimeoutOther, "lifetime of UDP, SCTP and ICMP flows after their first reply", time.Second},
		{"conntrackTimeoutUnreplied", &c.CTTimeoutUnreplied, "lifetime of UDP, SCTP and ICMP flows until their first reply", time.Second},
	}
}

// Load applies the config file named by --config (if any) over the
// defaults, then every flag set on the command line. A first argument
// "cleanup" sets Command; the flags follow it.
func Load(args []string) (Config, error) {
	c := Default()
	if len(args) > 0 && args[0] == "cleanup" {
		c.Command, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("sluice-agent", flag.ContinueOnError)
	file := fs.String("config", "", "config file (YAML or JSON) with the keys below; flags override it")
	var flagVals Config
	bind(fs, &flagVals)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if *file != "" {
		data, err := os.ReadFile(*file)
		if err != nil {
			return c, fmt.Errorf("read config file: %w", err)
		}
		if err := yaml.UnmarshalStrict(data, &c); err != nil {
			return c, fmt.Errorf("config file %s: %w", *file, err)
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	overlay(&c, &flagVals, set)
	if c.NodeName == "" {
		c.NodeName = os.Getenv("NODE_NAME")
	}
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		c.Namespace = ns
	}
	return c, c.Validate()
}

func bind(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.K8sAPIServer, "k8sAPIServer", "", "API server URL, e.g. https://10.0.0.1:6443")
	fs.StringVar(&c.K8sServiceHost, "k8sServiceHost", "", "API server host (with k8sServicePort), when k8sAPIServer is not set")
	fs.StringVar(&c.K8sServicePort, "k8sServicePort", "", "API server port")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file; default: in-cluster service account")
	fs.StringVar(&c.NodeName, "nodeName", "", "this node's name (default: $NODE_NAME)")
	fs.StringVar(&c.BPFRoot, "bpfRoot", "", "bpffs directory of this node's datapath")
	fs.Func("maglevTableSize", "largest Maglev table a service may get, in slots (prime); each is sized to its backends", uintFlag(&c.MaglevTableSize))
	for _, k := range c.capacities() {
		fs.Func(k.key, k.help, uintFlag(k.v))
	}
	for _, k := range c.durations() {
		fs.Func(k.key, k.help, durFlag(k.v))
	}
	fs.StringVar(&c.NodeStateFile, "nodeStateFile", "", "where readiness and pod CIDRs are published for the CNI plugin")
	fs.StringVar(&c.CNIConfFile, "cniConfFile", "", "the CNI configuration the install wrote (removed by cleanup)")
	fs.StringVar(&c.EndpointSocket, "endpointSocket", "", "unix socket where the CNI plugin asks for a new pod's policy")
	fs.Func("nodePortAddresses", "comma-separated CIDRs of node addresses for NodePorts", func(s string) error {
		c.NodePortAddresses = splitComma(s)
		return nil
	})
	fs.Func("devices", "comma-separated node uplinks for NodePort traffic (default: every interface with a global address)", func(s string) error {
		c.Devices = splitComma(s)
		return nil
	})
	fs.StringVar(&c.RoutingMode, "routingMode", "", "how pods reach other nodes' pods: native, vxlan or none (default native)")
	fs.BoolFunc("nativeRouting", "older form of routingMode: true is native, false is none (default true)", setBool(&c.NativeRouting))
	fs.StringVar(&c.Acceleration, "acceleration", "", "XDP on the uplinks: native, generic or off (default off)")
	fs.StringVar(&c.LoadBalancerMode, "loadBalancerMode", "", "traffic from outside to remote backends: snat or dsr (default snat; dsr needs acceleration)")
	fs.StringVar(&c.NodePortRange, "nodePortRange", "", "the cluster's Service NodePort range; masqueraded flows get source ports outside it")
	fs.StringVar(&c.SocketLBCgroup, "socketLBCgroup", "", "cgroup v2 directory for socket-level load balancing (empty: off)")
	fs.BoolFunc("socketLBPods", "socket-level load balancing serves pods too, unless annotated sluice.dev/socket-lb: disabled (default true)", setBool(&c.SocketLBPods))
	fs.Func("clusterCIDRs", "comma-separated pod CIDRs of the cluster; traffic leaving them is masqueraded", func(s string) error {
		c.ClusterCIDRs = splitComma(s)
		return nil
	})
	fs.StringVar(&c.MetricsAddr, "metricsAddr", "", "Prometheus /metrics listen address")
	fs.StringVar(&c.HealthAddr, "healthAddr", "", "/healthz and /readyz listen address")
	fs.StringVar(&c.ProxyHealthAddr, "proxyHealthAddr", "", "kube-proxy compatible /healthz and /livez listen address; empty: none")
	fs.StringVar(&c.LogFormat, "logFormat", "", "json or text")
	fs.StringVar(&c.LogLevel, "logLevel", "", "debug, info, warn or error")
	fs.StringVar(&c.ObserverSocket, "observerSocket", "", "unix socket of the observer API (the sluice CLI); empty: none")
	fs.StringVar(&c.ObserverAddr, "observerAddr", "", "TLS listen address of the observer API for remote observers; empty: none")
	fs.StringVar(&c.ObserverServiceAccount, "observerServiceAccount", "", "service account whose tokens remote observers present")
	fs.Func("flowBufferSize", "how many of the last flows the agent keeps", func(s string) error {
		v, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("%q is not a number", s)
		}
		c.FlowBufferSize = v
		return nil
	})
	fs.Func("flowEventRate", "flow events each CPU may send per second (0: flow events off)", uintFlag(&c.FlowEventRate))
	fs.Func("flowEventBurst", "flow events each CPU may send at once", uintFlag(&c.FlowEventBurst))
}

func overlay(dst, src *Config, set map[string]bool) {
	pick := func(name string, apply func()) {
		if set[name] {
			apply()
		}
	}
	pick("k8sAPIServer", func() { dst.K8sAPIServer = src.K8sAPIServer })
	pick("k8sServiceHost", func() { dst.K8sServiceHost = src.K8sServiceHost })
	pick("k8sServicePort", func() { dst.K8sServicePort = src.K8sServicePort })
	pick("kubeconfig", func() { dst.Kubeconfig = src.Kubeconfig })
	pick("nodeName", func() { dst.NodeName = src.NodeName })
	pick("bpfRoot", func() { dst.BPFRoot = src.BPFRoot })
	pick("maglevTableSize", func() { dst.MaglevTableSize = src.MaglevTableSize })
	for i, k := range dst.capacities() {
		pick(k.key, func() { *k.v = *src.capacities()[i].v })
	}
	for i, k := range dst.durations() {
		pick(k.key, func() { *k.v = *src.durations()[i].v })
	}
	pick("nodeStateFile", func() { dst.NodeStateFile = src.NodeStateFile })
	pick("cniConfFile", func() { dst.CNIConfFile = src.CNIConfFile })
	pick("endpointSocket", func() { dst.EndpointSocket = src.EndpointSocket })
	pick("nodePortAddresses", func() { dst.NodePortAddresses = src.NodePortAddresses })
	pick("devices", func() { dst.Devices = src.Devices })
	pick("nativeRouting", func() { dst.NativeRouting = src.NativeRouting })
	pick("socketLBCgroup", func() { dst.SocketLBCgroup = src.SocketLBCgroup })
	pick("socketLBPods", func() { dst.SocketLBPods = src.SocketLBPods })
	pick("clusterCIDRs", func() { dst.ClusterCIDRs = src.ClusterCIDRs })
	pick("routingMode", func() { dst.RoutingMode = src.RoutingMode })
	pick("acceleration", func() { dst.Acceleration = src.Acceleration })
	pick("loadBalancerMode", func() { dst.LoadBalancerMode = src.LoadBalancerMode })
	pick("nodePortRange", func() { dst.NodePortRange = src.NodePortRange })
	pick("metricsAddr", func() { dst.MetricsAddr = src.MetricsAddr })
	pick("healthAddr", func() { dst.HealthAddr = src.HealthAddr })
	pick("proxyHealthAddr", func() { dst.ProxyHealthAddr = src.ProxyHealthAddr })
	pick("logFormat", func() { dst.LogFormat = src.LogFormat })
	pick("logLevel", func() { dst.LogLevel = src.LogLevel })
	pick("observerSocket", func() { dst.ObserverSocket = src.ObserverSocket })
	pick("observerAddr", func() { dst.ObserverAddr = src.ObserverAddr })
	pick("observerServiceAccount", func() { dst.ObserverServiceAccount = src.ObserverServiceAccount })
	pick("flowBufferSize", func() { dst.FlowBufferSize = src.FlowBufferSize })
	pick("flowEventRate", func() { dst.FlowEventRate = src.FlowEventRate })
	pick("flowEventBurst", func() { dst.FlowEventBurst = src.FlowEventBurst })
}

// Routing modes (RoutingMode).
const (
	RoutingNative = "native"
	RoutingVXLAN  = "vxlan"
	RoutingNone   = "none"
)

// Acceleration modes (Acceleration) and load balancer modes
// (LoadBalancerMode).
const (
	AccelerationNative  = "native"
	AccelerationGeneric = "generic"
	AccelerationOff     = "off"
	LoadBalancerSNAT    = "snat"
	LoadBalancerDSR     = "dsr"
)

// XDP is the acceleration in effect ("" or off: none).
func (c Config) XDP() string {
	if c.Acceleration == "" {
		return AccelerationOff
	}
	return c.Acceleration
}

// DSR reports whether loadBalancerMode is dsr.
func (c Config) DSR() bool { return c.LoadBalancerMode == LoadBalancerDSR }

// Routing is the routing mode in effect: RoutingMode, or what the older
// nativeRouting says when it is unset.
func (c Config) Routing() string {
	switch {
	case c.RoutingMode != "":
		return c.RoutingMode
	case c.NativeRouting != nil && !*c.NativeRouting:
		return RoutingNone
	}
	return RoutingNative
}

// Validate names the first wrong setting.
func (c Config) Validate() error {
	if c.NodeName == "" && c.Command != "cleanup" {
		return errors.New("nodeName: missing; set --nodeName or $NODE_NAME (the DaemonSet passes spec.nodeName)")
	}
	// Cleanup never talks to the API server: the shipped config (a port,
	// and the host the install fills in) must not stop it.
	if c.Command != "cleanup" && c.K8sAPIServer == "" && c.Kubeconfig == "" && (c.K8sServiceHost == "") != (c.K8sServicePort == "") {
		return errors.New("k8sServiceHost and k8sServicePort: set both, or neither")
	}
	for i, s := range c.NodePortAddresses {
		if _, err := netip.ParsePrefix(s); err != nil {
			return fmt.Errorf("nodePortAddresses[%d]: %q is not a CIDR", i, s)
		}
	}
	if _, _, err := clustercidrs.Parse(c.ClusterCIDRs); err != nil {
		return err
	}
	if _, err := c.MasqueradePorts(); err != nil {
		return err
	}
	switch c.RoutingMode {
	case "", RoutingNone:
	case RoutingNative, RoutingVXLAN:
		if c.NativeRouting != nil && !*c.NativeRouting {
			return fmt.Errorf("routingMode: %q conflicts with nativeRouting: false; remove nativeRouting (routingMode replaces it)", c.RoutingMode)
		}
	default:
		return fmt.Errorf("routingMode: %q is not native, vxlan or none", c.RoutingMode)
	}
	switch c.Acceleration {
	case "", AccelerationNative, AccelerationGeneric, AccelerationOff:
	default:
		return fmt.Errorf("acceleration: %q is not native, generic or off", c.Acceleration)
	}
	switch c.LoadBalancerMode {
	case "", LoadBalancerSNAT:
	case LoadBalancerDSR:
		if c.XDP() == AccelerationOff {
			return errors.New("loadBalancerMode: dsr needs acceleration native or generic (direct server return runs in XDP)")
		}
		if c.Routing() == RoutingNone {
			return errors.New("loadBalancerMode: dsr needs routingMode native or vxlan (it sends flows to the node of the backend's pod CIDR)")
		}
	default:
		return fmt.Errorf("loadBalancerMode: %q is not snat or dsr", c.LoadBalancerMode)
	}
	if err := c.validateDatapath(); err != nil {
		return err
	}
	if c.SyncMinInterval.Duration <= 0 || c.SyncMaxInterval.Duration < c.SyncMinInterval.Duration {
		return fmt.Errorf("syncMinInterval/syncMaxInterval: want 0 < min (%v) <= max (%v)", c.SyncMinInterval, c.SyncMaxInterval)
	}
	for _, d := range c.durations() {
		switch {
		case d.v.Duration <= 0:
			return fmt.Errorf("%s: %v; want a positive duration such as 1m", d.key, d.v)
		case d.v.Duration < d.min:
			return fmt.Errorf("%s: %v; want at least %v", d.key, d.v, d.min)
		}
	}
	// A flow's lifetime in a passing state must not outlast the state it
	// passes to: a half-open or closing TCP flow, or an unanswered
	// datagram flow, would otherwise hold its entry longer than a live one.
	for _, o := range []struct {
		short, long       string
		shortVal, longVal Duration
	}{
		{"conntrackTimeoutSYN", "conntrackTimeoutTCP", c.CTTimeoutSYN, c.CTTimeoutTCP},
		{"conntrackTimeoutClose", "conntrackTimeoutTCP", c.CTTimeoutClose, c.CTTimeoutTCP},
		{"conntrackTimeoutUnreplied", "conntrackTimeoutOther", c.CTTimeoutUnreplied, c.CTTimeoutOther},
	} {
		if o.shortVal.Duration > o.longVal.Duration {
			return fmt.Errorf("%s: %v is longer than %s (%v); want %s <= %s", o.short, o.shortVal, o.long, o.longVal, o.short, o.long)
		}
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		return fmt.Errorf("logFormat: %q is not json or text", c.LogFormat)
	}
	return c.validateObserver()
}

// Flow buffer bounds.
const (
	MinFlowBuffer = 1
	MaxFlowBuffer = 1 << 20
)

// validateObserver checks the observer API's and the flow events'
// settings.
func (c Config) validateObserver() error {
	if c.ObserverSocket != "" && !filepath.IsAbs(c.ObserverSocket) {
		return fmt.Errorf("observerSocket: %q; want an absolute path (or empty: no socket)", c.ObserverSocket)
	}
	if c.ObserverAddr != "" {
		if _, port, err := net.SplitHostPort(c.ObserverAddr); err != nil || port == "" {
			return fmt.Errorf("observerAddr: %q; want a listen address such as :4245 (or empty: none)", c.ObserverAddr)
		}
		if errs := validation.IsDNS1123Subdomain(c.ObserverServiceAccount); len(errs) > 0 {
			return fmt.Errorf("observerServiceAccount: %q; want a service account name: %s", c.ObserverServiceAccount, strings.Join(errs, "; "))
		}
	}
	if c.FlowBufferSize < MinFlowBuffer || c.FlowBufferSize > MaxFlowBuffer {
		return fmt.Errorf("flowBufferSize: %d is outside %d..%d", c.FlowBufferSize, MinFlowBuffer, MaxFlowBuffer)
	}
	if c.FlowEventRate > 0 && c.FlowEventBurst == 0 {
		return fmt.Errorf("flowEventBurst: 0; want at least 1 while flowEventRate (%d) is not 0", c.FlowEventRate)
	}
	return nil
}

// MasqueradePorts is the source port range of masqueraded TCP, UDP and
// SCTP flows: outside nodePortRange.
func (c Config) MasqueradePorts() (masq.PortRange, error) {
	np, err := masq.ParsePortRange(c.NodePortRange)
	if err != nil {
		return masq.PortRange{}, fmt.Errorf("nodePortRange: %w", err)
	}
	ports, err := masq.PortsOutside(np)
	if err != nil {
		return masq.PortRange{}, fmt.Errorf("nodePortRange: %w", err)
	}
	return ports, nil
}

// Map capacity bounds, and Maglev table size bounds (the Maglev paper's
// smallest and Cilium's largest table sizes).
const (
	MinCapacity   = 16
	MaxCapacity   = 1 << 24
	MinMaglevSize = 251
	MaxMaglevSize = 131071
)

// validateDatapath checks the datapath's sizes: the errors bpf.Load would
// give late, or not at all.
func (c Config) validateDatapath() error {
	if m := c.MaglevTableSize; m < MinMaglevSize || m > MaxMaglevSize || !bpf.IsPrime(m) {
		return fmt.Errorf("maglevTableSize: %d; want a prime from %d to %d, such as 16381 (the largest table a service may get; at least 100 times its backend count below it)",
			m, MinMaglevSize, MaxMaglevSize)
	}
	for _, k := range c.capacities() {
		if *k.v == 0 && k.auto {
			continue
		}
		if *k.v < MinCapacity || *k.v > MaxCapacity {
			auto := ""
			if k.auto {
				auto = " (or 0: sized to the node's memory)"
			}
			return fmt.Errorf("%s: %d is outside %d..%d%s", k.key, *k.v, MinCapacity, MaxCapacity, auto)
		}
	}
	return nil
}

func uintFlag(dst *uint32) func(string) error {
	return func(s string) error {
		v, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return fmt.Errorf("%q is not a number from 0 to %d", s, uint32(math.MaxUint32))
		}
		*dst = uint32(v)
		return nil
	}
}

func durFlag(dst *Duration) func(string) error {
	return func(s string) error {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration", s)
		}
		dst.Duration = v
		return nil
	}
}

// setBool parses a boolean flag into an optional setting, so that an
// unset flag leaves the file's value or the default.
func setBool(dst **bool) func(string) error {
	return func(s string) error {
		if s != "true" && s != "false" {
			return fmt.Errorf("%q is not true or false", s)
		}
		v := s == "true"
		*dst = &v
		return nil
	}
}

func splitComma(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' })
}

func ptr[T any](v T) *T { return &v }
