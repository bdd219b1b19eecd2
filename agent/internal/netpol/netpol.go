// Package netpol keeps the datapath's NetworkPolicy maps in step with the
// API: Pods, Namespaces and NetworkPolicies are compiled (netpol/compile)
// into identities and allow rules, and written (netpol/mapsync) by a
// bounded-frequency runner, so bursts of changes cost one sync.
package netpol

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	listersnetworkingv1 "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/netpol/compile"
	"github.com/sluice-net/sluice/agent/internal/netpol/mapsync"
	"github.com/sluice-net/sluice/agent/internal/runner"
)

// hairpinAddrs are the datapath's hairpin sources: a pod reaching itself
// through a Service arrives from them, and is allowed like the node.
var hairpinAddrs = []netip.Addr{netip.MustParseAddr("169.254.42.1"), netip.MustParseAddr("fd73:6c75:6963:6500::1")}

// Controller compiles and writes NetworkPolicy for one node.
type Controller struct {
	log      *slog.Logger
	nodeName string
	factory  informers.SharedInformerFactory
	pods     listerscorev1.PodLister
	nss      listerscorev1.NamespaceLister
	policies listersnetworkingv1.NetworkPolicyLister
	writer   *mapsync.Writer
	metrics  *metrics.Metrics
	alloc    *compile.Allocator
	runner   *runner.Runner
	synced   []cache.InformerSynced

	firstSync     chan struct{}
	firstSyncOnce sync.Once
}

// New registers the controller's informers on factory.
func New(log *slog.Logger, factory informers.SharedInformerFactory, writer *mapsync.Writer, m *metrics.Metrics,
	nodeName string, minSync, maxSync time.Duration) (*Controller, error) {
	c := &Controller{
		log: log, nodeName: nodeName, factory: factory, writer: writer, metrics: m, alloc: compile.NewAllocator(),
		pods:      factory.Core().V1().Pods().Lister(),
		nss:       factory.Core().V1().Namespaces().Lister(),
		policies:  factory.Networking().V1().NetworkPolicies().Lister(),
		firstSync: make(chan struct{}),
	}
	c.runner = runner.New(c.sync, minSync, maxSync, time.Second, clock.RealClock{})
	for kind, inf := range map[string]cache.SharedIndexInformer{
		"Pod":           factory.Core().V1().Pods().Informer(),
		"Namespace":     factory.Core().V1().Namespaces().Informer(),
		"NetworkPolicy": factory.Networking().V1().NetworkPolicies().Informer(),
	} {
		reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { c.runner.Run() },
			UpdateFunc: func(any, any) { c.runner.Run() },
			DeleteFunc: func(any) { c.runner.Run() },
		})
		if err != nil {
			return nil, fmt.Errorf("watch %ss: %w", kind, err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c, nil
}

// FirstSync is closed once policy has been written (or its writing
// attempted, errors reported) from a full view of the API: pods must not
// start unprotected before that.
func (c *Controller) FirstSync() <-chan struct{} { return c.firstSync }

// Run syncs until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	c.factory.Start(ctx.Done())
	c.log.Info("waiting for Pods, Namespaces and NetworkPolicies to sync from the API server")
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("informer caches for NetworkPolicy did not sync")
	}
	c.runner.Run()
	c.runner.Loop(ctx)
	return nil
}

func (c *Controller) sync() error {
	start := time.Now()
	pods, err := c.pods.List(labels.Everything())
	if err != nil {
		return err
	}
	nss, err := c.nss.List(labels.Everything())
	if err != nil {
		return err
	}
	policies, err := c.policies.List(labels.Everything())
	if err != nil {
		return err
	}
	hostAddrs, err := localAddrs()
	if err != nil {
		return fmt.Errorf("this node's addresses: %w", err)
	}
	out := compile.Compile(compile.Input{NodeName: c.nodeName, HostAddrs: hostAddrs, Pods: pods, Namespaces: nss, Policies: policies}, c.alloc)
	for _, e := range out.Errors {
		c.metrics.ObjectErrors.Inc()
		c.log.Warn("NetworkPolicy skipped", "error", e)
	}
	st, err := c.writer.Apply(out)
	// The node may serve pods once policy has been written from a full
	// view, even if some entries failed (a full map): they are reported
	// and retried, and holding every Service hostage would be worse.
	defer c.firstSyncOnce.Do(func() { close(c.firstSync) })
	c.metrics.PolicySyncDuration.Observe(time.Since(start).Seconds())
	c.metrics.PolicyEndpointsIsolated.Set(float64(st.Isolated))
	for name, n := range map[string]int{"ipcache": st.IPCache, "policy_cidrs": st.CIDRs, "policy_endpoints": st.Endpoints, "policy": st.Rules} {
		c.metrics.MapEntries.WithLabelValues(name).Set(float64(n))
	}
	if err != nil {
		c.metrics.SyncErrors.Inc()
		return fmt.Errorf("write NetworkPolicy maps: %w", err)
	}
	level := slog.LevelDebug
	if st.Written+st.Deleted > 0 {
		level = slog.LevelInfo
	}
	c.log.Log(context.Background(), level, "NetworkPolicy synced", "policies", len(policies), "isolatedEndpoints", st.Isolated,
		"rules", st.Rules, "written", st.Written, "deleted", st.Deleted, "took", time.Since(start))
	return nil
}

// localAddrs are the addresses of this node's network namespace (the
// agent runs in it), plus the hairpin sources: traffic from them is the
// node's own, always allowed.
func localAddrs() ([]netip.Addr, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := append([]netip.Addr(nil), hairpinAddrs...)
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}
