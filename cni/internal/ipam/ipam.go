// Package ipam allocates pod addresses from the node's pod CIDRs with the
// reference host-local allocator and its on-disk store: allocations survive
// restarts, concurrent ADDs serialise on a file lock, and the network,
// gateway (first) and IPv4 broadcast addresses are never handed out.
package ipam

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"
)

// ErrExhausted means a pod CIDR has no free address left.
var ErrExhausted = errors.New("address pool exhausted")

// Pool allocates addresses for one network.
type Pool struct {
	store *disk.Store
	dir   string
}

// Open opens (creating) the store of a network under dir.
func Open(dir, network string) (*Pool, error) {
	s, err := disk.New(network, dir)
	if err != nil {
		return nil, fmt.Errorf("open IPAM store %s/%s: %w", dir, network, err)
	}
	return &Pool{store: s, dir: dir + "/" + network}, nil
}

// Close releases the store.
func (p *Pool) Close() error { return p.store.Close() }

// Allocate gives the attachment one address from each CIDR. On failure,
// addresses already taken for it are released.
func (p *Pool) Allocate(containerID, ifName string, cidrs []netip.Prefix) (addrs []netip.Addr, err error) {
	defer func() {
		if err != nil {
			_, _ = p.Release(containerID, ifName)
		}
	}()
	for i, cidr := range cidrs {
		r := allocator.Range{Subnet: types.IPNet(*prefixToIPNet(cidr))}
		if err := r.Canonicalize(); err != nil {
			return nil, fmt.Errorf("pod CIDR %s: %w", cidr, err)
		}
		a := allocator.NewIPAllocator(&allocator.RangeSet{r}, p.store, i)
		ipc, err := a.Get(containerID, ifName, nil)
		if err != nil {
			if strings.Contains(err.Error(), "no IP addresses available") {
				return nil, fmt.Errorf("%w: every address of pod CIDR %s is in use", ErrExhausted, cidr)
			}
			return nil, fmt.Errorf("allocate from %s: %w", cidr, err)
		}
		a4, _ := netip.AddrFromSlice(ipc.Address.IP)
		addrs = append(addrs, a4.Unmap())
	}
	return addrs, nil
}

// Addresses returns what the attachment holds.
func (p *Pool) Addresses(containerID, ifName string) []netip.Addr {
	p.store.Lock()
	defer p.store.Unlock()
	var out []netip.Addr
	for _, ip := range p.store.GetByID(containerID, ifName) {
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// Release frees the attachment's addresses and returns them. Releasing an
// unknown attachment is not an error.
func (p *Pool) Release(containerID, ifName string) ([]netip.Addr, error) {
	addrs := p.Addresses(containerID, ifName)
	p.store.Lock()
	defer p.store.Unlock()
	if err := p.store.ReleaseByID(containerID, ifName); err != nil {
		return nil, fmt.Errorf("release addresses of %s/%s: %w", containerID, ifName, err)
	}
	return addrs, nil
}

// GC releases every allocation not held by a valid attachment.
func (p *Pool) GC(valid []types.GCAttachment) error {
	if err := p.store.GC(valid); err != nil {
		return fmt.Errorf("garbage-collect IPAM store: %w", err)
	}
	return nil
}

// Allocated lists every allocated address (the store keeps one file per
// address, named by it).
func (p *Pool) Allocated() (map[netip.Addr]bool, error) {
	p.store.Lock()
	defer p.store.Unlock()
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return nil, fmt.Errorf("list IPAM store %s: %w", p.dir, err)
	}
	out := map[netip.Addr]bool{}
	for _, e := range entries {
		if a, err := netip.ParseAddr(e.Name()); err == nil {
			out[a.Unmap()] = true
		}
	}
	return out, nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
