// Package nodewatch runs a sync over every Node whenever one changes: the
// shape of the controllers whose state derives from the whole list of
// Nodes (routes to their pod CIDRs, the cluster CIDRs of the masquerade).
// Bursts of changes coalesce into one sync; a failed sync is retried.
package nodewatch

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/runner"
)

// Sync brings the node's state in line with nodes. It returns how many
// Nodes it skipped as malformed (reported by itself) and whether the rest
// failed.
type Sync func(nodes []*v1.Node) (skipped int, err error)

// Options configure a watcher.
type Options struct {
	// Name labels the watcher's metrics and logs ("routes").
	Name             string
	MinSync, MaxSync time.Duration
	Clock            clock.Clock // nil: the real one
}

// Watcher runs a Sync over the Nodes.
type Watcher struct {
	log         *slog.Logger
	opts        Options
	nodes       corelisters.NodeLister
	sync        Sync
	syncMetrics metrics.Controller
	runner      *runner.Runner
	synced      cache.InformerSynced // our handler has seen the initial list
}

// New registers the watcher's handler on factory's Node informer; the
// caller starts the factory.
func New(log *slog.Logger, factory informers.SharedInformerFactory, sync Sync, m *metrics.Metrics, opts Options) (*Watcher, error) {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	inf := factory.Core().V1().Nodes()
	w := &Watcher{log: log, opts: opts, nodes: inf.Lister(), sync: sync, syncMetrics: m.Controller(opts.Name)}
	w.runner = runner.New(w.runSync, opts.MinSync, opts.MaxSync, opts.MinSync, opts.Clock)
	reg, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.changed("added", obj) },
		UpdateFunc: func(_, cur any) { w.changed("updated", cur) },
		DeleteFunc: func(obj any) { w.changed("deleted", obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("%s: watch Nodes: %w", opts.Name, err)
	}
	w.synced = reg.HasSynced
	return w, nil
}

// changed requests a sync: every sync reads all Nodes, so there is
// nothing to mark per object.
func (w *Watcher) changed(what string, obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if n, ok := obj.(*v1.Node); ok {
		w.log.Debug("Node "+what, "object", n.Name, "controller", w.opts.Name)
	}
	w.runner.Run()
}

// Run waits until the handler has seen the informer's initial list, then
// syncs until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), w.synced) {
		return fmt.Errorf("%s: informer cache for Nodes did not sync", w.opts.Name)
	}
	w.runner.Run()
	w.runner.Loop(ctx)
	return nil
}

func (w *Watcher) runSync() error {
	start := w.opts.Clock.Now()
	nodes, err := w.nodes.List(labels.Everything())
	skipped := 0
	if err == nil {
		skipped, err = w.sync(nodes)
	}
	w.syncMetrics.SyncDuration.Observe(w.opts.Clock.Since(start).Seconds())
	w.syncMetrics.ObjectErrors.Add(float64(skipped))
	if err != nil {
		w.syncMetrics.SyncErrors.Inc()
		w.log.Error(w.opts.Name+" sync failed; will retry", "err", err)
	}
	return err
}
