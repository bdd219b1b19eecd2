// Package masq masquerades pod traffic that leaves the cluster CIDRs to the
// node's address, with one nftables table that Sluice owns, programmed
// through netlink (no nft binary). Traffic between pods, and to Services
// (translated to pod addresses on the pod's veth before routing), keeps its
// source. The same table masquerades NodePort traffic the datapath sends to
// a backend on another node (marked by from_netdev), so that the reply
// returns through this node; the kernel picks the source port.
package masq

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family inet) Sluice owns.
const TableName = "sluice-masq"

// Apply replaces Sluice's table with one masquerading traffic from each
// cluster CIDR to any address outside it, and packets carrying snatMark.
// It runs in one netlink batch: the table is never half-written. No CIDRs
// and no mark removes the table.
func Apply(clusterCIDRs []netip.Prefix, snatMark uint32) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables netlink socket: %w", err)
	}
	table := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	// Create-then-delete makes the delete valid whether or not the table
	// existed; both land in the same batch as the new rules.
	conn.AddTable(table)
	conn.DelTable(table)
	if len(clusterCIDRs) > 0 || snatMark != 0 {
		conn.AddTable(table)
		chain := conn.AddChain(&nftables.Chain{
			Name: "postrouting", Table: table, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
		})
		for _, c := range clusterCIDRs {
			conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: masqueradeLeaving(c.Masked())})
		}
		if snatMark != 0 {
			// meta mark == snatMark masquerade
			conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(snatMark)},
				&expr.Masq{},
			}})
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("program nftables table %s: %w", TableName, err)
	}
	return nil
}

// masqueradeLeaving is `ip saddr CIDR ip daddr != CIDR masquerade` (ip6
// for an IPv6 CIDR).
func masqueradeLeaving(cidr netip.Prefix) []expr.Any {
	proto, saddr, daddr, alen := byte(unix.NFPROTO_IPV4), uint32(12), uint32(16), uint32(4)
	if cidr.Addr().Is6() {
		proto, saddr, daddr, alen = unix.NFPROTO_IPV6, 8, 24, 16
	}
	mask := make([]byte, alen)
	for i := range cidr.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	network := cidr.Addr().AsSlice()
	match := func(offset uint32, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: alen},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: alen, Mask: mask, Xor: make([]byte, alen)},
			&expr.Cmp{Op: op, Register: 1, Data: network},
		}
	}
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
	exprs = append(exprs, match(saddr, expr.CmpOpEq)...)
	exprs = append(exprs, match(daddr, expr.CmpOpNeq)...)
	return append(exprs, &expr.Masq{})
}
