package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// XDPMode is how xdp_netdev runs on a device.
type XDPMode string

const (
	// XDPNative runs in the driver, before the kernel allocates a socket
	// buffer: the fast mode, where the driver supports it.
	XDPNative XDPMode = "native"
	// XDPGeneric runs in the kernel's receive path after the socket buffer
	// is made: any device, none of the speed.
	XDPGeneric XDPMode = "generic"
)

var xdpHook = hook{name: "xdp"}

// AttachXDP attaches xdp_netdev to a node uplink in the calling thread's
// network namespace, in mode native (falling back to generic where the
// driver has no XDP) or generic, and returns the mode it runs in. It is
// idempotent: a pinned link on the same device gets the current program.
func (d *Datapath) AttachXDP(ifname string, mode XDPMode) (XDPMode, error) {
	if d.XDPNetdev == nil {
		return "", errors.New("attach XDP: the datapath was opened read-only (OpenPinned)")
	}
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return "", fmt.Errorf("find device %q to attach XDP to: %w", ifname, err)
	}
	ifindex := l.Attrs().Index
	pin := linkPin(d.root, ifname, xdpHook)
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := old.Info()
		if ierr == nil && info.XDP() != nil && int(info.XDP().Ifindex) == ifindex {
			err := old.Update(d.XDPNetdev)
			old.Close()
			if err != nil {
				return "", fmt.Errorf("update XDP link on %s: %w", ifname, err)
			}
			return attachedXDPMode(ifindex)
		}
		_ = old.Unpin()
		old.Close()
	}
	flags := link.XDPGenericMode
	if mode == XDPNative {
		flags = link.XDPDriverMode
	}
	xl, err := link.AttachXDP(link.XDPOptions{Program: d.XDPNetdev, Interface: ifindex, Flags: flags})
	if err != nil && mode == XDPNative && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, ebpf.ErrNotSupported)) {
		xl, err = link.AttachXDP(link.XDPOptions{Program: d.XDPNetdev, Interface: ifindex, Flags: link.XDPGenericMode})
	}
	if err != nil {
		return "", fmt.Errorf("attach XDP (%s) on %s: %w", mode, ifname, err)
	}
	defer xl.Close()
	_ = os.Remove(pin)
	if err := xl.Pin(pin); err != nil {
		return "", fmt.Errorf("pin XDP link at %s: %w", pin, err)
	}
	return attachedXDPMode(ifindex)
}

// attachedXDPMode reads back the mode the kernel runs a device's XDP
// program in.
func attachedXDPMode(ifindex int) (XDPMode, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return "", fmt.Errorf("read XDP mode of ifindex %d: %w", ifindex, err)
	}
	x := l.Attrs().Xdp
	switch {
	case x == nil || !x.Attached:
		return "", fmt.Errorf("ifindex %d: no XDP program attached after attaching one", ifindex)
	case x.AttachMode == nl.XDP_ATTACHED_SKB:
		return XDPGeneric, nil
	default:
		return XDPNative, nil
	}
}

// DetachXDP removes xdp_netdev from a device (acceleration turned off);
// a device without it is not an error.
func (d *Datapath) DetachXDP(ifname string) error {
	pin := linkPin(d.root, ifname, xdpHook)
	old, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open XDP link pin %s: %w", pin, err)
	}
	defer old.Close()
	if err := old.Unpin(); err != nil {
		return fmt.Errorf("unpin XDP link %s: %w", pin, err)
	}
	return nil
}

// SetNodeAddrs records this node's addresses for direct server return: the
// first IPv4 and the first IPv6 address given become the outer source of
// what it sends on, and the address it takes sent-on packets at. A family
// without an address is cleared.
func (d *Datapath) SetNodeAddrs(addrs []netip.Addr) error {
	var own [2]NodeKey
	var seen [2]bool
	for _, a := range addrs {
		i := 0
		if !a.Unmap().Is4() {
			i = 1
		}
		if !seen[i] {
			own[i], seen[i] = NodeKey{Addr: Addr(a)}, true
		}
	}
	for i := range own {
		if err := d.NodeAddrs.Put(uint32(i), own[i]); err != nil {
			return fmt.Errorf("write node address %d to sluice_node_addrs_v1: %w", i, err)
		}
	}
	return nil
}

// PutNode records a node address of the cluster: direct server return
// accepts sent-on packets only from these.
func (d *Datapath) PutNode(addr netip.Addr) error {
	if err := d.Nodes.Put(NodeKey{Addr: Addr(addr)}, NodeValue{}); err != nil {
		return fmt.Errorf("node address %s (map sluice_nodes_v1 full?): %w", addr, err)
	}
	return nil
}

// DeleteNode forgets a node address; one not recorded is not an error.
func (d *Datapath) DeleteNode(addr netip.Addr) error {
	if err := d.Nodes.Delete(NodeKey{Addr: Addr(addr)}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete node address %s from sluice_nodes_v1: %w", addr, err)
	}
	return nil
}

// NodeAddrList lists the node addresses PutNode recorded.
func (d *Datapath) NodeAddrList() ([]netip.Addr, error) {
	var out []netip.Addr
	var k NodeKey
	var v NodeValue
	it := d.Nodes.Iterate()
	for it.Next(&k, &v) {
		out = append(out, AddrFrom(k.Addr))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list sluice_nodes_v1: %w", err)
	}
	return out, nil
}
