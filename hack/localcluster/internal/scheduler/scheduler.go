// Package scheduler is the local cluster's minimal scheduler: it binds each
// unbound pod to the node with the fewest pods among those its nodeSelector
// and required node name allow. Nothing else (resources, affinity, taints)
// is considered: the local cluster's nodes are identical.
package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Choose picks the node for pod: the allowed node with the fewest pods,
// ties broken by name. It returns "" when no node fits.
func Choose(pod *v1.Pod, nodes []*v1.Node, podsPerNode map[string]int) string {
	sorted := append([]*v1.Node(nil), nodes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	best := ""
	for _, n := range sorted {
		if !labels.SelectorFromSet(pod.Spec.NodeSelector).Matches(labels.Set(n.Labels)) {
			continue
		}
		if best == "" || podsPerNode[n.Name] < podsPerNode[best] {
			best = n.Name
		}
	}
	return best
}

// Run binds pods until ctx ends.
func Run(ctx context.Context, client kubernetes.Interface, log *slog.Logger) error {
	factory := informers.NewSharedInformerFactory(client, 0)
	pods := factory.Core().V1().Pods()
	nodes := factory.Core().V1().Nodes()
	wake := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{AddFunc: poke, UpdateFunc: func(_, n any) { poke(n) }}
	if _, err := pods.Informer().AddEventHandler(handler); err != nil {
		return err
	}
	if _, err := nodes.Informer().AddEventHandler(handler); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	// Bindings made but not yet seen by the informer, so a burst of pods
	// spreads instead of piling onto the node that looked emptiest.
	assumed := map[types.UID]string{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-time.After(5 * time.Second): // retry pods that fit nowhere yet
		}
		allPods, _ := pods.Lister().List(labels.Everything())
		allNodes, _ := nodes.Lister().List(labels.Everything())
		count := map[string]int{}
		pending := map[types.UID]bool{}
		for _, p := range allPods {
			if p.Spec.NodeName != "" {
				count[p.Spec.NodeName]++
			} else if node, ok := assumed[p.UID]; ok {
				count[node]++
				pending[p.UID] = true
			}
		}
		for uid := range assumed {
			if !pending[uid] {
				delete(assumed, uid) // the informer has caught up (or the pod is gone)
			}
		}
		for _, p := range allPods {
			if p.Spec.NodeName != "" || p.DeletionTimestamp != nil || pending[p.UID] {
				continue
			}
			node := Choose(p, allNodes, count)
			if node == "" {
				log.Warn("no node fits the pod's nodeSelector", "pod", p.Namespace+"/"+p.Name)
				continue
			}
			if err := bind(ctx, client, p, node); err != nil {
				log.Warn("bind failed", "pod", p.Namespace+"/"+p.Name, "node", node, "error", err)
				continue
			}
			count[node]++
			assumed[p.UID] = node
			log.Info("bound", "pod", p.Namespace+"/"+p.Name, "node", node)
		}
	}
}

func bind(ctx context.Context, client kubernetes.Interface, p *v1.Pod, node string) error {
	b := &v1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, UID: p.UID},
		Target:     v1.ObjectReference{Kind: "Node", Name: node},
	}
	if err := client.CoreV1().Pods(p.Namespace).Bind(ctx, b, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("bind %s/%s to %s: %w", p.Namespace, p.Name, node, err)
	}
	return nil
}
