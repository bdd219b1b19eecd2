// Package service is the agent's service proxy: informer events mark the
// Services they touch and request a sync from a bounded-frequency runner; a
// sync recompiles only the marked Services (all of them after a change of
// this Node) from the informer caches and applies the difference to the
// datapath. Handlers never block and never touch the maps.
package service

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/sluice-net/sluice/agent/internal/healthcheck"
	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/runner"
	"github.com/sluice-net/sluice/agent/internal/service/compile"
	"github.com/sluice-net/sluice/agent/internal/service/mapsync"
	"github.com/sluice-net/sluice/internal/nodestate"
)

// Options configure the proxy.
type Options struct {
	NodeName         string
	NodePortCIDRs    []netip.Prefix // empty: every node address
	NodeStateFile    string
	MinSync, MaxSync time.Duration
	Clock            clock.Clock
	// HealthChecks serves healthCheckNodePorts; nil disables them.
	HealthChecks *healthcheck.Server
}

// Proxy keeps the datapath's service maps in step with the API.
type Proxy struct {
	log     *slog.Logger
	opts    Options
	factory informers.SharedInformerFactory
	writer  *mapsync.Writer
	metrics *metrics.Metrics
	runner  *runner.Runner

	mu    sync.Mutex
	node  *v1.Node                      // this node, once seen
	dirty map[types.NamespacedName]bool // Services to recompile
	full  bool                          // recompile everything

	// perService is the compiled state by Service, desired its union;
	// only sync touches them.
	perService   map[types.NamespacedName]compile.Desired
	desired      compile.Desired
	healthChecks map[types.NamespacedName]compile.HealthCheck
	lastFull     time.Time

	handlersSynced []cache.InformerSynced

	ready     atomic.Bool
	lastError atomic.Value // string
}

// New wires the proxy to the factory's informers.
func New(log *slog.Logger, factory informers.SharedInformerFactory, writer *mapsync.Writer, m *metrics.Metrics, opts Options) (*Proxy, error) {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	p := &Proxy{log: log, opts: opts, factory: factory, writer: writer, metrics: m,
		dirty: map[types.NamespacedName]bool{}, full: true, perService: map[types.NamespacedName]compile.Desired{},
		desired:      compile.Desired{},
		healthChecks: map[types.NamespacedName]compile.HealthCheck{}}
	err := factory.Discovery().V1().EndpointSlices().Informer().AddIndexers(cache.Indexers{sliceIndex: func(obj any) ([]string, error) {
		s, ok := obj.(*discovery.EndpointSlice)
		if !ok || s.Labels[discovery.LabelServiceName] == "" {
			return nil, nil
		}
		return []string{s.Namespace + "/" + s.Labels[discovery.LabelServiceName]}, nil
	}})
	if err != nil {
		return nil, fmt.Errorf("index EndpointSlices by Service: %w", err)
	}
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
		reg, err := inf.i.AddEventHandler(handler(inf.kind))
		if err != nil {
			return nil, fmt.Errorf("watch %ss: %w", inf.kind, err)
		}
		p.handlersSynced = append(p.handlersSynced, reg.HasSynced)
	}
	return p, nil
}

func (p *Proxy) changed(kind, what string, obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	p.mu.Lock()
	switch o := obj.(type) {
	case *v1.Node:
		if o.Name != p.opts.NodeName {
			p.mu.Unlock()
			return // other nodes matter for routes, not for services
		}
		if what == "deleted" {
			p.node = nil
		} else if p.node != nil && !nodeChangeMatters(p.node, o) {
			// A status heartbeat: nothing the datapath uses changed, and a
			// full sync every few seconds would delay real changes.
			p.mu.Unlock()
			return
		} else {
			p.node = o.DeepCopy()
		}
		p.full = true
	case *v1.Service:
		p.dirty[types.NamespacedName{Namespace: o.Namespace, Name: o.Name}] = true
	case *discovery.EndpointSlice:
		if name := o.Labels[discovery.LabelServiceName]; name != "" {
			p.dirty[types.NamespacedName{Namespace: o.Namespace, Name: name}] = true
		}
	}
	p.mu.Unlock()
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
	// Our handlers, too, must have seen the initial lists: the first sync
	// is a full one, and marks from the initial list would only make the
	// next sync recompile every Service again.
	if !cache.WaitForCacheSync(ctx.Done(), p.handlersSynced...) {
		return fmt.Errorf("event handlers did not catch up with the informers")
	}
	p.mu.Lock()
	p.dirty, p.full = map[types.NamespacedName]bool{}, true
	p.mu.Unlock()
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

// nodeChangeMatters reports whether an update of this node changes what
// the proxy compiles from it: its labels (topology zone), addresses
// (NodePorts) or pod CIDRs.
func nodeChangeMatters(old, cur *v1.Node) bool {
	return !maps.Equal(old.Labels, cur.Labels) || !slices.Equal(old.Status.Addresses, cur.Status.Addresses) ||
		!slices.Equal(old.Spec.PodCIDRs, cur.Spec.PodCIDRs) || old.Spec.PodCIDR != cur.Spec.PodCIDR
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
	touched, full, err := p.compile(node)
	if err != nil {
		return err
	}
	var st mapsync.Stats
	if full {
		st, err = p.writer.Sync(p.desired)
	} else {
		st, err = p.writer.SyncTouched(p.desired, touched)
	}
	if err == nil && (full || st.TablesWritten >= freeMemoryAfterTables) {
		// Building Maglev tables in bulk (a full sync, or a burst of new
		// Services) leaves megabytes of transient garbage; hand it back to
		// the node now instead of keeping it as RSS until the runtime
		// scavenges it minutes later.
		debug.FreeOSMemory()
	}
	if err != nil {
		// What failed is not tracked per frontend: compare everything next time.
		p.mu.Lock()
		p.full = true
		p.mu.Unlock()
	}
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
	if p.opts.HealthChecks != nil {
		var checks []compile.HealthCheck
		for _, hc := range p.healthChecks {
			checks = append(checks, hc)
		}
		if err := p.opts.HealthChecks.Sync(checks); err != nil {
			p.log.Error("health check ports", "err", err)
		}
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

const sliceIndex = "service"

// freeMemoryAfterTables is the number of Maglev tables (64 KiB each at the
// default size, plus their permutations) one sync must write before it
// returns the garbage to the operating system at once.
const freeMemoryAfterTables = 100

// compile recompiles the Services marked dirty (all after a Node change)
// into p.desired, and returns the frontends that may have changed (full:
// all of them).
func (p *Proxy) compile(node compile.Node) (touched []compile.Frontend, full bool, err error) {
	p.mu.Lock()
	dirty, full := p.dirty, p.full
	p.dirty, p.full = map[types.NamespacedName]bool{}, false
	p.mu.Unlock()
	// The periodic sync (MaxSync) recompiles every Service from the
	// caches, so a lost dirty mark cannot leave a Service stale for long.
	if p.opts.Clock.Since(p.lastFull) >= p.opts.MaxSync {
		full = true
	}
	if full {
		p.lastFull = p.opts.Clock.Now()
	}
	restore := func() {
		p.mu.Lock()
		p.full = true
		p.mu.Unlock()
	}
	services := p.factory.Core().V1().Services().Lister()
	if full {
		all, err := services.List(labels.Everything())
		if err != nil {
			restore()
			return nil, false, err
		}
		p.desired = compile.Desired{}
		p.perService = map[types.NamespacedName]compile.Desired{}
		p.healthChecks = map[types.NamespacedName]compile.HealthCheck{}
		dirty = map[types.NamespacedName]bool{}
		for _, s := range all {
			dirty[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = true
		}
	}
	index := p.factory.Discovery().V1().EndpointSlices().Informer().GetIndexer()
	for key := range dirty {
		svc, err := services.Services(key.Namespace).Get(key.Name)
		// The Service's old frontends leave; its new ones (if any) enter.
		for f := range p.perService[key] {
			delete(p.desired, f)
			touched = append(touched, f)
		}
		if apierrors.IsNotFound(err) {
			delete(p.perService, key)
			delete(p.healthChecks, key)
			continue
		}
		if err != nil {
			restore()
			return nil, false, err
		}
		objs, err := index.ByIndex(sliceIndex, key.String())
		if err != nil {
			restore()
			return nil, false, err
		}
		slices := make([]*discovery.EndpointSlice, 0, len(objs))
		for _, o := range objs {
			slices = append(slices, o.(*discovery.EndpointSlice))
		}
		d, errs := compile.Service(svc, slices, node)
		for _, e := range errs {
			p.metrics.ObjectErrors.Inc()
			p.log.Warn("object partly ignored", "err", e)
		}
		p.perService[key] = d
		for f, e := range d {
			p.desired[f] = e
			touched = append(touched, f)
		}
		if hc, ok := compile.ServiceHealthCheck(svc, slices, node); ok {
			p.healthChecks[key] = hc
		} else {
			delete(p.healthChecks, key)
		}
	}
	return touched, full, nil
}
