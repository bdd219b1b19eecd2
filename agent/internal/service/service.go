// Package service is the agent's service proxy, the controller of the
// Services pipeline (compile, then mapsync): informer events mark the
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
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/sluice-net/sluice/agent/internal/apiobj"
	"github.com/sluice-net/sluice/agent/internal/healthcheck"
	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/proxyhealth"
	"github.com/sluice-net/sluice/agent/internal/runner"
	"github.com/sluice-net/sluice/agent/internal/service/compile"
	"github.com/sluice-net/sluice/agent/internal/service/mapsync"
	"github.com/sluice-net/sluice/internal/nodestate"
)

// Options configure the controller.
type Options struct {
	NodeName      string
	NodePortCIDRs []netip.Prefix // empty: every node address
	NodeStateFile string
	// PodMTU is published in the node state for the CNI plugin: the MTU
	// pods get unless its configuration sets one; 0: not known.
	PodMTU           int
	MinSync, MaxSync time.Duration
	Clock            clock.Clock
	// HealthChecks serves healthCheckNodePorts; nil disables them.
	HealthChecks *healthcheck.Server
	// ProxyHealth is told of every change queued and every sync done,
	// and of this node's state, for the kube-proxy health server; nil:
	// none.
	ProxyHealth *proxyhealth.Tracker
	// Recorder posts Events on the Services the controller cannot program
	// as asked; nil posts none.
	Recorder record.EventRecorder
}

// Controller keeps the datapath's service maps in step with the API.
type Controller struct {
	log     *slog.Logger
	opts    Options
	factory informers.SharedInformerFactory
	writer  *mapsync.Writer
	metrics *metrics.Metrics
	// syncMetrics are this controller's series of the shared sync metrics.
	syncMetrics metrics.Controller
	svcMetrics  *metrics.Service
	runner      *runner.Runner

	mu    sync.Mutex
	node  *v1.Node                      // this node, once seen
	dirty map[types.NamespacedName]bool // Services to recompile
	// dirtyPods are this node's pods with hostPorts to recompile.
	dirtyPods map[types.NamespacedName]bool
	full      bool // recompile everything
	// triggers are the last-change-trigger-times of the EndpointSlice
	// changes the next sync programs, for the network programming metric.
	triggers []time.Time

	// perService is the compiled state by Service; claims lists, by
	// frontend, the Services whose compiled state has it; desired holds
	// each frontend's owner's entry (the oldest claimant's), and conflicts
	// the frontends claimed more than once. Only sync touches them.
	perService map[types.NamespacedName]compile.Desired
	claims     map[compile.Frontend][]types.NamespacedName
	// perPod and podClaims are the same for the hostPorts of this node's
	// pods, which claim frontends on node addresses as Services do.
	perPod       map[types.NamespacedName]compile.Desired
	podClaims    map[compile.Frontend][]types.NamespacedName
	desired      compile.Desired
	conflicts    map[compile.Frontend]compile.Conflict
	healthChecks map[types.NamespacedName]compile.HealthCheck
	lastFull     time.Time
	// fullReported are the Services (with the map) last reported as not
	// programmed for a full map, conflictReported the losers of contested
	// frontends last reported, with the owner; only sync touches them.
	fullReported     map[fullKey]bool
	conflictReported map[conflictKey]types.NamespacedName

	synced []cache.InformerSynced // our handlers have seen the initial lists

	ready     atomic.Bool
	lastError atomic.Value // string
	lastSync  atomic.Pointer[time.Time]
}

// New registers the controller's informers and handlers on factory; the
// caller starts the factory.
func New(log *slog.Logger, factory informers.SharedInformerFactory, writer *mapsync.Writer, m *metrics.Metrics, opts Options) (*Controller, error) {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	c := &Controller{log: log, opts: opts, factory: factory, writer: writer, metrics: m, syncMetrics: m.Controller("service"),
		svcMetrics: m.RegisterService(),
		dirty:      map[types.NamespacedName]bool{}, full: true, perService: map[types.NamespacedName]compile.Desired{},
		claims:    map[compile.Frontend][]types.NamespacedName{},
		dirtyPods: map[types.NamespacedName]bool{}, perPod: map[types.NamespacedName]compile.Desired{},
		podClaims: map[compile.Frontend][]types.NamespacedName{},
		desired:   compile.Desired{}, conflicts: map[compile.Frontend]compile.Conflict{},
		healthChecks: map[types.NamespacedName]compile.HealthCheck{},
		fullReported: map[fullKey]bool{}, conflictReported: map[conflictKey]types.NamespacedName{}}
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
	c.runner = runner.New(c.sync, opts.MinSync, opts.MaxSync, opts.MinSync, opts.Clock)
	c.lastError.Store("no sync yet")

	handler := func(kind string) cache.ResourceEventHandlerFuncs {
		return cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { c.changed(kind, "added", obj) },
			UpdateFunc: func(_, obj any) { c.changed(kind, "updated", obj) },
			DeleteFunc: func(obj any) { c.changed(kind, "deleted", obj) },
		}
	}
	for _, inf := range []struct {
		kind string
		i    cache.SharedIndexInformer
	}{
		{"Service", factory.Core().V1().Services().Informer()},
		{"EndpointSlice", factory.Discovery().V1().EndpointSlices().Informer()},
		{"Node", factory.Core().V1().Nodes().Informer()},
		{"Pod", factory.Core().V1().Pods().Informer()},
	} {
		reg, err := inf.i.AddEventHandler(handler(inf.kind))
		if err != nil {
			return nil, fmt.Errorf("watch %ss: %w", inf.kind, err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c, nil
}

func (c *Controller) changed(kind, what string, obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	c.mu.Lock()
	switch o := obj.(type) {
	case *v1.Node:
		if o.Name != c.opts.NodeName {
			c.mu.Unlock()
			return // other nodes matter for routes, not for services
		}
		live := o // nil once deleted: no longer eligible for load balancers
		if what == "deleted" {
			live = nil
		}
		if c.opts.ProxyHealth != nil {
			c.opts.ProxyHealth.SyncNode(live)
		}
		if live == nil {
			c.node = nil
		} else if c.node != nil && !nodeChangeMatters(c.node, o) {
			// A status heartbeat: nothing the datapath uses changed, and a
			// full sync every few seconds would delay real changes.
			c.mu.Unlock()
			return
		} else {
			c.node = o.DeepCopy()
		}
		c.full = true
	case *v1.Service:
		c.dirty[types.NamespacedName{Namespace: o.Namespace, Name: o.Name}] = true
	case *v1.Pod:
		if o.Spec.NodeName != c.opts.NodeName || !hasHostPorts(o) {
			c.mu.Unlock()
			return // pods matter here only for the hostPorts of this node's
		}
		c.dirtyPods[types.NamespacedName{Namespace: o.Namespace, Name: o.Name}] = true
	case *discovery.EndpointSlice:
		if name := o.Labels[discovery.LabelServiceName]; name != "" {
			c.dirty[types.NamespacedName{Namespace: o.Namespace, Name: name}] = true
		}
		if at, err := time.Parse(time.RFC3339, o.Annotations[v1.EndpointsLastChangeTriggerTime]); err == nil && what != "deleted" {
			c.triggers = append(c.triggers, at)
		}
	}
	c.mu.Unlock()
	if c.opts.ProxyHealth != nil {
		c.opts.ProxyHealth.Queued()
	}
	if o, ok := obj.(interface {
		GetNamespace() string
		GetName() string
	}); ok {
		c.log.Debug(kind+" "+what, "object", o.GetNamespace()+"/"+o.GetName())
	}
	c.runner.Run()
}

// Run waits until the handlers have seen the informers' initial lists,
// then syncs until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	c.log.Info("waiting for Services, EndpointSlices and Nodes to sync from the API server")
	// A handler has synced when its informer has and it has seen the whole
	// initial list. The marks from that list are dropped: the first sync is
	// a full one, and they would only make the next one recompile every
	// Service again.
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("informer caches for Services did not sync")
	}
	c.mu.Lock()
	c.dirty, c.dirtyPods, c.full, c.triggers = map[types.NamespacedName]bool{}, map[types.NamespacedName]bool{}, true, nil
	c.mu.Unlock()
	c.log.Info("informer caches synced; programming the datapath")
	c.runner.Run()
	c.runner.Loop(ctx)
	return nil
}

// Ready reports whether the datapath has been programmed from a full view
// of the API, and if not, why.
func (c *Controller) Ready() (bool, string) {
	if c.ready.Load() {
		return true, ""
	}
	return false, c.lastError.Load().(string)
}

// LastSync is when the datapath was last programmed successfully; zero
// before.
func (c *Controller) LastSync() time.Time {
	if t := c.lastSync.Load(); t != nil {
		return *t
	}
	return time.Time{}
}

// Programmed lists the frontends the service maps hold, named, with their
// backends.
func (c *Controller) Programmed() []mapsync.Programmed { return c.writer.Programmed() }

// ServiceName names the Service port of frontend svcID as
// NAMESPACE/NAME:PORT (NAMESPACE/NAME when the port has no name); "" when
// the frontend is not known (or not yet named after a restart). It never
// waits for a sync: it reads the names as of the last one.
func (c *Controller) ServiceName(svcID uint32) string {
	p, ok := c.writer.ServiceName(svcID)
	if !ok || p.Service.Name == "" {
		return ""
	}
	if p.PortName == "" {
		return p.Service.String()
	}
	return p.Service.String() + ":" + p.PortName
}

// nodeChangeMatters reports whether an update of this node changes what
// the proxy compiles from it: its labels (topology zone), addresses
// (NodePorts) or pod CIDRs.
func nodeChangeMatters(old, cur *v1.Node) bool {
	return !maps.Equal(old.Labels, cur.Labels) || !slices.Equal(old.Status.Addresses, cur.Status.Addresses) ||
		!slices.Equal(old.Spec.PodCIDRs, cur.Spec.PodCIDRs) || old.Spec.PodCIDR != cur.Spec.PodCIDR
}

func (c *Controller) nodeInfo() (compile.Node, []string, error) {
	c.mu.Lock()
	n := c.node
	c.mu.Unlock()
	if n == nil {
		return compile.Node{}, nil, fmt.Errorf("node %q not found in the API (is nodeName right?)", c.opts.NodeName)
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
		info.Addrs = append(info.Addrs, ip)
		if len(c.opts.NodePortCIDRs) == 0 || slices.ContainsFunc(c.opts.NodePortCIDRs, func(cidr netip.Prefix) bool { return cidr.Contains(ip) }) {
			info.NodePortAddrs = append(info.NodePortAddrs, ip)
		}
	}
	return info, apiobj.PodCIDRs(n), nil
}

func (c *Controller) sync() error {
	start := c.opts.Clock.Now()
	c.mu.Lock()
	triggers := c.triggers
	c.triggers = nil
	c.mu.Unlock()
	err := c.syncOnce(start)
	end := c.opts.Clock.Now()
	c.syncMetrics.SyncDuration.Observe(end.Sub(start).Seconds())
	if err != nil {
		c.syncMetrics.SyncErrors.Inc()
		c.lastError.Store(err.Error())
		c.log.Error("datapath sync failed; will retry", "err", err)
		c.mu.Lock()
		c.triggers = append(triggers, c.triggers...) // programmed by a later sync
		c.mu.Unlock()
		return err
	}
	c.svcMetrics.SyncProxyRules.Observe(end.Sub(start).Seconds())
	c.svcMetrics.SyncProxyRulesLast.Set(float64(end.UnixNano()) / 1e9)
	for _, at := range triggers {
		c.svcMetrics.NetworkProgramming.Observe(end.Sub(at).Seconds())
	}
	if c.opts.ProxyHealth != nil {
		c.opts.ProxyHealth.Updated()
	}
	return nil
}

func (c *Controller) syncOnce(start time.Time) error {
	node, podCIDRs, err := c.nodeInfo()
	if err != nil {
		return err
	}
	touched, full, err := c.compile(node)
	if err != nil {
		return err
	}
	c.reportConflicts()
	var st mapsync.Stats
	if full {
		st, err = c.writer.Sync(c.desired)
	} else {
		st, err = c.writer.SyncTouched(c.desired, touched)
	}
	c.reportFull(mapsync.FullErrors(err))
	if err == nil && (full || st.TablesWritten >= freeMemoryAfterTables) {
		// Building Maglev tables in bulk (a full sync, or a burst of new
		// Services) leaves megabytes of transient garbage; hand it back to
		// the node now instead of keeping it as RSS until the runtime
		// scavenges it minutes later.
		debug.FreeOSMemory()
	}
	if err != nil {
		// What failed is not tracked per frontend: compare everything next time.
		c.mu.Lock()
		c.full = true
		c.mu.Unlock()
	}
	c.metrics.ServicesProgrammed.Set(float64(st.Services))
	c.metrics.BackendsProgrammed.Set(float64(st.Backends))
	c.metrics.MapEntries.WithLabelValues("services").Set(float64(st.Services))
	c.metrics.MapEntries.WithLabelValues("backends").Set(float64(st.Backends))
	// Services that do not fit a full map are reported (reportFull) and
	// retried; everything else is programmed, and keeping every new pod of
	// the node waiting for them would be worse. Any other error stops here.
	if err != nil && !mapsync.OnlyFull(err) {
		return err
	}
	syncErr := err
	if st.Changed() {
		c.log.Info("datapath synced", "services", st.Services, "backends", st.Backends,
			"servicesWritten", st.ServicesWritten, "servicesDeleted", st.ServicesDeleted,
			"backendsWritten", st.BackendsWritten, "backendsDeleted", st.BackendsDeleted,
			"tablesWritten", st.TablesWritten, "rangesWritten", st.RangesWritten, "rangesDeleted", st.RangesDeleted, "took", c.opts.Clock.Since(start))
	}
	if c.opts.HealthChecks != nil {
		var checks []compile.HealthCheck
		for _, hc := range c.healthChecks {
			checks = append(checks, hc)
		}
		if err := c.opts.HealthChecks.Sync(checks); err != nil {
			c.log.Error("health check ports", "err", err)
		}
	}
	if len(podCIDRs) == 0 {
		return fmt.Errorf("node %q has no spec.podCIDRs yet: pods cannot get addresses", c.opts.NodeName)
	}
	if err := c.writer.SetNodePodCIDRs(podCIDRs); err != nil {
		return err
	}
	if err := nodestate.Write(c.opts.NodeStateFile, nodestate.State{Ready: true, PodCIDRs: podCIDRs, PodMTU: c.opts.PodMTU}); err != nil {
		return err
	}
	now := c.opts.Clock.Now()
	c.lastSync.Store(&now)
	if !c.ready.Swap(true) {
		c.log.Info("datapath programmed; node ready for pods", "podCIDRs", podCIDRs, "stateFile", c.opts.NodeStateFile)
	}
	return syncErr
}

const sliceIndex = "service"

// fullKey is a Service that a full map kept out of the datapath.
type fullKey struct {
	service types.NamespacedName
	mapName string
}

// reportFull reports the frontends a full map kept out of the datapath:
// each sync that met a full map counts once per map; a Service newly
// affected gets a log line and a Warning Event naming the map, its
// capacity and the setting to raise (once, not at every retry).
func (c *Controller) reportFull(fes []*mapsync.FullError) {
	now := map[fullKey]bool{}
	counted := map[string]bool{}
	for _, fe := range fes {
		if !counted[fe.Label] {
			counted[fe.Label] = true
			c.metrics.MapFull.WithLabelValues(fe.Label).Inc()
		}
		k := fullKey{fe.Service, fe.Map}
		if now[k] {
			continue
		}
		now[k] = true
		if c.fullReported[k] {
			continue
		}
		c.log.Error("datapath map full: Service not programmed", "service", fe.Service.String(), "frontend", fe.Frontend.String(),
			"map", fe.Map, "capacity", fe.Capacity, "raise", fe.Setting)
		c.event(fe.Service, v1.EventTypeWarning, "MapFull", "Frontend %s not programmed on node %s: datapath map %s is full (capacity %d); raise the agent's %s",
			fe.Frontend, c.opts.NodeName, fe.Map, fe.Capacity, fe.Setting)
	}
	c.fullReported = now
}

// event posts an Event on a Service, if it still exists.
func (c *Controller) event(key types.NamespacedName, eventType, reason, format string, args ...any) {
	if c.opts.Recorder == nil {
		return
	}
	svc, err := c.factory.Core().V1().Services().Lister().Services(key.Namespace).Get(key.Name)
	if err != nil {
		return
	}
	c.opts.Recorder.Eventf(svc, eventType, reason, format, args...)
}

// freeMemoryAfterTables is the number of Maglev tables (64 KiB each at the
// default size, plus their permutations) one sync must write before it
// returns the garbage to the operating system at once.
const freeMemoryAfterTables = 100

// compile recompiles the Services marked dirty (all after a Node change)
// into c.desired, and returns the frontends that may have changed (full:
// all of them).
func (c *Controller) compile(node compile.Node) (touched []compile.Frontend, full bool, err error) {
	c.mu.Lock()
	dirty, dirtyPods, full := c.dirty, c.dirtyPods, c.full
	c.dirty, c.dirtyPods, c.full = map[types.NamespacedName]bool{}, map[types.NamespacedName]bool{}, false
	c.mu.Unlock()
	// The periodic sync (MaxSync) recompiles every Service from the
	// caches, so a lost dirty mark cannot leave a Service stale for long.
	if c.opts.Clock.Since(c.lastFull) >= c.opts.MaxSync {
		full = true
	}
	if full {
		c.lastFull = c.opts.Clock.Now()
	}
	restore := func() {
		c.mu.Lock()
		c.full = true
		c.mu.Unlock()
	}
	services := c.factory.Core().V1().Services().Lister()
	if full {
		all, err := services.List(labels.Everything())
		if err != nil {
			restore()
			return nil, false, err
		}
		c.desired = compile.Desired{}
		c.perService = map[types.NamespacedName]compile.Desired{}
		c.claims = map[compile.Frontend][]types.NamespacedName{}
		c.conflicts = map[compile.Frontend]compile.Conflict{}
		c.healthChecks = map[types.NamespacedName]compile.HealthCheck{}
		c.perPod = map[types.NamespacedName]compile.Desired{}
		c.podClaims = map[compile.Frontend][]types.NamespacedName{}
		dirty = map[types.NamespacedName]bool{}
		for _, s := range all {
			dirty[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = true
		}
		pods, err := c.factory.Core().V1().Pods().Lister().List(labels.Everything())
		if err != nil {
			restore()
			return nil, false, err
		}
		dirtyPods = map[types.NamespacedName]bool{}
		for _, p := range pods {
			if p.Spec.NodeName == c.opts.NodeName && hasHostPorts(p) {
				dirtyPods[types.NamespacedName{Namespace: p.Namespace, Name: p.Name}] = true
			}
		}
	}
	index := c.factory.Discovery().V1().EndpointSlices().Informer().GetIndexer()
	// The frontends whose claims changed: their owner is decided again.
	recheck := map[compile.Frontend]bool{}
	for key := range dirty {
		svc, err := services.Services(key.Namespace).Get(key.Name)
		// The Service's old claims leave; its new ones (if any) enter.
		unclaim(c.perService, c.claims, key, recheck)
		if apierrors.IsNotFound(err) {
			delete(c.healthChecks, key)
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
		c.partlyIgnored(errs)
		claim(c.perService, c.claims, key, d, recheck)
		if hc, ok := compile.ServiceHealthCheck(svc, slices, node); ok {
			c.healthChecks[key] = hc
		} else {
			delete(c.healthChecks, key)
		}
	}
	if err := c.compileHostPorts(dirtyPods, node, recheck); err != nil {
		restore()
		return nil, false, err
	}
	for f := range recheck {
		c.resolve(f)
		touched = append(touched, f)
	}
	return touched, full, nil
}

// compileHostPorts recompiles the hostPorts of the dirty pods, marking the
// frontends whose claims changed in recheck.
func (c *Controller) compileHostPorts(dirty map[types.NamespacedName]bool, node compile.Node, recheck map[compile.Frontend]bool) error {
	pods := c.factory.Core().V1().Pods().Lister()
	for key := range dirty {
		unclaim(c.perPod, c.podClaims, key, recheck)
		pod, err := pods.Pods(key.Namespace).Get(key.Name)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return err
		}
		d, errs := compile.HostPorts(pod, node)
		c.partlyIgnored(errs)
		if len(d) > 0 {
			claim(c.perPod, c.podClaims, key, d, recheck)
		}
	}
	return nil
}

// unclaim withdraws key's claims (its compiled state in per) from claims,
// marking the frontends whose claims changed in recheck.
func unclaim(per map[types.NamespacedName]compile.Desired, claims map[compile.Frontend][]types.NamespacedName,
	key types.NamespacedName, recheck map[compile.Frontend]bool) {
	for f := range per[key] {
		claims[f] = slices.DeleteFunc(claims[f], func(k types.NamespacedName) bool { return k == key })
		recheck[f] = true
	}
	delete(per, key)
}

// claim records d as key's compiled state in per and its frontends'
// claims, marking them in recheck.
func claim(per map[types.NamespacedName]compile.Desired, claims map[compile.Frontend][]types.NamespacedName,
	key types.NamespacedName, d compile.Desired, recheck map[compile.Frontend]bool) {
	per[key] = d
	for f := range d {
		claims[f] = append(claims[f], key)
		recheck[f] = true
	}
}

// partlyIgnored reports the fields of objects a compile had to leave out.
func (c *Controller) partlyIgnored(errs []error) {
	for _, e := range errs {
		c.syncMetrics.ObjectErrors.Inc()
		c.log.Warn("object partly ignored", "err", e)
	}
}

// hasHostPorts says whether a pod asks for any hostPort.
func hasHostPorts(p *v1.Pod) bool {
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.HostPort != 0 {
				return true
			}
		}
	}
	return false
}

// resolve gives frontend f to the oldest Service (or pod's hostPort)
// claiming it, or drops it when none does, and records whether it is
// contested. A claimant that loses a frontend, or stops claiming it, never
// touches the owner's entry.
func (c *Controller) resolve(f compile.Frontend) {
	if len(c.claims[f]) == 0 {
		delete(c.claims, f)
	}
	if len(c.podClaims[f]) == 0 {
		delete(c.podClaims, f)
	}
	var entries []compile.Entry
	for _, k := range c.claims[f] {
		entries = append(entries, c.perService[k][f])
	}
	for _, k := range c.podClaims[f] {
		entries = append(entries, c.perPod[k][f])
	}
	if len(entries) == 0 {
		delete(c.desired, f)
		delete(c.conflicts, f)
		return
	}
	owner, conflict := compile.Resolve(f, entries)
	c.desired[f] = owner
	if conflict != nil {
		c.conflicts[f] = *conflict
	} else {
		delete(c.conflicts, f)
	}
}

// conflictKey is a Service that lost a contested frontend.
type conflictKey struct {
	frontend compile.Frontend
	loser    types.NamespacedName
}

// reportConflicts reports the contested frontends: their number as a
// gauge, and for each Service newly losing one (or losing it to another
// owner), a log line and a Warning Event on that Service.
func (c *Controller) reportConflicts() {
	c.svcMetrics.FrontendConflicts.Set(float64(len(c.conflicts)))
	now := make(map[conflictKey]types.NamespacedName, len(c.conflictReported))
	for f, cf := range c.conflicts {
		for _, loser := range cf.Losers {
			k := conflictKey{f, loser}
			now[k] = cf.Owner
			if owner, ok := c.conflictReported[k]; ok && owner == cf.Owner {
				continue
			}
			c.log.Warn("frontend claimed by more than one Service: the oldest owns it", "frontend", f.String(),
				"owner", cf.Owner.String(), "service", loser.String())
			c.event(loser, v1.EventTypeWarning, "FrontendConflict",
				"Frontend %s is also claimed by Service %s, which is older and owns it: this Service gets no traffic there", f, cf.Owner)
		}
	}
	c.conflictReported = now
}
