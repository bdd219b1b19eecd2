// Package masq masquerades pod traffic that leaves the cluster CIDRs to the
// node's address, with one nftables table that Sluice owns, programmed
// through netlink (no nft binary). Traffic between pods, and to Services
// (translated to pod addresses on the pod's veth before routing), keeps its
// source. The same table masquerades NodePort traffic the datapath sends to
// a backend on another node (marked by from_netdev), so that the reply
// returns through this node.
//
// TCP, UDP and SCTP source ports are mapped to a range outside the
// NodePort range (PortsOutside): a reply to a flow that left from a port
// inside it would otherwise look like NodePort traffic when it comes back.
package masq

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family inet) Sluice owns.
const TableName = "sluice-masq"

// PortRange is an inclusive range of L4 ports.
type PortRange struct{ Min, Max uint16 }

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Min, r.Max) }

// Size is the number of ports in r.
func (r PortRange) Size() int { return int(r.Max) - int(r.Min) + 1 }

// ParsePortRange reads "30000-32767" (or a single port).
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		hi = lo
	}
	a, errA := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, errB := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if errA != nil || errB != nil || a == 0 || a > b {
		return PortRange{}, fmt.Errorf("%q is not a port range such as 30000-32767 (1 <= low <= high <= 65535)", s)
	}
	return PortRange{uint16(a), uint16(b)}, nil
}

// Masquerade port ranges: Linux's ephemeral range when it lies outside
// the NodePort range, else the larger side of it, above the privileged
// ports; never fewer than MinMasqPorts ports.
var ephemeral = PortRange{32768, 65535}

const (
	firstUnprivileged = 1024
	MinMasqPorts      = 1024
)

// PortsOutside is the source port range masqueraded flows get: one that
// does not meet nodePorts.
func PortsOutside(nodePorts PortRange) (PortRange, error) {
	if nodePorts.Max < ephemeral.Min || nodePorts.Min > ephemeral.Max {
		return ephemeral, nil
	}
	var best PortRange
	if nodePorts.Max < 65535 {
		best = PortRange{nodePorts.Max + 1, 65535}
	}
	if nodePorts.Min > firstUnprivileged {
		if below := (PortRange{firstUnprivileged, nodePorts.Min - 1}); best == (PortRange{}) || below.Size() > best.Size() {
			best = below
		}
	}
	if best == (PortRange{}) || best.Size() < MinMasqPorts {
		return PortRange{}, fmt.Errorf("NodePort range %v leaves fewer than %d ports above %d for masquerade", nodePorts, MinMasqPorts, firstUnprivileged-1)
	}
	return best, nil
}

// EphemeralPorts reads the range the node's sockets take their local
// ports from (net.ipv4.ip_local_port_range of the calling namespace).
func EphemeralPorts() (PortRange, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return PortRange{}, fmt.Errorf("read the ephemeral port range: %w", err)
	}
	lo, hi, _ := strings.Cut(strings.Join(strings.Fields(string(b)), "-"), "-")
	r, err := ParsePortRange(lo + "-" + hi)
	if err != nil {
		return PortRange{}, fmt.Errorf("net.ipv4.ip_local_port_range: %w", err)
	}
	return r, nil
}

// MinXDPPorts is the fewest ports the XDP masquerade takes a range for:
// its ports are per backend, and a flow that finds none free is left to
// netfilter, so a small range only makes the fast path rarer.
const MinXDPPorts = 1024

// SplitForXDP divides the masquerade range ports between netfilter and
// the XDP masquerade (loadBalancerMode snat with acceleration), which
// cannot see netfilter's conntrack or the node's sockets: XDP takes the
// ports above the node's ephemeral range local (net.ipv4.ip_local_port_range),
// which no socket binds unasked, and netfilter keeps the rest. It fails,
// saying why, when either part would be smaller than its minimum; the
// caller then leaves those flows to netfilter.
func SplitForXDP(ports, local PortRange) (netfilter, xdp PortRange, err error) {
	if local.Max >= ports.Max {
		return ports, PortRange{}, fmt.Errorf("the ephemeral port range %v reaches the top of the masquerade range %v: no port is left that no socket takes", local, ports)
	}
	xdp = PortRange{max(ports.Min, local.Max+1), ports.Max}
	if xdp.Size() < MinXDPPorts {
		return ports, PortRange{}, fmt.Errorf("only %v lies above the ephemeral port range %v in the masquerade range %v, fewer than %d ports", xdp, local, ports, MinXDPPorts)
	}
	if xdp.Min == ports.Min {
		return ports, PortRange{}, fmt.Errorf("the ephemeral port range %v lies below the masquerade range %v: the split keeps netfilter the ports the ephemeral range shares with it, and there are none", local, ports)
	}
	netfilter = PortRange{ports.Min, xdp.Min - 1}
	if netfilter.Size() < MinMasqPorts {
		return ports, PortRange{}, fmt.Errorf("the masquerade range %v would leave netfilter fewer than %d ports below %v", ports, MinMasqPorts, xdp)
	}
	return netfilter, xdp, nil
}

// Apply replaces Sluice's table with one masquerading packets carrying
// snatMark, and traffic from the cluster CIDRs to any address outside all
// of them, mapping TCP, UDP and SCTP source ports into ports (the zero
// PortRange keeps them where the kernel can):
//
//	meta mark snatMark masquerade
//	ip daddr CIDR return          (one per cluster CIDR)
//	ip saddr CIDR masquerade      (one per cluster CIDR)
//
// It runs in one netlink batch: the table is never half-written. No
// CIDRs and no mark removes the table.
func Apply(clusterCIDRs []netip.Prefix, snatMark uint32, ports PortRange) error {
	if ports != (PortRange{}) && (ports.Min == 0 || ports.Min > ports.Max) {
		return fmt.Errorf("masquerade port range %v is empty", ports)
	}
	var batch []netlink.Message
	conn, err := nftables.New(nftables.WithTestDial(capture(&batch)))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
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
		// The mark first: its packets go to a pod on another node, whose
		// address the returns below would spare.
		if snatMark != 0 {
			// meta mark == snatMark
			if err := addMasquerade(conn, table, chain, []expr.Any{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(snatMark)},
			}, ports); err != nil {
				return err
			}
		}
		for _, c := range clusterCIDRs {
			exprs := append(addressIn(c.Masked(), false), &expr.Verdict{Kind: expr.VerdictReturn})
			conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: exprs})
		}
		for _, c := range clusterCIDRs {
			if err := addMasquerade(conn, table, chain, addressIn(c.Masked(), true), ports); err != nil {
				return err
			}
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables table %s: %w", TableName, err)
	}
	if err := setPortsSpecified(batch); err != nil {
		return fmt.Errorf("nftables table %s: %w", TableName, err)
	}
	if err := send(batch); err != nil {
		return fmt.Errorf("program nftables table %s: %w", TableName, err)
	}
	return nil
}

// google/nftables (v0.3.0) builds a masquerade with a port range without
// NF_NAT_RANGE_PROTO_SPECIFIED, the flag without which the kernel ignores
// the range (nft sets it: `masq proto_min reg 1 proto_max reg 2 flags
// 0x2`). So the library only builds the batch: capture takes it instead
// of a kernel (answering every message with an ack), setPortsSpecified
// adds the flag, and send hands the batch to the kernel.

// capture is a netlink stand-in that keeps the batch sent to it.
func capture(batch *[]netlink.Message) func([]netlink.Message) ([]netlink.Message, error) {
	ack := netlink.Message{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4)}
	return func(req []netlink.Message) ([]netlink.Message, error) {
		if req != nil {
			*batch = req
		}
		return []netlink.Message{ack}, nil
	}
}

// setPortsSpecified adds the NF_NAT_RANGE_PROTO_SPECIFIED flag to every
// masquerade expression that maps ports, in the new rules of batch.
func setPortsSpecified(batch []netlink.Message) error {
	newRule := netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE)
	for i, m := range batch {
		if m.Header.Type != newRule || len(m.Data) < 4 {
			continue
		}
		attrs, err := rewriteNested(m.Data[4:], unix.NFTA_RULE_EXPRESSIONS, func(exprs []byte) ([]byte, error) {
			return rewriteEach(exprs, func(e []byte) ([]byte, error) {
				name, data := exprParts(e)
				if name != "masq" || data == nil || !hasAttr(data, unix.NFTA_MASQ_REG_PROTO_MIN) {
					return e, nil
				}
				return rewriteNested(e, unix.NFTA_EXPR_DATA, func(d []byte) ([]byte, error) {
					flags, err := netlink.MarshalAttributes([]netlink.Attribute{
						{Type: unix.NFTA_MASQ_FLAGS, Data: binaryutil.BigEndian.PutUint32(unix.NF_NAT_RANGE_PROTO_SPECIFIED)},
					})
					return append(append([]byte{}, d...), flags...), err
				})
			})
		})
		if err != nil {
			return fmt.Errorf("rule message: %w", err)
		}
		batch[i].Data = append(append([]byte{}, m.Data[:4]...), attrs...)
	}
	return nil
}

// rewriteNested replaces the payload of the nested attribute typ in attrs
// by what fn makes of it.
func rewriteNested(attrs []byte, typ uint16, fn func([]byte) ([]byte, error)) ([]byte, error) {
	list, err := netlink.UnmarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	for i, a := range list {
		if a.Type&^unix.NLA_F_NESTED == typ {
			if list[i].Data, err = fn(a.Data); err != nil {
				return nil, err
			}
			list[i].Length = 0 // MarshalAttributes computes it again
		}
	}
	return netlink.MarshalAttributes(list)
}

// rewriteEach replaces every attribute of a list by what fn makes of it.
func rewriteEach(list []byte, fn func([]byte) ([]byte, error)) ([]byte, error) {
	elems, err := netlink.UnmarshalAttributes(list)
	if err != nil {
		return nil, err
	}
	for i, e := range elems {
		if elems[i].Data, err = fn(e.Data); err != nil {
			return nil, err
		}
		elems[i].Length = 0
	}
	return netlink.MarshalAttributes(elems)
}

// exprParts returns an expression's name and its data attributes.
func exprParts(e []byte) (name string, data []byte) {
	attrs, err := netlink.UnmarshalAttributes(e)
	if err != nil {
		return "", nil
	}
	for _, a := range attrs {
		switch a.Type &^ unix.NLA_F_NESTED {
		case unix.NFTA_EXPR_NAME:
			name = strings.TrimRight(string(a.Data), "\x00")
		case unix.NFTA_EXPR_DATA:
			data = a.Data
		}
	}
	return name, data
}

func hasAttr(attrs []byte, typ uint16) bool {
	list, err := netlink.UnmarshalAttributes(attrs)
	if err != nil {
		return false
	}
	for _, a := range list {
		if a.Type&^unix.NLA_F_NESTED == typ {
			return true
		}
	}
	return false
}

// send sends batch to the kernel's nftables in the calling thread's
// network namespace and collects the answer to every message that asked
// for one.
func send(batch []netlink.Message) error {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return fmt.Errorf("open nftables netlink socket: %w", err)
	}
	defer conn.Close()
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	for i := range batch {
		// Lengths, sequence numbers and port ID of this connection.
		batch[i].Header.Length, batch[i].Header.Sequence, batch[i].Header.PID = 0, 0, 0
	}
	if _, err := conn.SendMessages(batch); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	want := 0
	for _, m := range batch {
		if m.Header.Flags&netlink.Acknowledge != 0 {
			want++
		}
	}
	var errs []error
	for got := 0; got < want; {
		msgs, err := conn.Receive()
		if err != nil {
			errs = append(errs, err)
			// The kernel answers a permission or buffer error once.
			if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			got++
			continue
		}
		got += len(msgs)
	}
	return errors.Join(errs...)
}

// addMasquerade adds the rules masquerading what cond matches:
//
//	cond meta l4proto { tcp, udp, sctp } masquerade to :ports
//	cond masquerade
//
// The first maps ports (a port mapping needs the protocol matched); the
// second takes the rest (ICMP keeps its identifier where it can).
func addMasquerade(conn *nftables.Conn, table *nftables.Table, chain *nftables.Chain, cond []expr.Any, ports PortRange) error {
	if ports != (PortRange{}) {
		protos := &nftables.Set{Table: table, Anonymous: true, Constant: true, KeyType: nftables.TypeInetProto}
		if err := conn.AddSet(protos, []nftables.SetElement{
			{Key: []byte{unix.IPPROTO_TCP}}, {Key: []byte{unix.IPPROTO_UDP}}, {Key: []byte{unix.IPPROTO_SCTP}},
		}); err != nil {
			return fmt.Errorf("nftables set of port-mapped protocols: %w", err)
		}
		exprs := append(append([]expr.Any{}, cond...),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Lookup{SourceRegister: 1, SetName: protos.Name, SetID: protos.ID},
			&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(ports.Min)},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(ports.Max)},
			&expr.Masq{ToPorts: true, RegProtoMin: 1, RegProtoMax: 2},
		)
		conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: exprs})
	}
	conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: append(append([]expr.Any{}, cond...), &expr.Masq{})})
	return nil
}

// addressIn matches `ip daddr CIDR`, or `ip saddr CIDR` (ip6 for an IPv6
// CIDR).
func addressIn(cidr netip.Prefix, source bool) []expr.Any {
	proto, offset, alen := byte(unix.NFPROTO_IPV4), uint32(16), uint32(4)
	if cidr.Addr().Is6() {
		proto, offset, alen = unix.NFPROTO_IPV6, 24, 16
	}
	if source {
		offset -= alen
	}
	mask := make([]byte, alen)
	for i := range cidr.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	network := cidr.Addr().AsSlice()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: alen},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: alen, Mask: mask, Xor: make([]byte, alen)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: network},
	}
}
