package flows

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/sluice-net/sluice/agent/internal/netpol/compile"
)

// ipIndex indexes Pods and Nodes by address.
const ipIndex = "sluice-ip"

// Cluster is the Lookup of the running agent: pods and nodes by address
// from the shared informers (indexed by address), policy from the
// NetworkPolicy controller's last compile, Services from the service
// controller.
type Cluster struct {
	pods, nodes cache.Indexer
	policy      func() *compile.Output
	service     func(svcID uint32) string
}

var _ Lookup = (*Cluster)(nil)

// NewCluster indexes factory's Pod and Node informers by address (call it
// before the factory starts); policy returns the NetworkPolicy
// controller's last output (nil before its first sync) and service names
// a service frontend by ID.
func NewCluster(factory informers.SharedInformerFactory, policy func() *compile.Output, service func(svcID uint32) string) (*Cluster, error) {
	pods := factory.Core().V1().Pods().Informer()
	if err := pods.AddIndexers(cache.Indexers{ipIndex: podAddrs}); err != nil {
		return nil, fmt.Errorf("index Pods by address: %w", err)
	}
	nodes := factory.Core().V1().Nodes().Informer()
	if err := nodes.AddIndexers(cache.Indexers{ipIndex: nodeAddrs}); err != nil {
		return nil, fmt.Errorf("index Nodes by address: %w", err)
	}
	return &Cluster{pods: pods.GetIndexer(), nodes: nodes.GetIndexer(), policy: policy, service: service}, nil
}

// podAddrs are the addresses of a pod with its own network namespace (a
// host-network pod's address is its node's).
func podAddrs(obj any) ([]string, error) {
	p, ok := obj.(*v1.Pod)
	if !ok || p.Spec.HostNetwork {
		return nil, nil
	}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []v1.PodIP{{IP: p.Status.PodIP}}
	}
	var out []string
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a.Unmap().String())
		}
	}
	return out, nil
}

func nodeAddrs(obj any) ([]string, error) {
	n, ok := obj.(*v1.Node)
	if !ok {
		return nil, nil
	}
	var out []string
	for _, a := range n.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			out = append(out, ip.Unmap().String())
		}
	}
	return out, nil
}

// Pod names the pod with addr: of several claiming it (a finished or
// terminating pod still reporting the address its successor got), a
// running one not being deleted, else the first by name.
func (c *Cluster) Pod(addr netip.Addr) string {
	objs, err := c.pods.ByIndex(ipIndex, addr.Unmap().String())
	if err != nil || len(objs) == 0 {
		return ""
	}
	rank := func(p *v1.Pod) int {
		switch {
		case p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed:
			return 2
		case p.DeletionTimestamp != nil:
			return 1
		}
		return 0
	}
	best := slices.MinFunc(objs, func(a, b any) int {
		pa, pb := a.(*v1.Pod), b.(*v1.Pod)
		return cmp.Or(cmp.Compare(rank(pa), rank(pb)), cmp.Compare(pa.Namespace, pb.Namespace), cmp.Compare(pa.Name, pb.Name))
	}).(*v1.Pod)
	return best.Namespace + "/" + best.Name
}

// Node names the node with addr.
func (c *Cluster) Node(addr netip.Addr) string {
	objs, err := c.nodes.ByIndex(ipIndex, addr.Unmap().String())
	if err != nil || len(objs) == 0 {
		return ""
	}
	return objs[0].(*v1.Node).Name
}

// Service names frontend svcID.
func (c *Cluster) Service(svcID uint32) string {
	if c.service == nil {
		return ""
	}
	return c.service(svcID)
}

// Isolating names the policies isolating ep in dir.
func (c *Cluster) Isolating(ep uint32, dir uint8) []string {
	out := c.policy()
	if out == nil {
		return nil
	}
	var names []string
	for _, p := range out.Isolation[ep].In(compile.Direction(dir)) {
		names = append(names, p.String())
	}
	return names
}

// Allowing names the policy rules allowing the traffic.
func (c *Cluster) Allowing(ep uint32, dir uint8, remote netip.Addr, proto uint8, port uint16, matched uint32) []string {
	out := c.policy()
	if out == nil {
		return nil
	}
	var names []string
	for _, s := range out.Allowing(ep, compile.Direction(dir), remote, proto, port, matched) {
		names = append(names, s.String())
	}
	return names
}
