// Package dsr keeps what xdp_netdev needs from the Node list to send flows
// on to other nodes, under direct server return (loadBalancerMode dsr) or
// the XDP masquerade (snat with acceleration): in the datapath, the node
// serving each other pod CIDR (where a DSR flow for a backend there is
// sent on), every node address (the only senders whose sent-on flows are
// accepted) and this node's own (the outer source, the masquerade's
// address); in the kernel, resolved neighbours for the other nodes,
// because XDP forwards only to a neighbour the kernel has resolved and
// nothing else on a node need ever talk to another.
package dsr

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"

	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/nodewatch"
	"github.com/sluice-net/sluice/agent/internal/routes"
	"github.com/sluice-net/sluice/agent/internal/tunnel"
	"github.com/sluice-net/sluice/bpf"
)

// State is what the datapath and the kernel should hold.
type State struct {
	// Endpoints: each other node's pod CIDRs, to the node's IPv4
	// InternalIP where it has one (the underlay the flow is sent over),
	// else its IPv6 one.
	Endpoints []routes.Route
	// Nodes: every InternalIP of every Node, this one's included.
	Nodes []netip.Addr
	// Self: this node's InternalIPs.
	Self []netip.Addr
}

// Desired computes State from the Nodes; malformed fields are skipped
// and reported.
func Desired(nodes []*v1.Node, self string) (State, []error) {
	var s State
	eps, errs := routes.Desired(nodes, self, true)
	s.Endpoints = eps
	for _, n := range nodes {
		for _, a := range n.Status.Addresses {
			if a.Type != v1.NodeInternalIP {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				continue // routes.Desired reported it
			}
			s.Nodes = append(s.Nodes, ip.Unmap())
			if n.Name == self {
				s.Self = append(s.Self, ip.Unmap())
			}
		}
	}
	slices.SortFunc(s.Nodes, netip.Addr.Compare)
	s.Nodes = slices.Compact(s.Nodes)
	return s, errs
}

// Writer puts a State into the datapath and the kernel.
type Writer interface {
	Sync(State) (changed int, err error)
}

// Kernel is the real Writer. With Endpoints unset the pod CIDR endpoints
// are left to the overlay's writer (tunnel.Table), which keeps the same
// map with the same contents.
type Kernel struct {
	Datapath  *bpf.Datapath
	Endpoints bool
	neighbors map[neighbourKey]netlink.Neigh // the managed entries kept, made or adopted
}

// Sync makes the datapath's node maps and the managed neighbours match s.
func (k *Kernel) Sync(s State) (int, error) {
	var errs []error
	changed, err := k.syncNodes(s)
	errs = append(errs, err)
	if k.Endpoints {
		n, stale, err := tunnel.PutEndpoints(k.Datapath, s.Endpoints)
		errs = append(errs, err)
		m, err := tunnel.RemoveEndpoints(k.Datapath, stale)
		changed += n + m
		errs = append(errs, err)
	}
	n, err := k.syncNeighbors(s.others())
	changed += n
	errs = append(errs, err)
	return changed, errors.Join(errs...)
}

func (k *Kernel) syncNodes(s State) (int, error) {
	if err := k.Datapath.SetNodeAddrs(s.Self); err != nil {
		return 0, err
	}
	have, err := k.Datapath.NodeAddrList()
	if err != nil {
		return 0, err
	}
	stale := make(map[netip.Addr]bool, len(have))
	for _, a := range have {
		stale[a] = true
	}
	changed := 0
	var errs []error
	for _, a := range s.Nodes {
		if !stale[a] {
			errs = append(errs, k.Datapath.PutNode(a))
			changed++
		}
		delete(stale, a)
	}
	for a := range stale {
		errs = append(errs, k.Datapath.DeleteNode(a))
		changed++
	}
	return changed, errors.Join(errs...)
}

// A neighbourKey names a neighbour entry: the next hop on a link. Nodes
// behind one router share theirs.
type neighbourKey struct {
	link int
	addr netip.Addr
}

func keyOf(n netlink.Neigh) neighbourKey {
	a, _ := netip.AddrFromSlice(n.IP)
	return neighbourKey{n.LinkIndex, a.Unmap()}
}

// others are the other nodes' addresses, of both families: XDP sends to
// either (a DSR flow's outer packets go to one, a masqueraded flow's to
// a pod behind the node's address of the pod's family).
func (s State) others() []netip.Addr {
	var out []netip.Addr
	for _, a := range s.Nodes {
		if !slices.Contains(s.Self, a) {
			out = append(out, a)
		}
	}
	return out
}

// syncNeighbors keeps a managed neighbour entry (the kernel resolves and
// refreshes it on its own) for the next hop towards every other node
// address, and removes those no node needs any more.
func (k *Kernel) syncNeighbors(nodes []netip.Addr) (int, error) {
	if k.neighbors == nil {
		adopted, err := managedNeighbors()
		if err != nil {
			return 0, err
		}
		k.neighbors = adopted
	}
	want := map[neighbourKey]netlink.Neigh{}
	var errs []error
	for _, addr := range nodes {
		n, err := nextHop(addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		want[keyOf(n)] = n
	}
	changed := 0
	for key, n := range want {
		if _, ok := k.neighbors[key]; ok {
			continue
		}
		if err := netlink.NeighSet(&n); err != nil {
			errs = append(errs, fmt.Errorf("managed neighbour %s: %w", n.IP, err))
			continue
		}
		k.neighbors[key] = n
		changed++
	}
	for key, n := range k.neighbors {
		if _, ok := want[key]; ok {
			continue
		}
		if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove managed neighbour %s: %w", n.IP, err))
			continue
		}
		delete(k.neighbors, key)
		changed++
	}
	return changed, errors.Join(errs...)
}

// managedNeighbors lists the node's managed neighbour entries: an agent
// that starts adopts those an earlier one made, so that the entries of
// nodes that left while no agent ran are removed (the kernel would
// refresh them for ever). Nothing else on a Kubernetes node makes managed
// entries; a datapath that did would not run beside Sluice.
func managedNeighbors() (map[neighbourKey]netlink.Neigh, error) {
	out := map[neighbourKey]netlink.Neigh{}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		list, err := netlink.NeighList(0, family)
		if err != nil {
			return nil, fmt.Errorf("list neighbours: %w", err)
		}
		for _, n := range list {
			if n.FlagsExt&netlink.NTF_EXT_MANAGED != 0 {
				out[keyOf(n)] = netlink.Neigh{LinkIndex: n.LinkIndex, Family: n.Family, IP: n.IP,
					State: netlink.NUD_NONE, FlagsExt: netlink.NTF_EXT_MANAGED}
			}
		}
	}
	return out, nil
}

// RemoveNeighbours deletes every managed neighbour entry (`sluice-agent
// cleanup`): Sluice is gone, and nothing else needs them.
func RemoveNeighbours() (string, error) {
	have, err := managedNeighbors()
	if err != nil {
		return "", err
	}
	removed := 0
	var errs []error
	for _, n := range have {
		if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove managed neighbour %s: %w", n.IP, err))
			continue
		}
		removed++
	}
	if removed == 0 {
		return "", errors.Join(errs...)
	}
	return fmt.Sprintf("removed %d", removed), errors.Join(errs...)
}

// nextHop is the managed neighbour entry for the next hop towards addr:
// its gateway, or addr itself on a link.
func nextHop(addr netip.Addr) (netlink.Neigh, error) {
	rs, err := netlink.RouteGet(net.IP(addr.AsSlice()))
	if err != nil || len(rs) == 0 {
		return netlink.Neigh{}, fmt.Errorf("route to node %s: %w", addr, err)
	}
	hop := net.IP(addr.AsSlice())
	if rs[0].Gw != nil {
		hop = rs[0].Gw
	}
	family := netlink.FAMILY_V4
	if hop.To4() == nil {
		family = netlink.FAMILY_V6
	}
	return netlink.Neigh{LinkIndex: rs[0].LinkIndex, Family: family, IP: hop, State: netlink.NUD_NONE,
		FlagsExt: netlink.NTF_EXT_MANAGED}, nil
}

// New returns the controller keeping writer in step with the Nodes; it
// registers on factory, which the caller starts.
func New(log *slog.Logger, factory informers.SharedInformerFactory, writer Writer, self string, m *metrics.Metrics,
	opts nodewatch.Options) (*nodewatch.Watcher, error) {
	sync := func(nodes []*v1.Node) (int, error) {
		s, errs := Desired(nodes, self)
		for _, e := range errs {
			log.Warn("node XDP cannot send flows on to", "err", e)
		}
		if len(s.Self) == 0 {
			log.Warn("this node has no InternalIP yet: it sends no flow on and accepts none", "node", self)
		}
		n, err := writer.Sync(s)
		if n > 0 {
			log.Info("nodes XDP sends flows on to updated", "changed", n, "nodes", len(s.Nodes), "podCIDRs", len(s.Endpoints))
		}
		return len(errs), err
	}
	opts.Name = "dsr"
	return nodewatch.New(log, factory, sync, m, opts)
}
