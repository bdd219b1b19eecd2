// Command sluice-agent is Sluice's node agent: it loads the datapath, keeps
// its service maps in step with Services and EndpointSlices (replacing
// kube-proxy), publishes the node's readiness for the CNI plugin, collects
// conntrack garbage, serves health and metrics, and reads the datapath's
// flow events for the observer API of the sluice CLI. `sluice-agent cleanup`
// removes what Sluice installed on the node instead. Settings: see
// docs/reference.md.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/sluice-net/sluice/agent/internal/cleanup"
	"github.com/sluice-net/sluice/agent/internal/clustercidrs"
	"github.com/sluice-net/sluice/agent/internal/config"
	"github.com/sluice-net/sluice/agent/internal/ctgc"
	"github.com/sluice-net/sluice/agent/internal/dsr"
	"github.com/sluice-net/sluice/agent/internal/flows"
	"github.com/sluice-net/sluice/agent/internal/healthcheck"
	"github.com/sluice-net/sluice/agent/internal/masq"
	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/netpol"
	netpolmapsync "github.com/sluice-net/sluice/agent/internal/netpol/mapsync"
	"github.com/sluice-net/sluice/agent/internal/nodewatch"
	"github.com/sluice-net/sluice/agent/internal/observe"
	"github.com/sluice-net/sluice/agent/internal/observer"
	"github.com/sluice-net/sluice/agent/internal/proxyhealth"
	"github.com/sluice-net/sluice/agent/internal/routes"
	"github.com/sluice-net/sluice/agent/internal/service"
	servicemapsync "github.com/sluice-net/sluice/agent/internal/service/mapsync"
	"github.com/sluice-net/sluice/agent/internal/socklb"
	"github.com/sluice-net/sluice/agent/internal/tunnel"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/endpointapi"
)

func main() {
	cfg, err := config.Load(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "sluice-agent: %v\n", err)
		os.Exit(2)
	}
	log := newLogger(cfg)
	if cfg.Command == "cleanup" {
		os.Exit(runCleanup(log, cfg))
	}
	// client-go logs through klog; send it to the same structured log.
	klog.SetSlogLogger(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log, cfg); err != nil {
		log.Error("agent stopped", "err", err)
		os.Exit(1)
	}
	log.Info("agent stopped; the datapath keeps forwarding")
}

// runCleanup removes what Sluice installed on this node (`sluice-agent
// cleanup`), reporting every step, and returns the exit code: 1 if a step
// failed.
func runCleanup(log *slog.Logger, cfg config.Config) int {
	results := cleanup.Run(cleanup.Options{
		BPFRoot: cfg.BPFRoot, CNIConfFile: cfg.CNIConfFile,
		NodeStateFile: cfg.NodeStateFile, EndpointSocket: cfg.EndpointSocket,
	})
	for _, r := range results {
		switch {
		case r.Err != nil:
			log.Error("cleanup step failed", "step", r.Step, "err", r.Err)
		case r.Did == "":
			log.Info("cleanup step: nothing to remove", "step", r.Step)
		default:
			log.Info("cleanup step done", "step", r.Step, "did", r.Did)
		}
	}
	if err := cleanup.Err(results); err != nil {
		log.Error("cleanup incomplete; run it again", "err", err)
		return 1
	}
	log.Info("cleanup done: Sluice is removed from this node")
	return 0
}

func newLogger(cfg config.Config) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts))
}

func run(ctx context.Context, log *slog.Logger, cfg config.Config) error {
	client, err := apiClient(cfg)
	if err != nil {
		return err
	}
	devices, err := uplinks(cfg.Devices)
	if err != nil {
		return err
	}
	nfPorts, xdpPorts, err := masqueradePorts(log, cfg)
	if err != nil {
		return err
	}
	dp, err := loadDatapath(log, cfg, devices, xdpPorts)
	if err != nil {
		return err
	}
	defer dp.Close() // the pins stay: the datapath outlives the agent
	m := metrics.New()
	if err := attachDatapath(log, cfg, dp, devices, m); err != nil {
		return err
	}
	remasquerade, err := masquerade(log, cfg, nfPorts)
	if err != nil {
		return err
	}
	m.RegisterDatapath(dp)
	hc := healthcheck.New(log, "")
	defer hc.Close()
	factory := informers.NewSharedInformerFactory(client, 0)
	ph := m.RegisterProxyHealth()
	proxyHealth := proxyhealth.New(clock.RealClock{}, proxyhealth.DefaultTimeout, ph.Healthz, ph.Livez)
	nodeNet, err := nodeNetwork(log, cfg, dp, devices)
	if err != nil {
		return err
	}
	nodeNet.masquerade = remasquerade
	nodeNet.xdpMasquerade = xdpPorts != (masq.PortRange{}) && cfg.XDP() != config.AccelerationOff
	ctrls, err := newControllers(log, cfg, client, factory, dp, m, hc, proxyHealth, nodeNet)
	if err != nil {
		return err
	}
	obs, err := newObserver(cfg, client, factory, dp, m, ctrls, devices)
	if err != nil {
		return err
	}
	// One slot for each goroutine that reports, so none blocks once run
	// has returned.
	errs := make(chan error, 12)
	go func() { errs <- serve(ctx, log, "metrics", cfg.MetricsAddr, metricsMux(m)) }()
	go func() {
		errs <- endpointapi.Serve(ctx, log, cfg.EndpointSocket, endpointAgent{Controller: ctrls.policies, log: log, sockets: ctrls.sockets})
	}()
	go func() { errs <- serve(ctx, log, "health", cfg.HealthAddr, healthMux(ctrls.services)) }()
	if cfg.ProxyHealthAddr != "" {
		go func() { errs <- serve(ctx, log, "kube-proxy health", cfg.ProxyHealthAddr, proxyHealth.Handler()) }()
	}
	obs.run(ctx, log, errs)
	go ctgc.Run(ctx, log, dp, m, cfg.CTGCInterval.Duration)
	if err := waitForAPIServer(ctx, log, client); err != nil {
		return err
	}
	// Once, after every controller has registered its informers: a
	// factory starts only the informers asked for before Start.
	factory.Start(ctx.Done())
	return ctrls.run(ctx, log, errs)
}

// waitForAPIServer returns once the API server answers. Meanwhile the
// datapath serves from its pinned maps and the agent is not ready. An
// informer started against an absent server backs off up to a minute
// between lists, so the agent would stay unready that long after the
// server came back; polling every second here, it lists at once.
func waitForAPIServer(ctx context.Context, log *slog.Logger, client kubernetes.Interface) error {
	const every, report = time.Second, 30 * time.Second
	start, lastReport := time.Now(), time.Time{}
	for {
		probe, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := client.Discovery().RESTClient().Get().AbsPath("/version").Do(probe).Error()
		cancel()
		if err == nil {
			if !lastReport.IsZero() {
				log.Info("API server reachable; syncing", "waited", time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		if time.Since(lastReport) >= report {
			log.Warn("API server unreachable; the datapath serves its pinned state until it answers", "err", err, "waited", time.Since(start).Round(time.Second))
			lastReport = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
}

// apiClient connects to the API server as configured.
func apiClient(cfg config.Config) (*kubernetes.Clientset, error) {
	restCfg, err := restConfig(cfg)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	return client, nil
}

// loadDatapath loads (or reuses, when pinned) this node's datapath for
// the uplinks devices.
func loadDatapath(log *slog.Logger, cfg config.Config, devices []string, xdpMasq masq.PortRange) (*bpf.Datapath, error) {
	// The agent runs in the node's network namespace (hostNetwork): socket
	// LB serves exactly the sockets of that namespace.
	hostNetns, err := bpf.NetnsCookie()
	if err != nil {
		return nil, err
	}
	ctTCP, ctOther, sizedBy, err := conntrackSizes(cfg)
	if err != nil {
		return nil, err
	}
	dp, err := bpf.Load(bpf.Config{
		PinRoot: cfg.BPFRoot, MaglevSize: cfg.MaglevTableSize,
		MaxServices: cfg.MaxServices, MaxBackends: cfg.MaxBackends,
		MaxConntrackTCP: ctTCP, MaxConntrackOther: ctOther,
		MaxAffinity: cfg.MaxAffinity, MaxEndpoints: cfg.MaxEndpoints,
		MaxIPCache: cfg.MaxIPCache, MaxPolicyCIDRs: cfg.MaxPolicyCIDRs, MaxPolicyRules: cfg.MaxPolicyRules,
		CTTimeoutSYN: cfg.CTTimeoutSYN.Duration, CTTimeoutTCP: cfg.CTTimeoutTCP.Duration,
		CTTimeoutClose: cfg.CTTimeoutClose.Duration, CTTimeoutOther: cfg.CTTimeoutOther.Duration,
		CTTimeoutUnreplied: cfg.CTTimeoutUnreplied.Duration,
		HostNetnsCookie:    hostNetns,
		EventRate:          cfg.FlowEventRate, EventBurst: cfg.FlowEventBurst, EventsOff: cfg.FlowEventRate == 0,
		DSR: cfg.DSR(), DSRMaxInner: dsrMaxInner(log, devices),
		MasqPortMin: xdpMasq.Min, MasqPortMax: xdpMasq.Max,
	})
	if err != nil {
		return nil, err
	}
	log.Info("datapath loaded", "bpfRoot", cfg.BPFRoot, "maglevTableSize", cfg.MaglevTableSize,
		"maxConntrackTCP", ctTCP, "maxConntrackOther", ctOther, "conntrackSizedBy", sizedBy,
		"maxServices", cfg.MaxServices, "maxBackends", cfg.MaxBackends, "maxAffinity", cfg.MaxAffinity,
		"maxEndpoints", cfg.MaxEndpoints, "maxIPCache", cfg.MaxIPCache, "maxPolicyCIDRs", cfg.MaxPolicyCIDRs,
		"maxPolicyRules", cfg.MaxPolicyRules, "flowEventRate", cfg.FlowEventRate, "flowEventBurst", cfg.FlowEventBurst)
	return dp, nil
}

// conntrackSizes are the conntrack capacities to load: the configured
// ones, else those of the maps already pinned (a capacity change is
// refused on a node with pinned maps, and the node's memory may differ
// from when they were made), else sized to the node's memory. sizedBy
// says which.
func conntrackSizes(cfg config.Config) (tcp, other uint32, sizedBy string, err error) {
	tcp, other = cfg.MaxConntrackTCP, cfg.MaxConntrackOther
	if tcp != 0 && other != 0 {
		return tcp, other, "config", nil
	}
	if dp, err := bpf.OpenPinned(cfg.BPFRoot); err == nil {
		defer dp.Close()
		if tcp == 0 {
			tcp = dp.ConntrackTCP.MaxEntries()
		}
		if other == 0 {
			other = dp.ConntrackOther.MaxEntries()
		}
		return tcp, other, "pinned maps", nil
	}
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, 0, "", fmt.Errorf("size conntrack to the node's memory (or set maxConntrackTCP and maxConntrackOther): %w", err)
	}
	defer f.Close()
	mem, err := config.MemTotal(f)
	if err != nil {
		return 0, 0, "", fmt.Errorf("size conntrack to the node's memory (or set maxConntrackTCP and maxConntrackOther): %w", err)
	}
	autoTCP, autoOther := config.ConntrackSizes(mem)
	if tcp == 0 {
		tcp = autoTCP
	}
	if other == 0 {
		other = autoOther
	}
	return tcp, other, fmt.Sprintf("node memory (%d MiB)", mem>>20), nil
}

// attachDatapath hooks the datapath where traffic other than the pods'
// enters it: host sockets (socket-level load balancing) and the node's
// uplinks devices (NodePorts and external addresses), with XDP ahead of
// tc there when acceleration is on.
func attachDatapath(log *slog.Logger, cfg config.Config, dp *bpf.Datapath, devices []string, m *metrics.Metrics) error {
	if cfg.SocketLBCgroup != "" {
		if err := dp.AttachSocketLB(cfg.SocketLBCgroup); err != nil {
			return err
		}
		log.Info("socket-level load balancing attached", "cgroup", cfg.SocketLBCgroup)
	}
	for _, dev := range devices {
		if err := dp.AttachDevice(dev, bpf.AttachAuto); err != nil {
			return err
		}
		if err := attachXDP(log, cfg, dp, dev, m); err != nil {
			return err
		}
	}
	if len(devices) == 0 {
		log.Warn("no interface has a global address: NodePort, ExternalIP and LoadBalancer traffic from outside is not served (set devices)")
	} else {
		log.Info("NodePort, ExternalIP and LoadBalancer traffic served on the node's uplinks", "devices", devices,
			"acceleration", cfg.XDP(), "loadBalancerMode", cmp.Or(cfg.LoadBalancerMode, config.LoadBalancerSNAT))
	}
	return takeOver(log, dp)
}

// attachXDP runs xdp_netdev on an uplink in the configured mode, or
// removes it (acceleration off, perhaps after being on).
func attachXDP(log *slog.Logger, cfg config.Config, dp *bpf.Datapath, dev string, m *metrics.Metrics) error {
	want := cfg.XDP()
	if want == config.AccelerationOff {
		return dp.DetachXDP(dev)
	}
	got, err := dp.AttachXDP(dev, bpf.XDPMode(want))
	if err != nil {
		return err
	}
	if string(got) != want {
		log.Warn("the uplink's driver has no native XDP: it runs in generic mode, without the speed", "device", dev, "acceleration", want)
	} else {
		log.Info("XDP attached", "device", dev, "mode", got)
	}
	m.XDPMode.WithLabelValues(dev, string(got)).Set(1)
	return nil
}

// dsrMaxInner is the largest packet direct server return can send on over
// the uplinks: their MTU less the encapsulation (20 bytes more over an
// IPv6-only underlay).
func dsrMaxInner(log *slog.Logger, devices []string) uint32 {
	mtu := uplinkMTU(log, devices)
	if mtu == 0 {
		mtu = defaultMTU
	}
	overhead := bpf.DSROverhead + 20
	for _, a := range deviceAddrs(devices) {
		if a.Is4() {
			overhead = bpf.DSROverhead
		}
	}
	return uint32(mtu - overhead)
}

// takeOver makes this agent's programs run everywhere the datapath is
// attached, existing pods included (after an upgrade they still run the
// previous version's), then completes a migration of maps whose layout
// changed: only now have the old programs stopped writing to them.
func takeOver(log *slog.Logger, dp *bpf.Datapath) error {
	if m := dp.Migrated; m.Backends+m.Affinity+m.Conntrack > 0 {
		log.Info("carried the datapath's state over from maps of an earlier version",
			"backends", m.Backends, "affinity", m.Affinity, "conntrack", m.Conntrack)
	}
	st, err := dp.Reattach()
	log.Info("datapath programs attached to existing pods and uplinks", "updated", st.Updated, "current", st.Current, "stalePinsRemoved", st.Stale)
	if err != nil {
		// Attachments that could not be swapped keep running the program
		// they had: traffic flows, with the older behaviour. Old maps stay
		// pinned (they may still be written) until a restart finishes.
		log.Error("some attachments still run an earlier program; the migration finishes at a later start", "err", err)
		return nil
	}
	fin, err := dp.FinishMigration()
	if err != nil {
		return fmt.Errorf("finish the migration of maps of an earlier version: %w", err)
	}
	if len(fin.Unpinned) > 0 {
		log.Info("migration finished; old maps unpinned", "conntrack", fin.Conntrack, "affinity", fin.Affinity, "unpinned", fin.Unpinned)
	}
	return nil
}

// masquerade programs the node's nftables masquerade: pod traffic leaving
// the configured cluster CIDRs, and NodePort traffic the datapath marked
// for SNAT, with source ports outside the NodePort range. It returns what
// reprograms it for other cluster CIDRs: with "nodes" in clusterCIDRs,
// the clustercidrs controller adds the Nodes' pod CIDRs once it knows them.
func masquerade(log *slog.Logger, cfg config.Config, ports masq.PortRange) (func([]netip.Prefix) error, error) {
	static, _, err := clustercidrs.Parse(cfg.ClusterCIDRs)
	if err != nil {
		return nil, err
	}
	apply := func(cidrs []netip.Prefix) error { return masq.Apply(cidrs, bpf.MarkSNAT, ports) }
	if err := apply(static); err != nil {
		return nil, err
	}
	log.Info("masquerade of traffic leaving the cluster CIDRs", "clusterCIDRs", cfg.ClusterCIDRs, "table", "inet "+masq.TableName,
		"nodePortRange", cfg.NodePortRange, "sourcePorts", ports.String())
	return apply, nil
}

// masqueradePorts are the source ports of netfilter's masquerade and of
// the XDP masquerade (the zero range: off). XDP masquerades flows from
// outside to remote backends under loadBalancerMode snat with
// acceleration on, where the way to a backend is an uplink (not the
// overlay's device, to which XDP cannot send); it takes the part of the
// range above the node's ephemeral ports. The range is kept with
// acceleration off too: tc then carries on the flows an earlier agent's
// XDP began, and netfilter stays off their ports.
func masqueradePorts(log *slog.Logger, cfg config.Config) (netfilter, xdp masq.PortRange, err error) {
	ports, err := cfg.MasqueradePorts()
	if err != nil {
		return ports, xdp, err
	}
	if cfg.DSR() || cfg.Routing() == config.RoutingVXLAN {
		return ports, xdp, nil
	}
	local, err := masq.EphemeralPorts()
	if err == nil {
		netfilter, xdp, err = masq.SplitForXDP(ports, local)
	}
	if err != nil {
		log.Warn("XDP masquerade off: flows from outside to remote backends take tc and netfilter's masquerade", "err", err)
		return ports, masq.PortRange{}, nil
	}
	log.Info("XDP masquerade of flows from outside to remote backends", "sourcePorts", xdp.String(), "ephemeralPorts", local.String(),
		"acceleration", cfg.XDP())
	return netfilter, xdp, nil
}

// controllers are the agent's controllers, sharing one informer factory.
type controllers struct {
	services *service.Controller
	policies *netpol.Controller
	routes   *nodewatch.Watcher // nil with routingMode none
	// clusterCIDRs follows the Nodes' pod CIDRs; nil unless clusterCIDRs
	// says "nodes".
	clusterCIDRs *nodewatch.Watcher
	sockets      *socklb.Controller // nil unless socket LB serves pods
	dsr          *nodewatch.Watcher // nil unless loadBalancerMode is dsr
}

// endpointAgent answers the CNI plugin: a new pod's policy first (which
// waits for the pod in the informer cache), then its socket LB entry.
type endpointAgent struct {
	*netpol.Controller
	log     *slog.Logger
	sockets *socklb.Controller
}

// EnsureEndpoint fails the pod's ADD only for its policy: a pod socket LB
// could not enter is translated per packet, as correctly, and logged.
func (a endpointAgent) EnsureEndpoint(ctx context.Context, ep endpointapi.Endpoint) error {
	if err := a.Controller.EnsureEndpoint(ctx, ep); err != nil {
		return err
	}
	if a.sockets != nil {
		if err := a.sockets.EnsureEndpoint(ctx, ep); err != nil {
			a.log.Warn("pod not served by socket LB; its Service traffic is translated per packet", "pod", ep.Namespace+"/"+ep.Name, "err", err)
		}
	}
	return nil
}

// newControllers builds every controller, each registering its informers
// on factory.
func newControllers(log *slog.Logger, cfg config.Config, client kubernetes.Interface, factory informers.SharedInformerFactory,
	dp *bpf.Datapath, m *metrics.Metrics, hc *healthcheck.Server, proxyHealth *proxyhealth.Tracker, nodeNet network) (*controllers, error) {
	var c controllers
	serviceMaps, err := servicemapsync.New(dp)
	if err != nil {
		return nil, err
	}
	var nodePortCIDRs []netip.Prefix
	for _, s := range cfg.NodePortAddresses {
		nodePortCIDRs = append(nodePortCIDRs, netip.MustParsePrefix(s)) // validated by config
	}
	// Events on Services the datapath cannot serve as asked (a full map, a
	// contested frontend) and on the Node (a full policy map), posted in
	// the background for the process's life.
	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "sluice-agent", Host: cfg.NodeName})
	c.services, err = service.New(log, factory, serviceMaps, m, service.Options{
		NodeName: cfg.NodeName, NodePortCIDRs: nodePortCIDRs, NodeStateFile: cfg.NodeStateFile, PodMTU: nodeNet.podMTU,
		MinSync: cfg.SyncMinInterval.Duration, MaxSync: cfg.SyncMaxInterval.Duration, HealthChecks: hc,
		ProxyHealth: proxyHealth, Recorder: recorder,
	})
	if err != nil {
		return nil, err
	}
	c.policies, err = netpol.New(log, factory, netpolmapsync.New(dp), m, netpol.Options{
		NodeName: cfg.NodeName, MinSync: cfg.SyncMinInterval.Duration, MaxSync: cfg.SyncMaxInterval.Duration,
		Recorder: recorder,
	})
	if err != nil {
		return nil, err
	}
	if cfg.SocketLBCgroup != "" && *cfg.SocketLBPods {
		c.sockets, err = socklb.New(log, factory, dp, socklb.Options{
			NodeName: cfg.NodeName, MinSync: cfg.SyncMinInterval.Duration, MaxSync: cfg.SyncMaxInterval.Duration,
			Recorder: recorder,
		})
		if err != nil {
			return nil, err
		}
	}
	if static, fromNodes, _ := clustercidrs.Parse(cfg.ClusterCIDRs); fromNodes {
		c.clusterCIDRs, err = clustercidrs.New(log, factory, static, nodeNet.masquerade, m, nodewatch.Options{
			MinSync: cfg.SyncMinInterval.Duration, MaxSync: cfg.SyncMaxInterval.Duration,
		})
		if err != nil {
			return nil, err
		}
	}
	// XDP sends flows on to other nodes (direct server return, or the XDP
	// masquerade to their pods): it needs their neighbours resolved.
	if cfg.DSR() || nodeNet.xdpMasquerade {
		writer := &dsr.Kernel{Datapath: dp, Endpoints: cfg.DSR() && cfg.Routing() != config.RoutingVXLAN}
		c.dsr, err = dsr.New(log, factory, writer, cfg.NodeName, m, nodewatch.Options{
			MinSync: cfg.SyncMinInterval.Duration, MaxSync: cfg.SyncMaxInterval.Duration,
		})
		if err != nil {
			return nil, err
		}
	} else if did, err := dsr.RemoveNeighbours(); err != nil {
		// An earlier agent sent from XDP: its managed entries would be
		// refreshed for ever. Not fatal: they cost ARP, not correctness.
		log.Warn("remove the managed neighbour entries of an earlier agent with acceleration", "err", err)
	} else if did != "" {
		log.Info("managed neighbour entries of an earlier agent with acceleration removed", "did", did)
	}
	if nodeNet.routes != nil {
		c.routes, err = routes.New(log, factory, nodeNet.routes, m, routes.Options{
			NodeName: cfg.NodeName, MinSync: cfg.SyncMinInterval.Duration, MaxSync: cfg.SyncMaxInterval.Duration,
			Tunnel: cfg.Routing() == config.RoutingVXLAN,
		})
		if err != nil {
			return nil, err
		}
	}
	return &c, nil
}

// run runs the controllers until ctx ends, or one of them (or another
// goroutine reporting to errs) fails.
func (c *controllers) run(ctx context.Context, log *slog.Logger, errs chan error) error {
	if c.routes != nil {
		go func() { errs <- c.routes.Run(ctx) }()
	}
	if c.clusterCIDRs != nil {
		go func() { errs <- c.clusterCIDRs.Run(ctx) }()
	}
	if c.dsr != nil {
		go func() { errs <- c.dsr.Run(ctx) }()
	}
	if c.sockets != nil {
		go func() { errs <- c.sockets.Run(ctx) }()
	}
	// Policy first: the service controller's first sync tells the CNI that
	// pods may start, and no pod may start before its policy is in place.
	go func() { errs <- c.policies.Run(ctx) }()
	select {
	case <-c.policies.FirstSync():
		log.Info("NetworkPolicy programmed")
	case err := <-errs:
		return err
	case <-ctx.Done():
		return nil
	}
	go func() { errs <- c.services.Run(ctx) }()
	select {
	case <-ctx.Done():
		return nil
	case err := <-errs:
		return err
	}
}

// observerAPI is what the observer API (the sluice CLI) serves: the flows
// read from the datapath's event ring, named, and the Source of the rest.
type observerAPI struct {
	cfg    config.Config
	dp     *bpf.Datapath
	review func(ctx context.Context, token string) error
	namer  *flows.Namer
	store  *flows.Store
	fm     *metrics.Flows
	src    *observer.Source
}

// newObserver indexes pods and nodes by address on factory (before it
// starts) and builds the flow store and the Source.
func newObserver(cfg config.Config, client kubernetes.Interface, factory informers.SharedInformerFactory, dp *bpf.Datapath,
	m *metrics.Metrics, ctrls *controllers, devices []string) (*observerAPI, error) {
	lookup, err := flows.NewCluster(factory, ctrls.policies.Compiled, ctrls.services.ServiceName)
	if err != nil {
		return nil, err
	}
	fm := m.RegisterFlows()
	store := flows.NewStore(cfg.FlowBufferSize, fm.FollowerDrops.Inc)
	src := observer.New(observer.Options{Node: cfg.NodeName, Uplinks: devices, Ready: ctrls.services.Ready, Metrics: m},
		dp, ctrls.services, ctrls.policies, lookup, store)
	return &observerAPI{cfg: cfg, dp: dp, review: observe.NewTokenReviewer(client, cfg.Namespace, cfg.ObserverServiceAccount),
		namer: flows.NewNamer(cfg.NodeName, lookup, nil), store: store, fm: fm, src: src}, nil
}

// run reads the flow events and serves the observer API until ctx ends;
// the reader and the server report to errs.
func (o *observerAPI) run(ctx context.Context, log *slog.Logger, errs chan<- error) {
	go o.src.Run(ctx)
	if o.cfg.FlowEventRate > 0 {
		r, err := bpf.NewEventReader(o.dp)
		if err != nil {
			errs <- err
			return
		}
		go func() { errs <- flows.Run(ctx, log, flows.RingReader{R: r}, o.namer, o.store, o.fm) }()
	}
	go func() {
		errs <- observe.Serve(ctx, log, observe.Options{Socket: o.cfg.ObserverSocket, Addr: o.cfg.ObserverAddr, Review: o.review}, o.src)
	}()
}

// network is how this node reaches other nodes' pods and the world: the
// writer of its routes (nil: routing mode none), the MTU its pods get,
// what reprograms the masquerade for a new set of cluster CIDRs, and
// whether XDP masquerades flows from outside (and so sends to other nodes).
type network struct {
	routes        routes.Writer
	podMTU        int
	masquerade    func([]netip.Prefix) error
	xdpMasquerade bool
}

// nodeNetwork sets up the routing mode: in vxlan mode the overlay device,
// whose MTU (the uplinks' less VXLAN's overhead) the pods get too.
func nodeNetwork(log *slog.Logger, cfg config.Config, dp *bpf.Datapath, devices []string) (network, error) {
	mtu := uplinkMTU(log, devices)
	switch cfg.Routing() {
	case config.RoutingNative:
		return network{routes: routes.MainTable{}, podMTU: mtu}, nil
	case config.RoutingVXLAN:
		overhead := tunnel.Overhead(deviceAddrs(devices))
		if mtu == 0 {
			mtu = defaultMTU
		}
		dev, err := tunnel.Ensure(dp, mtu-overhead, bpf.AttachAuto)
		if err != nil {
			return network{}, err
		}
		log.Info("pods reach other nodes' pods through the VXLAN overlay", "device", tunnel.DeviceName,
			"port", tunnel.Port, "mtu", mtu-overhead, "overhead", overhead)
		return network{routes: tunnel.Table{Datapath: dp, Dev: dev}, podMTU: mtu - overhead}, nil
	}
	log.Info("routing to other nodes' pods left to the network (routingMode none)")
	return network{podMTU: mtu}, nil
}

// defaultMTU is Ethernet's, for an overlay on uplinks whose MTU cannot be
// read.
const defaultMTU = 1500

// deviceAddrs are the addresses of the uplinks (the overlay's underlay).
func deviceAddrs(devices []string) []netip.Addr {
	var out []netip.Addr
	for _, dev := range devices {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			continue
		}
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_ALL)
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && a.IP.IsGlobalUnicast() {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// uplinkMTU is the MTU pods get natively: the smallest of the uplinks',
// since pod traffic to other nodes leaves through them as it is (native
// routing adds no header). 0 when no uplink can be read: the CNI plugin
// then uses its default.
func uplinkMTU(log *slog.Logger, devices []string) int {
	mtu := 0
	for _, dev := range devices {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			log.Warn("cannot read the uplink's MTU for the pods'", "device", dev, "err", err)
			continue
		}
		if m := l.Attrs().MTU; m > 0 && (mtu == 0 || m < mtu) {
			mtu = m
		}
	}
	if mtu > 0 {
		log.Info("the uplinks' MTU", "mtu", mtu)
	}
	return mtu
}

// uplinks are the configured devices, or every interface with a global
// unicast address (pod veths have none: they carry only link-local ones).
func uplinks(configured []string) ([]string, error) {
	if len(configured) > 0 {
		return configured, nil
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list the node's addresses: %w", err)
	}
	var names []string
	for _, a := range addrs {
		if !a.IP.IsGlobalUnicast() {
			continue
		}
		l, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			return nil, fmt.Errorf("interface %d: %w", a.LinkIndex, err)
		}
		if name := l.Attrs().Name; !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names, nil
}

// Service account credentials every pod gets.
const (
	saToken = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	saCA    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

// restConfig builds API access: a kubeconfig, or the pod's service account
// with the configured real API server address (ClusterIPs do not work
// before the agent has programmed them).
func restConfig(cfg config.Config) (*rest.Config, error) {
	if cfg.Kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags(cfg.K8sAPIServer, cfg.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", cfg.Kubeconfig, err)
		}
		return c, nil
	}
	host := cfg.K8sAPIServer
	if host == "" && cfg.K8sServiceHost != "" {
		host = "https://" + net.JoinHostPort(cfg.K8sServiceHost, cfg.K8sServicePort)
	}
	if host == "" {
		return nil, errors.New("k8sAPIServer: missing; set k8sAPIServer (or k8sServiceHost and k8sServicePort, or kubeconfig)")
	}
	if _, err := os.Stat(saToken); err != nil {
		return nil, fmt.Errorf("service account token: %w (run in a pod, or set kubeconfig)", err)
	}
	return &rest.Config{Host: host, BearerTokenFile: saToken, TLSClientConfig: rest.TLSClientConfig{CAFile: saCA}}, nil
}

func metricsMux(m *metrics.Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	return mux
}

func healthMux(services *service.Controller) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := services.Ready(); !ok {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

func serve(ctx context.Context, log *slog.Logger, name, addr string, h http.Handler) error {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Info("serving "+name, "addr", addr)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s server on %s: %w", name, addr, err)
	}
	return nil
}
