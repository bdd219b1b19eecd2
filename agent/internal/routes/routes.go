// Package routes routes pod traffic between nodes: a route to every other
// node's pod CIDR, via that node's InternalIP (native routing) or into the
// overlay device (package tunnel), kept in step with the Node objects.
// Routes Sluice owns carry their own routing protocol number, so it never
// touches anyone else's.
package routes

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/utils/clock"

	"github.com/sluice-net/sluice/agent/internal/apiobj"
	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/nodewatch"
)

// Protocol marks Sluice's routes (rtnetlink protocol; shown by `ip route`
// as "proto 92").
const Protocol netlink.RouteProtocol = 92

// Route is one desired route: to Dst, via the node at Via (the next hop
// natively, the tunnel endpoint in the overlay).
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

// Desired computes the routes this node needs: for every other Node, each
// pod CIDR via its InternalIP of the same family. In the overlay (tunnel)
// every pod CIDR goes to the node's IPv4 InternalIP if it has one, else
// its IPv6 one: the underlay is one family, whatever the pods'. Nodes
// without a usable InternalIP, or with malformed fields, are skipped and
// reported.
func Desired(nodes []*v1.Node, self string, tunnel bool) ([]Route, []error) {
	var out []Route
	var errs []error
	for _, n := range nodes {
		if n.Name == self {
			continue
		}
		var via4, via6 netip.Addr
		for _, a := range n.Status.Addresses {
			if a.Type != v1.NodeInternalIP {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				errs = append(errs, fmt.Errorf("node %s: status.addresses: %q is not an IP address", n.Name, a.Address))
				continue
			}
			if ip.Is4() && !via4.IsValid() {
				via4 = ip
			} else if ip.Is6() && !via6.IsValid() {
				via6 = ip
			}
		}
		cidrs, cidrErrs := apiobj.ParsePodCIDRs(n)
		errs = append(errs, cidrErrs...)
		for _, p := range cidrs {
			via := via4
			if p.Addr().Is6() {
				via = via6
			}
			if tunnel {
				via = cmp.Or(via4, via6)
			}
			if !via.IsValid() {
				errs = append(errs, fmt.Errorf("node %s: no InternalIP of the family of pod CIDR %s", n.Name, p))
				continue
			}
			out = append(out, Route{Dst: p.Masked(), Via: via})
		}
	}
	slices.SortFunc(out, func(a, b Route) int { return a.Dst.Addr().Compare(b.Dst.Addr()) })
	return out, errs
}

// Writer makes the kernel's Sluice routes exactly the desired ones and
// says how many it changed; MainTable is the real one.
type Writer interface {
	Sync(desired []Route) (changed int, err error)
}

// MainTable is the main routing table of the current network namespace.
// Dev, when set, is the ifindex every route goes out of with no gateway
// (the overlay device); unset, routes go via their Via.
type MainTable struct {
	Dev int
}

// Sync makes the table hold exactly the desired Sluice routes: missing
// ones added, changed ones replaced, stale ones (ours only) deleted. It
// returns how many it changed.
func (t MainTable) Sync(desired []Route) (int, error) {
	have, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: Protocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	type nextHop struct {
		gw  netip.Addr
		dev int
	}
	current := map[netip.Prefix]nextHop{}
	for _, r := range have {
		if r.Dst == nil {
			continue
		}
		dst, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		gw, _ := netip.AddrFromSlice(r.Gw)
		current[netip.PrefixFrom(dst.Unmap(), ones)] = nextHop{gw.Unmap(), r.LinkIndex}
	}
	changed := 0
	var errs []error
	want := map[netip.Prefix]bool{}
	for _, r := range desired {
		want[r.Dst] = true
		nr := &netlink.Route{
			Dst:      &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())},
			Gw:       r.Via.AsSlice(),
			Protocol: Protocol,
		}
		next := nextHop{gw: r.Via}
		if t.Dev != 0 {
			nr.Gw, nr.LinkIndex, nr.Scope = nil, t.Dev, netlink.SCOPE_LINK
			next = nextHop{dev: t.Dev}
		}
		if cur, ok := current[r.Dst]; ok && cur.gw == next.gw && (next.dev == 0 || cur.dev == next.dev) {
			continue
		}
		if err := netlink.RouteReplace(nr); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", r.Dst, r.Via, err))
			continue
		}
		changed++
	}
	for dst, hop := range current {
		if want[dst] {
			continue
		}
		old := &netlink.Route{
			Dst:       &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
			Gw:        hop.gw.AsSlice(),
			LinkIndex: hop.dev,
			Protocol:  Protocol,
			// Any scope: the overlay's routes are scope link, and IPv4
			// deletes only what matches the scope given.
			Scope: netlink.SCOPE_NOWHERE,
		}
		if err := netlink.RouteDel(old); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete stale route %s via %s: %w", dst, hop.gw, err))
			continue
		}
		changed++
	}
	return changed, errors.Join(errs...)
}

// Options configure the controller.
type Options struct {
	NodeName string
	// Tunnel: the writer sends routes into the overlay (see Desired).
	Tunnel           bool
	MinSync, MaxSync time.Duration
	Clock            clock.Clock // nil: the real one
}

// New returns the controller keeping writer's routes in step with the
// Nodes; it registers on factory, which the caller starts.
func New(log *slog.Logger, factory informers.SharedInformerFactory, writer Writer, m *metrics.Metrics, opts Options) (*nodewatch.Watcher, error) {
	sync := func(nodes []*v1.Node) (int, error) {
		desired, errs := Desired(nodes, opts.NodeName, opts.Tunnel)
		for _, e := range errs {
			log.Warn("node not routed", "err", e)
		}
		n, err := writer.Sync(desired)
		if n > 0 {
			log.Info("routes to other nodes' pod CIDRs updated", "changed", n, "routes", len(desired))
		}
		return len(errs), err
	}
	return nodewatch.New(log, factory, sync, m, nodewatch.Options{Name: "routes", MinSync: opts.MinSync, MaxSync: opts.MaxSync, Clock: opts.Clock})
}
