package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// maxTunnelEndpoints bounds sluice_tunnel_v1: a pod CIDR of each family
// for 8,192 nodes. The trie allocates per entry, so the bound costs
// nothing until used.
const maxTunnelEndpoints = 16384

var errNoTunnel = errors.New("map sluice_tunnel_v1 not pinned: the datapath predates the overlay")

// PutTunnelEndpoint sends overlay packets to addresses in podCIDR to the
// node at endpoint.
func (d *Datapath) PutTunnelEndpoint(podCIDR netip.Prefix, endpoint netip.Addr) error {
	if d.Tunnel == nil {
		return errNoTunnel
	}
	if err := d.Tunnel.Put(CIDR(podCIDR), TunnelEndpoint{Addr: Addr(endpoint)}); err != nil {
		return fmt.Errorf("tunnel endpoint %s for %s (map sluice_tunnel_v1 full?): %w", endpoint, podCIDR, err)
	}
	return nil
}

// DeleteTunnelEndpoint undoes PutTunnelEndpoint; a CIDR not there is no
// error.
func (d *Datapath) DeleteTunnelEndpoint(podCIDR netip.Prefix) error {
	if d.Tunnel == nil {
		return errNoTunnel
	}
	if err := d.Tunnel.Delete(CIDR(podCIDR)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete tunnel endpoint of %s from sluice_tunnel_v1: %w", podCIDR, err)
	}
	return nil
}

// TunnelEndpoints lists the pod CIDRs the overlay reaches and their nodes.
func (d *Datapath) TunnelEndpoints() (map[netip.Prefix]netip.Addr, error) {
	out := map[netip.Prefix]netip.Addr{}
	if d.Tunnel == nil {
		return out, nil
	}
	var k CIDRKey
	var v TunnelEndpoint
	it := d.Tunnel.Iterate()
	for it.Next(&k, &v) {
		out[PrefixFrom(k)] = AddrFrom(v.Addr)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list sluice_tunnel_v1: %w", err)
	}
	return out, nil
}

// AttachTunnel attaches to_tunnel to the egress of the overlay's
// collect_md VXLAN device: it sets each packet's outer destination.
// Idempotent, pinned like AttachPod.
func (d *Datapath) AttachTunnel(ifname string, mode AttachMode) error {
	if d.ToTunnel == nil {
		return errors.New("attach tunnel: the datapath was opened read-only (OpenPinned)")
	}
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("find tunnel device %q to attach to: %w", ifname, err)
	}
	return d.attach(ifname, l.Attrs().Index, egressHook, d.ToTunnel, mode)
}
