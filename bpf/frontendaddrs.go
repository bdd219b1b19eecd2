package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

var errNoFrontendAddrs = errors.New("map sluice_frontend_addrs_v1 not pinned: the datapath predates frontend addresses")

// PutFrontendAddr marks addr as serving Services only: traffic from
// outside to its ports that no Service serves is dropped.
func (d *Datapath) PutFrontendAddr(addr netip.Addr) error {
	if d.FrontendAddrs == nil {
		return errNoFrontendAddrs
	}
	if err := d.FrontendAddrs.Put(Addr(addr), uint8(1)); err != nil {
		return fmt.Errorf("add frontend address %s (map sluice_frontend_addrs_v1 full?): %w", addr, err)
	}
	return nil
}

// DeleteFrontendAddr undoes PutFrontendAddr; an address not there is no
// error.
func (d *Datapath) DeleteFrontendAddr(addr netip.Addr) error {
	if d.FrontendAddrs == nil {
		return errNoFrontendAddrs
	}
	if err := d.FrontendAddrs.Delete(Addr(addr)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete frontend address %s from sluice_frontend_addrs_v1: %w", addr, err)
	}
	return nil
}

// FrontendAddrList lists the addresses marked by PutFrontendAddr.
func (d *Datapath) FrontendAddrList() ([]netip.Addr, error) {
	var out []netip.Addr
	if d.FrontendAddrs == nil {
		return out, nil
	}
	var k [16]byte
	var v uint8
	it := d.FrontendAddrs.Iterate()
	for it.Next(&k, &v) {
		out = append(out, AddrFrom(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list sluice_frontend_addrs_v1: %w", err)
	}
	return out, nil
}
