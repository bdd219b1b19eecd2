// Package netsetup wires a pod into the node: the veth pair, the pod's
// addresses and routes, and the host route back to it. Every operation in
// the pod's namespace runs inside ns.Do.
//
// Pods reach the node through a link-local gateway (169.254.1.1 and
// fe80::1) whose MAC, the host-side veth's, is a permanent neighbour entry
// in the pod: no proxy ARP/NDP and no gateway address on the host.
package netsetup

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/bpf"
)

// HostVethPrefix starts the name of every host-side veth Sluice creates.
const HostVethPrefix = "sl"

// Gateways the pod routes through.
var (
	GatewayV4 = netip.MustParseAddr("169.254.1.1")
	GatewayV6 = netip.MustParseAddr("fe80::1")
)

// HostVethName derives the host-side name from the attachment, so DEL,
// CHECK and GC find it without state: "sl" + 12 hex digits.
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return HostVethPrefix + hex.EncodeToString(sum[:])[:12]
}

// IsHostVethName says whether a link name has the form HostVethName makes.
func IsHostVethName(name string) bool {
	if len(name) != len(HostVethPrefix)+12 || !strings.HasPrefix(name, HostVethPrefix) {
		return false
	}
	_, err := hex.DecodeString(name[len(HostVethPrefix):])
	return err == nil
}

// Pod describes the wiring of one attachment.
type Pod struct {
	NetNS    string       // path of the pod's network namespace
	IfName   string       // pod-side interface name
	HostVeth string       // host-side interface name
	MTU      int          // of both ends
	Addrs    []netip.Addr // the pod's addresses
}

// Wired is what Setup created.
type Wired struct {
	HostIndex int
	HostMAC   net.HardwareAddr
	PodIndex  int
	PodMAC    net.HardwareAddr
	// NetnsCookie is the kernel's name for the pod's namespace, by which
	// socket-level load balancing knows its sockets.
	NetnsCookie uint64
}

func hostPrefix(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// Setup creates the veth pair, configures the pod side and adds the host
// route. Called in the node's namespace. On error the caller runs Teardown.
func Setup(p Pod) (*Wired, error) {
	podNS, err := ns.GetNS(p.NetNS)
	if err != nil {
		return nil, fmt.Errorf("open pod netns %q: %w", p.NetNS, err)
	}
	defer podNS.Close()
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return nil, fmt.Errorf("open node netns: %w", err)
	}
	defer hostNS.Close()

	w := &Wired{}
	err = podNS.Do(func(ns.NetNS) error {
		hostVeth, podVeth, err := ip.SetupVethWithName(p.IfName, p.HostVeth, p.MTU, "", hostNS)
		if err != nil {
			return fmt.Errorf("create veth pair %s/%s: %w", p.IfName, p.HostVeth, err)
		}
		w.HostIndex, w.HostMAC = hostVeth.Index, hostVeth.HardwareAddr
		w.PodIndex, w.PodMAC = podVeth.Index, podVeth.HardwareAddr
		if w.NetnsCookie, err = bpf.NetnsCookie(); err != nil {
			return fmt.Errorf("pod netns cookie: %w", err)
		}
		return configurePod(p, w)
	})
	if err != nil {
		return nil, err
	}
	for _, a := range p.Addrs {
		r := &netlink.Route{LinkIndex: w.HostIndex, Dst: hostPrefix(a), Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteReplace(r); err != nil {
			return nil, fmt.Errorf("add host route to %s via %s: %w", a, p.HostVeth, err)
		}
	}
	return w, nil
}

// configurePod runs inside the pod's namespace.
func configurePod(p Pod, w *Wired) error {
	link, err := netlink.LinkByIndex(w.PodIndex)
	if err != nil {
		return fmt.Errorf("find pod interface %s: %w", p.IfName, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set pod interface %s up: %w", p.IfName, err)
	}
	for _, a := range p.Addrs {
		// The pod owns a /32 (/128): everything else goes via the gateway.
		addr := &netlink.Addr{IPNet: hostPrefix(a)}
		if a.Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add address %s to %s: %w", a, p.IfName, err)
		}
		gw := GatewayV4
		if a.Is6() {
			gw = GatewayV6
		}
		neigh := &netlink.Neigh{LinkIndex: w.PodIndex, State: netlink.NUD_PERMANENT, IP: gw.AsSlice(), HardwareAddr: w.HostMAC}
		if a.Is4() {
			neigh.Family = unix.AF_INET
			// The gateway is on-link, reachable through the veth.
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: w.PodIndex, Dst: hostPrefix(gw), Scope: netlink.SCOPE_LINK}); err != nil {
				return fmt.Errorf("add route to gateway %s: %w", gw, err)
			}
		} else {
			neigh.Family = unix.AF_INET6
		}
		if err := netlink.NeighSet(neigh); err != nil {
			return fmt.Errorf("add neighbour %s -> %s: %w", gw, w.HostMAC, err)
		}
		def := &netlink.Route{LinkIndex: w.PodIndex, Gw: gw.AsSlice(), Dst: defaultRoute(a)}
		if err := netlink.RouteAdd(def); err != nil {
			return fmt.Errorf("add default route via %s: %w", gw, err)
		}
	}
	return nil
}

func defaultRoute(a netip.Addr) *net.IPNet {
	if a.Is4() {
		return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	}
	return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
}

// Teardown deletes the host-side veth (which takes the pod side and the
// host routes with it). A missing veth is not an error.
func Teardown(hostVeth string) error {
	link, err := netlink.LinkByName(hostVeth)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find host veth %s: %w", hostVeth, err)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete host veth %s: %w", hostVeth, err)
	}
	return nil
}

// HostVeths lists the host-side veths Sluice created in this namespace.
func HostVeths() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range links {
		if l.Type() == "veth" && IsHostVethName(l.Attrs().Name) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

// Check verifies the wiring against what ADD reported and returns every
// problem found, each naming what is missing.
func Check(p Pod) error {
	var problems []error
	host, err := netlink.LinkByName(p.HostVeth)
	if err != nil {
		return fmt.Errorf("host veth %s is missing", p.HostVeth)
	}
	if host.Attrs().OperState != netlink.OperUp && host.Attrs().Flags&net.FlagUp == 0 {
		problems = append(problems, fmt.Errorf("host veth %s is down", p.HostVeth))
	}
	routes, _ := netlink.RouteList(host, netlink.FAMILY_ALL)
	for _, a := range p.Addrs {
		if !hasRouteTo(routes, hostPrefix(a)) {
			problems = append(problems, fmt.Errorf("host route to %s via %s is missing", a, p.HostVeth))
		}
	}
	podNS, err := ns.GetNS(p.NetNS)
	if err != nil {
		return errors.Join(append(problems, fmt.Errorf("pod netns %q: %w", p.NetNS, err))...)
	}
	defer podNS.Close()
	err = podNS.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(p.IfName)
		if err != nil {
			problems = append(problems, fmt.Errorf("pod interface %s is missing", p.IfName))
			return nil
		}
		addrs, _ := netlink.AddrList(link, netlink.FAMILY_ALL)
		routes, _ := netlink.RouteList(link, netlink.FAMILY_ALL)
		for _, a := range p.Addrs {
			found := false
			for _, have := range addrs {
				if have.IP.Equal(a.AsSlice()) {
					found = true
				}
			}
			if !found {
				problems = append(problems, fmt.Errorf("address %s is missing on pod interface %s", a, p.IfName))
			}
			if !hasRouteTo(routes, defaultRoute(a)) {
				problems = append(problems, fmt.Errorf("default route for %s is missing in the pod", a))
			}
		}
		return nil
	})
	if err != nil {
		problems = append(problems, err)
	}
	return errors.Join(problems...)
}

func hasRouteTo(routes []netlink.Route, dst *net.IPNet) bool {
	for _, r := range routes {
		if r.Dst == nil {
			if ones, _ := dst.Mask.Size(); ones == 0 {
				return true
			}
			continue
		}
		if r.Dst.IP.Equal(dst.IP) && r.Dst.Mask.String() == dst.Mask.String() {
			return true
		}
	}
	return false
}
