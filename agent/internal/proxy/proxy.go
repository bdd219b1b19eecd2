// Package proxy is the agent's service proxy: informer events request a
// sync from a bounded-frequency runner; a sync compiles every Service and
// EndpointSlice from the informer caches and applies the difference to the
// datapath. Handlers never block and never touch the maps.
package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/sluice-net/sluice/agent/internal/compile"
	"github.com/sluice-net/sluice/agent/internal/mapsync"
	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/runner"
	"github.com/sluice-net/sluice/cni/nodestate"
)

// Options configure the proxy.
type Options struct {
	NodeName         string
	NodePortCIDRs    []netip.Prefix // empty: every node address
	NodeStateFile    string
	MinSync, MaxSync time.Duration
	Clock            clock.Clock
}

// Proxy keeps the datapath's service maps in step with the API.
type Proxy struct {
	log     *slog.Logger
	opts    Options
	factory informers.SharedInformerFactory
	writer  *mapsync.Writer
	metrics *metrics.Metrics
	runner  *runner.Runner

	mu   sync.Mutex
	node *v1.Node // this node, once seen

	ready     atomic.Bool
	lastError atomic.Value // string
}

// New wires the proxy to the factory's informers.
func New(log *slog.Logger, factory informers.SharedInformerFactory, writer *mapsync.Writer, m *metrics.Metrics, opts Options) (*Proxy, error) {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	p := &Proxy{log: log, opts: opts, factory: factory, writer: writer, metrics: m}
	p.runner = runner.New(p.sync, opts.MinSync, opts.MaxSync, opts.MinSync, opts.Clock)
	p.lastError.Store("no sync yet")

	handler := func(kind string) cache.ResourceEventHandlerFuncs {
		return cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { p.changed(kind, "added", obj) },
			UpdateFunc: func(_, obj any) { p.changed(kind, "updated", obj) },
			DeleteFunc: func(obj any) { p.changed(kind, "deleted", obj) },
		}
	}
	for _, inf := range []struct {
		kind string
		i    cache.SharedIndexInformer
	}{
		{"Service", factory.Core().V1().Services().Informer()},
		{"EndpointSlice", factory.Discovery().V1().EndpointSlices().Informer()},
		{"Node", factory.Core().V1().Nodes().Informer()},
	} {
		if _, err := inf.i.AddEventHandler(handler(inf.kind)); err != nil {
			return nil, fmt.Errorf("watch %ss: %w", inf.kind, err)
		}
	}
	return p, nil
}

func (p *Proxy) changed(kind, what string, obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if n, ok := obj.(*v1.Node); ok {
		if n.Name != p.opts.NodeName {
			return // other nodes matter for routes, not for services
		}
		p.mu.Lock()
		if what == "deleted" {
			p.node = nil
		} else {
			p.node = n.DeepCopy()
		}
		p.mu.Unlock()
	}
	if o, ok := obj.(interface {
		GetNamespace() string
		GetName() string
	}); ok {
		p.log.Debug(kind+" "+what, "object", o.GetNamespace()+"/"+o.GetName())
	}
	p.runner.Run()
}

// Run starts the informers, waits for their caches and syncs until ctx ends.
func (p *Proxy) Run(ctx context.Context) error {
	p.factory.Start(ctx.Done())
	p.log.Info("waiting for Services, EndpointSlices and Nodes to sync from the API server")
	for typ, ok := range p.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("informer cache for %v did not sync", typ)
		}
	}
	p.log.Info("informer caches synced; programming the datapath")
	p.runner.Run()
	p.runner.Loop(ctx)
	return nil
}

// Ready reports whether the datapath has been programmed from a full view
// of the API, and if not, why.
func (p *Proxy) Ready() (bool, string) {
	if p.ready.Load() {
		return true, ""
	}
	return false, p.lastError.Load().(string)
}

func (p *Proxy) nodeInfo() (compile.Node, []string, error) {
	p.mu.Lock()
	n := p.node
	p.mu.Unlock()
	if n == nil {
		return compile.Node{}, nil, fmt.Errorf("node %q not found in the API (is nodeName right?)", p.opts.NodeName)
	}
	info := compile.Node{Name: n.Name, Zone: n.Labels[v1.LabelTopologyZone]}
	for _, a := range n.Status.Addresses {
		if a.Type != v1.NodeInternalIP && a.Type != v1.NodeExternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		if len(p.opts.NodePortCIDRs) == 0 || slices.ContainsFunc(p.opts.NodePortCIDRs, func(c netip.Prefix) bool { return c.Contains(ip) }) {
			info.NodePortAddrs = append(info.NodePortAddrs, ip)
		}
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	return info, cidrs, nil
}

func (p *Proxy) sync() error {
	start := p.opts.Clock.Now()
	err := p.syncOnce(start)
	p.metrics.SyncDuration.Observe(p.opts.Clock.Since(start).Seconds())
	if err != nil {
		p.metrics.SyncErrors.Inc()
		p.lastError.Store(err.Error())
		p.log.Error("datapath sync failed; will retry", "err", err)
	}
	return err
}

func (p *Proxy) syncOnce(start time.Time) error {
	node, podCIDRs, err := p.nodeInfo()
	if err != nil {
		return err
	}
	svcs, err := p.factory.Core().V1().Services().Lister().List(labels.Everything())
	if err != nil {
		return err
	}
	eps, err := p.factory.Discovery().V1().EndpointSlices().Lister().List(labels.Everything())
	if err != nil {
		return err
	}
	desired, objErrs := compile.Compile(svcs, eps, node)
	for _, e := range objErrs {
		p.metrics.ObjectErrors.Inc()
		p.log.Warn("object partly ignored", "err", e)
	}
	st, err := p.writer.Sync(desired)
	p.metrics.ServicesProgrammed.Set(float64(st.Services))
	p.metrics.BackendsProgrammed.Set(float64(st.Backends))
	p.metrics.MapEntries.WithLabelValues("services").Set(float64(st.Services))
	p.metrics.MapEntries.WithLabelValues("backends").Set(float64(st.Backends))
	if err != nil {
		return err
	}
	if st.Changed() {
		p.log.Info("datapath synced", "services", st.Services, "backends", st.Backends,
			"servicesWritten", st.ServicesWritten, "servicesDeleted", st.ServicesDeleted,
			"backendsWritten", st.BackendsWritten, "backendsDeleted", st.BackendsDeleted,
			"tablesWritten", st.TablesWritten, "took", p.opts.Clock.Since(start))
	}
	if len(podCIDRs) == 0 {
		return fmt.Errorf("node %q has no spec.podCIDRs yet: pods cannot get addresses", p.opts.NodeName)
	}
	if err := nodestate.Write(p.opts.NodeStateFile, nodestate.State{Ready: true, PodCIDRs: podCIDRs}); err != nil {
		return err
	}
	if !p.ready.Swap(true) {
		p.log.Info("datapath programmed; node ready for pods", "podCIDRs", podCIDRs, "stateFile", p.opts.NodeStateFile)
	}
	return nil
}
