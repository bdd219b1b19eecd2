// Package netpol keeps the datapath's NetworkPolicy maps in step with the
// API: Pods, Namespaces and NetworkPolicies are compiled (netpol/compile)
// into identities and allow rules, and written (netpol/mapsync) by a
// bounded-frequency runner, so bursts of changes cost one sync.
package netpol

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	"github.com/sluice-net/sluice/bpf"
)

// retryInterval is how soon a failed sync is retried.
const retryInterval = time.Second

// Writer applies compiled policy to the datapath's maps; *mapsync.Writer
// is the real one.
type Writer interface {
	Apply(compile.Output) (mapsync.Stats, error)
}

// Options configure the controller.
type Options struct {
	NodeName         string
	MinSync, MaxSync time.Duration
	Clock            clock.Clock // nil: the real one
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
	syncMetrics metrics.Controller
	alloc       *compile.Allocator
	runner      *runner.Runner
	synced      []cache.InformerSynced // our handlers have seen the initial lists

	firstSync     chan struct{}
	firstSyncOnce sync.Once
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
		c.synced = append(c.synced, reg.HasSynced)
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
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("informer caches for NetworkPolicy did not sync")
	}
	c.runner.Run()
	c.runner.Loop(ctx)
	return nil
}

func (c *Controller) sync() error {
	start := c.opts.Clock.Now()
	err := c.syncOnce(start)
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
	out := compile.Compile(compile.Input{NodeName: c.opts.NodeName, HostAddrs: hostAddrs, Pods: pods, Namespaces: nss, Policies: policies}, c.alloc)
	for _, e := range out.Errors {
		c.syncMetrics.ObjectErrors.Inc()
		c.log.Warn("NetworkPolicy skipped", "error", e)
	}
	st, err := c.writer.Apply(out)
	// The node may serve pods once policy has been written from a full
	// view, even if some entries failed (a full map): they are reported
	// and retried, and holding every Service hostage would be worse.
	defer c.firstSyncOnce.Do(func() { close(c.firstSync) })
	c.metrics.PolicyEndpointsIsolated.Set(float64(st.Isolated))
	for name, n := range map[string]int{"ipcache": st.IPCache, "policy_cidrs": st.CIDRs, "policy_endpoints": st.Endpoints, "policy": st.Rules} {
		c.metrics.MapEntries.WithLabelValues(name).Set(float64(n))
	}
	if err != nil {
		return fmt.Errorf("write NetworkPolicy maps: %w", err)
	}
	level := slog.LevelDebug
	if st.Written+st.Deleted > 0 {
		level = slog.LevelInfo
	}
	c.log.Log(context.Background(), level, "NetworkPolicy synced", "policies", len(policies), "isolatedEndpoints", st.Isolated,
		"rules", st.Rules, "written", st.Written, "deleted", st.Deleted, "took", c.opts.Clock.Since(start))
	return nil
}

// localAddrs are the addresses of this node's network namespace (the
// agent runs in it), plus the datapath's hairpin sources (a pod reaching
// itself through a Service arrives from them): traffic from them is the
// node's own, always allowed.
func localAddrs() ([]netip.Addr, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := []netip.Addr{bpf.HairpinAddr4, bpf.HairpinAddr6}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}
