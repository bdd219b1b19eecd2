package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// LBFrontend names a frontend whose clients loadBalancerSourceRanges
// restrict: one set of ranges serves both scopes of its address.
type LBFrontend struct {
	Addr  netip.AddrPort
	Proto uint8
}

func (f LBFrontend) String() string { return fmt.Sprintf("%s/%d", f.Addr, f.Proto) }

// lbRangeFrontendBits is the prefix length of the frontend part of an
// LBRangeKey (address, port, protocol and pad: LB_RANGE_FRONTEND_BITS).
const lbRangeFrontendBits = (16 + 4) * 8

// LBRange is the key allowing clients in prefix to use frontend f.
func LBRange(f LBFrontend, prefix netip.Prefix) LBRangeKey {
	c := CIDR(prefix)
	return LBRangeKey{
		Prefixlen: lbRangeFrontendBits + c.Prefixlen,
		Addr:      Addr(f.Addr.Addr()), Port: Port(f.Addr.Port()), Proto: f.Proto,
		Client: c.Addr,
	}
}

// LBRangeFrom converts a key back to its frontend and client prefix.
func LBRangeFrom(k LBRangeKey) (LBFrontend, netip.Prefix) {
	f := LBFrontend{Addr: netip.AddrPortFrom(AddrFrom(k.Addr), PortFrom(k.Port)), Proto: k.Proto}
	return f, PrefixFrom(CIDRKey{Prefixlen: k.Prefixlen - lbRangeFrontendBits, Addr: k.Client})
}

var errNoLBRanges = errors.New("map sluice_lb_ranges_v1 not pinned: the datapath predates loadBalancerSourceRanges")

// PutLBRange lets clients in prefix use frontend f (flagged
// ServiceSourceRanges).
func (d *Datapath) PutLBRange(f LBFrontend, prefix netip.Prefix) error {
	if d.LBRanges == nil {
		return errNoLBRanges
	}
	if err := d.LBRanges.Put(LBRange(f, prefix), uint8(1)); err != nil {
		return fmt.Errorf("allow %s to use %s (map sluice_lb_ranges_v1 full?): %w", prefix, f, err)
	}
	return nil
}

// DeleteLBRange undoes PutLBRange; a range not there is no error.
func (d *Datapath) DeleteLBRange(f LBFrontend, prefix netip.Prefix) error {
	if d.LBRanges == nil {
		return errNoLBRanges
	}
	if err := d.LBRanges.Delete(LBRange(f, prefix)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete range %s of %s from sluice_lb_ranges_v1: %w", prefix, f, err)
	}
	return nil
}

// LBRangeEntries lists the ranges the map holds, by frontend.
func (d *Datapath) LBRangeEntries() (map[LBFrontend][]netip.Prefix, error) {
	out := map[LBFrontend][]netip.Prefix{}
	if d.LBRanges == nil {
		return out, nil
	}
	var k LBRangeKey
	var v uint8
	it := d.LBRanges.Iterate()
	for it.Next(&k, &v) {
		f, p := LBRangeFrom(k)
		out[f] = append(out[f], p)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list sluice_lb_ranges_v1: %w", err)
	}
	return out, nil
}
