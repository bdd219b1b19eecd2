// Package socklb decides which pods' sockets socket-level load balancing
// serves. As the CNI plugin wires a pod, the agent enters the pod's network
// namespace in the datapath with the pod's addresses (the client its
// ClientIP affinity is keyed on, as on the tc path); a pod annotated
// sluice.dev/socket-lb: disabled is entered switched off, so its
// applications see Service addresses on the wire. The annotation is
// followed while the pod runs.
package socklb

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/sluice-net/sluice/agent/internal/runner"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/endpointapi"
)

// Annotation is the pod annotation that opts a pod out of socket LB.
const Annotation = "sluice.dev/socket-lb"

// Wanted reads a pod's annotation: whether socket LB serves the pod. An
// unknown value is an error and leaves the pod to the tc path, which is
// correct for every pod, where the socket path is only faster.
func Wanted(pod *v1.Pod) (bool, error) {
	switch v, ok := pod.Annotations[Annotation]; {
	case !ok, v == "enabled":
		return true, nil
	case v == "disabled":
		return false, nil
	default:
		return false, fmt.Errorf("metadata.annotations[%q]: %q: want \"enabled\" or \"disabled\"", Annotation, v)
	}
}

// Writer is the datapath's socket LB namespace map (bpf.Datapath).
type Writer interface {
	ServePodSockets(netns uint64, p bpf.PodSockets) error
	PodSocketEntries() (map[uint64]bpf.PodSockets, error)
}

// Options configures the controller.
type Options struct {
	NodeName         string
	MinSync, MaxSync time.Duration
	// Recorder posts a Warning on a pod whose annotation it cannot read;
	// nil posts none.
	Recorder record.EventRecorder
	Clock    clock.Clock
}

// Controller enters pods as they are wired and keeps their entries in step
// with their annotation.
type Controller struct {
	log    *slog.Logger
	opts   Options
	pods   listerscorev1.PodLister
	writer Writer
	runner *runner.Runner
}

// New registers the controller's handler on factory's pod informer.
func New(log *slog.Logger, factory informers.SharedInformerFactory, w Writer, opts Options) (*Controller, error) {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	c := &Controller{log: log, opts: opts, writer: w, pods: factory.Core().V1().Pods().Lister()}
	c.runner = runner.New(c.sync, opts.MinSync, opts.MaxSync, 5*time.Second, opts.Clock)
	_, err := factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { c.runner.Run() },
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*v1.Pod)
			n, ok2 := cur.(*v1.Pod)
			if !ok1 || !ok2 {
				return
			}
			if o.Annotations[Annotation] != n.Annotations[Annotation] {
				c.wanted(n) // reports a value it cannot read, once
				c.runner.Run()
			} else if !slices.Equal(o.Status.PodIPs, n.Status.PodIPs) {
				c.runner.Run()
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("watch pods for socket LB: %w", err)
	}
	return c, nil
}

// Run keeps the entries in step until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	c.runner.Loop(ctx)
	return nil
}

// EnsureEndpoint enters a pod the CNI plugin is wiring, switched on or
// off by its annotation. A plugin of a release before this one sends no
// namespace cookie: the tc path serves that pod.
func (c *Controller) EnsureEndpoint(_ context.Context, ep endpointapi.Endpoint) error {
	if ep.NetnsCookie == 0 {
		return nil
	}
	on := false
	if pod, err := c.pods.Pods(ep.Namespace).Get(ep.Name); err == nil {
		on = c.wanted(pod)
	}
	if err := c.writer.ServePodSockets(ep.NetnsCookie, bpf.PodSockets{Addrs: ep.Addrs, On: on}); err != nil {
		return err
	}
	c.log.Debug("pod entered for socket LB", "pod", ep.Namespace+"/"+ep.Name, "on", on)
	return nil
}

func (c *Controller) wanted(pod *v1.Pod) bool {
	on, err := Wanted(pod)
	if err != nil {
		c.log.Warn("socket LB annotation not understood; the pod's Service traffic is translated per packet", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		if c.opts.Recorder != nil {
			c.opts.Recorder.Eventf(pod, v1.EventTypeWarning, "InvalidAnnotation", "%v; socket-level load balancing stays off for this pod", err)
		}
	}
	return on
}

// sync switches every entry of a pod on this node on or off as its
// annotation asks. Entries are removed by the CNI plugin (DEL, GC), which
// knows when a namespace is gone; here they are only matched by address.
func (c *Controller) sync() error {
	entries, err := c.writer.PodSocketEntries()
	if err != nil || len(entries) == 0 {
		return err
	}
	pods, err := c.pods.List(labels.Everything())
	if err != nil {
		return err
	}
	want := map[netip.Addr]bool{}
	for _, p := range pods {
		if p.Spec.NodeName != c.opts.NodeName || p.Spec.HostNetwork || p.DeletionTimestamp != nil {
			continue
		}
		on, _ := Wanted(p) // reported as it was set
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				want[a.Unmap()] = on
			}
		}
	}
	for netns, e := range entries {
		for _, a := range e.Addrs {
			on, ok := want[a]
			if !ok || on == e.On {
				continue
			}
			e.On = on
			if err := c.writer.ServePodSockets(netns, e); err != nil {
				return err
			}
			c.log.Info("socket LB switched for a pod by its annotation", "addr", a, "on", on)
			break
		}
	}
	return nil
}
