// Package tunnel runs the overlay of routingMode vxlan: a VXLAN device in
// collect_md mode whose egress program (to_tunnel) sets each packet's outer
// destination from the datapath's tunnel endpoints, and a routes.Writer
// that sends other nodes' pod CIDRs into it. Nodes need only reach each
// other's InternalIP (UDP 8472), not share a segment.
package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"

	"github.com/sluice-net/sluice/agent/internal/routes"
	"github.com/sluice-net/sluice/bpf"
)

const (
	// DeviceName is the overlay device on every node.
	DeviceName = "sluice_vxlan"
	// Port is the Linux VXLAN port (flannel's and Cilium's too).
	Port = 8472
	// Overhead4 and Overhead6 are what VXLAN adds to a pod's packet over an
	// IPv4 or IPv6 underlay: outer IP, UDP (8), VXLAN (8), inner Ethernet (14).
	Overhead4 = 20 + 8 + 8 + 14
	Overhead6 = 40 + 8 + 8 + 14
)

// deviceMAC is the device's address on every node. The device resolves no
// neighbours (NOARP), so a frame leaves with the sender's own address as
// its destination, and the receiving device accepts it only as its own.
var deviceMAC = net.HardwareAddr{0x0e, 0x73, 0x6c, 0x75, 0x69, 0x63}

// Ensure creates the overlay device with mtu, or brings an existing one
// (an agent restart) to it, and attaches to_tunnel. It returns the
// device's ifindex.
func Ensure(dp *bpf.Datapath, mtu int, mode bpf.AttachMode) (int, error) {
	want := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: DeviceName, MTU: mtu, HardwareAddr: deviceMAC},
		FlowBased: true,
		Port:      Port,
	}
	link, err := netlink.LinkByName(DeviceName)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		// Created down: configure turns off its IPv6 link-local address
		// before it comes up, so that nothing but routed pod traffic
		// reaches to_tunnel (no router solicitations, no MLD).
		if err := netlink.LinkAdd(want); err != nil {
			return 0, fmt.Errorf("create the overlay device %s (VXLAN, collect_md, UDP %d): %w", DeviceName, Port, err)
		}
		if link, err = netlink.LinkByName(DeviceName); err != nil {
			return 0, err
		}
	case err != nil:
		return 0, fmt.Errorf("find the overlay device %s: %w", DeviceName, err)
	default:
		if v, ok := link.(*netlink.Vxlan); !ok || !v.FlowBased || v.Port != Port {
			return 0, fmt.Errorf("%s exists but is not Sluice's overlay device (VXLAN, collect_md, UDP %d): remove it, or choose routingMode native", DeviceName, Port)
		}
	}
	if err := configure(link, mtu); err != nil {
		return 0, err
	}
	if err := dp.AttachTunnel(DeviceName, mode); err != nil {
		return 0, err
	}
	return link.Attrs().Index, nil
}

// configure sets what the device needs besides its type: no ARP or
// neighbour discovery, the shared MAC, no IPv6 address of its own, the
// MTU, no reverse-path filter (a node's own packets arrive with the
// node's address, which routes through the underlay), up.
func configure(link netlink.Link, mtu int) error {
	for _, s := range []struct{ path, value string }{
		{"/proc/sys/net/ipv6/conf/" + DeviceName + "/addr_gen_mode", "1"},
		{"/proc/sys/net/ipv4/conf/" + DeviceName + "/rp_filter", "0"},
	} {
		if err := os.WriteFile(s.path, []byte(s.value), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("overlay device: write %s: %w", s.path, err)
		}
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"turn off ARP", func() error { return netlink.LinkSetARPOff(link) }},
		{"set its MAC", func() error { return netlink.LinkSetHardwareAddr(link, deviceMAC) }},
		{fmt.Sprintf("set MTU %d", mtu), func() error { return netlink.LinkSetMTU(link, mtu) }},
		{"bring it up", func() error { return netlink.LinkSetUp(link) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("overlay device %s: %s: %w", DeviceName, s.what, err)
		}
	}
	return nil
}

// Remove deletes the overlay device, if there is one (sluice-agent
// cleanup), and says what it did.
func Remove() (string, error) {
	link, err := netlink.LinkByName(DeviceName)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if v, ok := link.(*netlink.Vxlan); !ok || !v.FlowBased {
		return "", fmt.Errorf("%s is not Sluice's overlay device; left alone", DeviceName)
	}
	if err := netlink.LinkDel(link); err != nil {
		return "", fmt.Errorf("delete %s: %w", DeviceName, err)
	}
	return "removed", nil
}

// Overhead is VXLAN's overhead over the underlay the node uses: IPv4 when
// it has an IPv4 address (routes.Desired's choice), else IPv6.
func Overhead(nodeAddrs []netip.Addr) int {
	for _, a := range nodeAddrs {
		if a.Is4() {
			return Overhead4
		}
	}
	return Overhead6
}

// Table is the routes.Writer of the overlay: every desired route's pod
// CIDR gets its tunnel endpoint (the route's Via) in the datapath, then a
// route into the device. Endpoints are written before routes and removed
// after them, so a packet routed into the device always finds its node.
type Table struct {
	Datapath *bpf.Datapath
	Dev      int // the overlay device's ifindex (Ensure)
}

// Sync implements routes.Writer.
func (t Table) Sync(desired []routes.Route) (int, error) {
	changed, stale, err := PutEndpoints(t.Datapath, desired)
	errs := []error{err}
	n, err := routes.MainTable{Dev: t.Dev}.Sync(desired)
	changed += n
	errs = append(errs, err)
	n, err = RemoveEndpoints(t.Datapath, stale)
	changed += n
	errs = append(errs, err)
	return changed, errors.Join(errs...)
}

// PutEndpoints writes the tunnel endpoint (the route's Via) of every
// desired route's pod CIDR that the map lacks or holds another for, and
// returns the pod CIDRs the map holds beyond the desired ones, for
// RemoveEndpoints once nothing routes to them. The overlay (Table) and
// direct server return over native routing (package dsr) keep the map
// this way.
func PutEndpoints(dp *bpf.Datapath, desired []routes.Route) (changed int, stale []netip.Prefix, err error) {
	have, err := dp.TunnelEndpoints()
	if err != nil {
		return 0, nil, err
	}
	var errs []error
	for _, r := range desired {
		if have[r.Dst] != r.Via {
			if err := dp.PutTunnelEndpoint(r.Dst, r.Via); err != nil {
				errs = append(errs, err)
			} else {
				changed++
			}
		}
		delete(have, r.Dst)
	}
	for dst := range have {
		stale = append(stale, dst)
	}
	return changed, stale, errors.Join(errs...)
}

// RemoveEndpoints deletes the endpoints of the stale pod CIDRs.
func RemoveEndpoints(dp *bpf.Datapath, stale []netip.Prefix) (int, error) {
	changed := 0
	var errs []error
	for _, dst := range stale {
		if err := dp.DeleteTunnelEndpoint(dst); err != nil {
			errs = append(errs, err)
			continue
		}
		changed++
	}
	return changed, errors.Join(errs...)
}
