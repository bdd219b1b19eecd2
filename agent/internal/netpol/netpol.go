// Package netpol keeps the datapath's NetworkPolicy maps in step with the
// API: Pods, Namespaces and NetworkPolicies are compiled (netpol/compile)
// into identities and allow rules, and written (netpol/mapsync) by a
// bounded-frequency runner, so bursts of changes cost one sync.
package netpol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	listersnetworkingv1 "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/netpol/compile"
	"github.com/sluice-net/sluice/agent/internal/netpol/mapsync"
	"github.com/sluice-net/sluice/agent/internal/runner"
	"github.com/sluice-net/sluice/internal/endpointapi"
)

// retryInterval is how soon a failed sync is retried.
const retryInterval = time.Second

// Writer applies compiled policy to the datapath's maps and reads back
// the numbers they hold; *mapsync.Writer is the real one.
type Writer interface {
	Apply(compile.Output) (mapsync.Stats, error)
	Hints() (compile.Hints, error)
}

// Options configure the controller.
type Options struct {
	NodeName         string
	MinSync, MaxSync time.Duration
	Clock            clock.Clock // nil: the real one
	// Recorder posts Events on this Node when a policy map is full; nil
	// posts none.
	Recorder record.EventRecorder
}

// Controller compiles and writes NetworkPolicy for one node.
type Controller struct {
	log      *slog.Logger
	opts     Options
	pods     listerscorev1.PodLister
	nss      listerscorev1.NamespaceLister
	policies listersnetworkingv1.NetworkPolicyLister
	writer   Writer
	metrics  *metrics.Metrics
	// syncMetrics are this controller's series of the shared sync metrics.
	syncMetrics    metrics.Controller
	alloc          *compile.Allocator
	runner         *runner.Runner
	handlersSynced []cache.InformerSynced // our handlers have seen the initial lists

	firstSync     chan struct{}
	firstSyncOnce sync.Once

	// syncMu makes syncs one at a time: the runner's and those the CNI
	// plugin waits for (EnsureEndpoint).
	syncMu sync.Mutex
	// pending are pods the CNI plugin is wiring, with the addresses it
	// gave them, until the API shows them with an address, or they go
	// (DEL, deletion): their policy must be in place before their first
	// packet.
	mu      sync.Mutex
	pending map[types.NamespacedName]endpointapi.Endpoint
	// requests counts EnsureEndpoint requests; served is the count a
	// successful sync had seen when it started: every request up to it has
	// been written.
	requests, served uint64
	// fullMaps are the policy maps found full, reported once until they
	// fit again.
	fullMaps map[string]bool

	// compiled is the output last written to the maps (whole or in part),
	// for naming what the datapath reports; lastSync when a sync last
	// succeeded.
	compiled atomic.Pointer[compile.Output]
	lastSync atomic.Pointer[time.Time]
}

// New registers the controller's informers and handlers on factory; the
// caller starts the factory.
func New(log *slog.Logger, factory informers.SharedInformerFactory, writer Writer, m *metrics.Metrics, opts Options) (*Controller, error) {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	c := &Controller{
		log: log, opts: opts, writer: writer, metrics: m, syncMetrics: m.Controller("netpol"), alloc: compile.NewAllocator(),
		pods:      factory.Core().V1().Pods().Lister(),
		nss:       factory.Core().V1().Namespaces().Lister(),
		policies:  factory.Networking().V1().NetworkPolicies().Lister(),
		firstSync: make(chan struct{}),
		pending:   map[types.NamespacedName]endpointapi.Endpoint{},
		fullMaps:  map[string]bool{},
	}
	c.runner = runner.New(c.sync, opts.MinSync, opts.MaxSync, retryInterval, opts.Clock)
	for _, inf := range []struct {
		kind string
		i    cache.SharedIndexInformer
	}{
		{"Pod", factory.Core().V1().Pods().Informer()},
		{"Namespace", factory.Core().V1().Namespaces().Informer()},
		{"NetworkPolicy", factory.Networking().V1().NetworkPolicies().Informer()},
	} {
		reg, err := inf.i.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { c.changed(inf.kind, "added", obj) },
			UpdateFunc: func(old, cur any) {
				if updateMatters(old, cur) {
					c.changed(inf.kind, "updated", cur)
				}
			},
			DeleteFunc: func(obj any) { c.changed(inf.kind, "deleted", obj) },
		})
		if err != nil {
			return nil, fmt.Errorf("watch %ss: %w", inf.kind, err)
		}
		c.handlersSynced = append(c.handlersSynced, reg.HasSynced)
	}
	return c, nil
}

// changed requests a sync: every sync compiles the whole cluster, so there
// is nothing to mark per object.
func (c *Controller) changed(kind, what string, obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if o, ok := obj.(metav1.Object); ok {
		c.log.Debug(kind+" "+what, "object", o.GetNamespace()+"/"+o.GetName())
	}
	c.runner.Run()
}

// updateMatters reports whether an update changes what the compiler reads:
// Pods and Namespaces are updated far more often (status, annotations)
// than anything policy depends on changes. A NetworkPolicy is all spec.
func updateMatters(old, cur any) bool {
	switch cur := cur.(type) {
	case *v1.Pod:
		old, ok := old.(*v1.Pod)
		return !ok || podChangeMatters(old, cur)
	case *v1.Namespace:
		old, ok := old.(*v1.Namespace)
		return !ok || !maps.Equal(old.Labels, cur.Labels)
	}
	return true
}

// podChangeMatters reports whether an update of a pod changes a field the
// policy compiler reads: labels, addresses, node, host networking, phase
// (finished pods hold no address) and deletion (which of two pods claiming
// one address wins). Namespace, name and container ports (named ports)
// cannot change in an update.
func podChangeMatters(old, cur *v1.Pod) bool {
	return !maps.Equal(old.Labels, cur.Labels) ||
		!slices.Equal(old.Status.PodIPs, cur.Status.PodIPs) || old.Status.PodIP != cur.Status.PodIP ||
		old.Spec.NodeName != cur.Spec.NodeName || old.Spec.HostNetwork != cur.Spec.HostNetwork ||
		old.Status.Phase != cur.Status.Phase ||
		(old.DeletionTimestamp == nil) != (cur.DeletionTimestamp == nil)
}

// FirstSync is closed once policy has been written (or its writing
// attempted, errors reported) from a full view of the API: pods must not
// start unprotected before that.
func (c *Controller) FirstSync() <-chan struct{} { return c.firstSync }

// Run waits until the handlers have seen the informers' initial lists,
// then syncs until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	c.log.Info("waiting for Pods, Namespaces and NetworkPolicies to sync from the API server")
	if !cache.WaitForCacheSync(ctx.Done(), c.handlersSynced...) {
		return fmt.Errorf("informer caches for NetworkPolicy did not sync")
	}
	// A restarted agent numbers everything as its predecessor did, so its
	// first sync rewrites nothing a packet could meet half-written.
	if h, err := c.writer.Hints(); err != nil {
		c.log.Warn("could not read back the policy maps; identities are numbered afresh", "err", err)
	} else {
		c.alloc.Restore(h)
		c.log.Info("policy numbering restored from the pinned maps", "addresses", len(h.PodIdentities), "prefixes", len(h.CIDRIdentities), "endpoints", len(h.Endpoints))
	}
	c.runner.Run()
	c.runner.Loop(ctx)
	return nil
}

func (c *Controller) sync() error {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	c.mu.Lock()
	requests := c.requests
	c.mu.Unlock()
	start := c.opts.Clock.Now()
	err := c.syncOnce(start)
	if err == nil {
		c.mu.Lock()
		c.served = max(c.served, requests)
		c.mu.Unlock()
	}
	c.syncMetrics.SyncDuration.Observe(c.opts.Clock.Since(start).Seconds())
	if err != nil {
		c.syncMetrics.SyncErrors.Inc()
		c.log.Error("NetworkPolicy sync failed; will retry", "err", err)
	}
	return err
}

func (c *Controller) syncOnce(start time.Time) error {
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
	pods = c.withPending(pods)
	out := compile.Compile(compile.Input{NodeName: c.opts.NodeName, HostAddrs: hostAddrs, Pods: pods, Namespaces: nss, Policies: policies}, c.alloc)
	for _, e := range out.Errors {
		c.syncMetrics.ObjectErrors.Inc()
		c.log.Warn("NetworkPolicy skipped", "error", e)
	}
	st, err := c.writer.Apply(out)
	c.compiled.Store(&out)
	// The node may serve pods once policy has been written from a full
	// view, even if some entries failed (a full map): they are reported
	// and retried, and holding every Service hostage would be worse.
	defer c.firstSyncOnce.Do(func() { close(c.firstSync) })
	c.metrics.PolicyEndpointsIsolated.Set(float64(st.Isolated))
	for name, n := range map[string]int{"ipcache": st.IPCache, "policy_cidrs": st.CIDRs, "policy_endpoints": st.Endpoints, "policy": st.Rules} {
		c.metrics.MapEntries.WithLabelValues(name).Set(float64(n))
	}
	c.reportFull(mapsync.FullErrors(err))
	if err != nil {
		return fmt.Errorf("write NetworkPolicy maps: %w", err)
	}
	now := c.opts.Clock.Now()
	c.lastSync.Store(&now)
	level := slog.LevelDebug
	if st.Written+st.Deleted > 0 {
		level = slog.LevelInfo
	}
	c.log.Log(context.Background(), level, "NetworkPolicy synced", "policies", len(policies), "isolatedEndpoints", st.Isolated,
		"rules", st.Rules, "written", st.Written, "deleted", st.Deleted, "took", c.opts.Clock.Since(start))
	return nil
}

// reportFull counts every full policy map, and logs it and posts a
// Warning Event on the Node once until it fits again.
func (c *Controller) reportFull(full []*mapsync.FullError) {
	now := map[string]bool{}
	for _, fe := range full {
		now[fe.Map] = true
		c.metrics.MapFull.WithLabelValues(fe.Label).Inc()
		if c.fullMaps[fe.Map] {
			continue
		}
		c.log.Error("NetworkPolicy map full: some pods' policy is incomplete and drops what it should allow",
			"map", fe.Map, "capacity", fe.Capacity, "setting", fe.Setting, "unwritten", fe.Unwritten)
		if c.opts.Recorder != nil {
			node := &v1.ObjectReference{Kind: "Node", Name: c.opts.NodeName, UID: types.UID(c.opts.NodeName)}
			c.opts.Recorder.Eventf(node, v1.EventTypeWarning, "MapFull",
				"NetworkPolicy of this node's pods is incomplete: %v", fe)
		}
	}
	for m := range c.fullMaps {
		if !now[m] {
			c.log.Info("NetworkPolicy map fits again", "map", m)
		}
	}
	c.fullMaps = now
}

// localAddrs are the addresses of this node's network namespace (the
// agent runs in it): traffic from them is the node's own, always allowed.
// The hairpin sources are not among them: the datapath marks hairpin flows
// in conntrack, and an address anyone could claim is no identity.
func localAddrs() ([]netip.Addr, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// Compiled is the policy last written to the datapath's maps, with what
// its numbers stand for; nil before the first sync. It is never modified:
// each sync stores a new one.
func (c *Controller) Compiled() *compile.Output { return c.compiled.Load() }

// LastSync is when policy was last written successfully; zero before.
func (c *Controller) LastSync() time.Time {
	if t := c.lastSync.Load(); t != nil {
		return *t
	}
	return time.Time{}
}

// Ready reports whether the controller can program a new pod's policy:
// its caches are synced and its first sync has been written.
func (c *Controller) Ready() (bool, string) {
	select {
	case <-c.firstSync:
		return true, ""
	default:
		return false, "NetworkPolicy not yet programmed from a full view of the API"
	}
}

// EnsureEndpoint programs the policy of a pod the CNI plugin is wiring
// before the plugin lets the pod run: the pod (from the informer cache, so
// with its labels) takes part in a sync with the addresses the plugin gave
// it, which the API does not show yet. It returns once that sync has been
// written, or with why not.
func (c *Controller) EnsureEndpoint(ctx context.Context, ep endpointapi.Endpoint) error {
	if ok, why := c.Ready(); !ok {
		return errors.New(why)
	}
	key := types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}
	// The pod exists (the kubelet is starting it) but the watch may lag.
	for {
		if _, err := c.pods.Pods(ep.Namespace).Get(ep.Name); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pod %s not in the agent's informer cache: %w", key, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	c.mu.Lock()
	c.pending[key] = ep
	c.requests++
	mine := c.requests
	c.mu.Unlock()

	// One sync covers every request made before it started: a burst of
	// ADDs waits on the lock and mostly finds its work done.
	done := make(chan error, 1)
	go func() {
		c.mu.Lock()
		covered := c.served >= mine
		c.mu.Unlock()
		if covered {
			done <- nil
			return
		}
		done <- c.sync()
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("NetworkPolicy sync: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("NetworkPolicy sync did not finish in time: %w", ctx.Err())
	}
}

// ForgetEndpoint drops a pod the CNI plugin unwired.
func (c *Controller) ForgetEndpoint(ep endpointapi.Endpoint) {
	c.mu.Lock()
	delete(c.pending, types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name})
	c.mu.Unlock()
	c.runner.Run()
}

// withPending returns pods with the pending pods' addresses filled in,
// and drops pending pods the API now shows with an address, or no longer
// shows at all.
func (c *Controller) withPending(pods []*v1.Pod) []*v1.Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		return pods
	}
	out := make([]*v1.Pod, 0, len(pods))
	seen := map[types.NamespacedName]bool{}
	for _, p := range pods {
		key := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
		seen[key] = true
		ep, ok := c.pending[key]
		switch {
		case !ok:
		case len(p.Status.PodIPs) > 0 || p.Status.PodIP != "":
			delete(c.pending, key) // the API knows: the plugin's word is no longer needed
		default:
			p = p.DeepCopy()
			for _, a := range ep.Addrs {
				p.Status.PodIPs = append(p.Status.PodIPs, v1.PodIP{IP: a.String()})
			}
			p.Status.PodIP = p.Status.PodIPs[0].IP
		}
		out = append(out, p)
	}
	for key := range c.pending {
		if !seen[key] {
			delete(c.pending, key) // deleted before the API ever showed it running
		}
	}
	return out
}
