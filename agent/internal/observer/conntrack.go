package observer

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluice-net/sluice/agent/internal/flows"
	"github.com/sluice-net/sluice/agent/internal/observe"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/observeapi"
)

// Conntrack directions and flags the bpf package does not name (enum
// ct_dir, ct_flags).
const (
	ctDirPolicyEgress  = 2
	ctDirPolicyIngress = 3
	ctFlagReplied      = 1 << 3
)

// Conntrack lists the live conntrack entries matching f, named.
func (s *Source) Conntrack(f observe.ConntrackFilter) ([]observeapi.ConntrackEntry, error) {
	now := bpf.MonotonicNow()
	out := []observeapi.ConntrackEntry{}
	for _, m := range []*ebpf.Map{s.dp.ConntrackTCP, s.dp.ConntrackOther} {
		var k bpf.CTKey
		var v bpf.CTValue
		it := m.Iterate()
		for it.Next(&k, &v) {
			if v.ExpiresNs <= now {
				continue // dead: the datapath ignores it until GC deletes it
			}
			if f.Proto != "" && flows.ProtoName(k.Proto) != strings.ToLower(f.Proto) {
				continue
			}
			e := s.ctEntry(k, v, now)
			if f.Service != "" && e.Service != f.Service && !strings.HasPrefix(e.Service, f.Service+":") {
				continue
			}
			if f.Pod != "" && e.Src.Pod != f.Pod && e.Dst.Pod != f.Pod && (e.Backend == nil || e.Backend.Pod != f.Pod) {
				continue
			}
			out = append(out, e)
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("read conntrack map %s: %w", mapName(m), err)
		}
	}
	slices.SortFunc(out, compareEntries)
	return out, nil
}

// compareEntries orders entries by protocol and then by the flow's client
// (a reply entry's destination), so that the entries of one flow stand
// together: its service entry, its reply, its policy entries.
func compareEntries(a, b observeapi.ConntrackEntry) int {
	client := func(e observeapi.ConntrackEntry) observeapi.Addr {
		if e.Kind == "reply" {
			return e.Dst
		}
		return e.Src
	}
	ca, cb := client(a), client(b)
	return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(ca.Pod, cb.Pod), cmp.Compare(ca.IP, cb.IP),
		cmp.Compare(ca.Port, cb.Port), cmp.Compare(a.Kind, b.Kind))
}

func mapName(m *ebpf.Map) string {
	if info, err := m.Info(); err == nil {
		return info.Name
	}
	return m.String()
}

func (s *Source) ctEntry(k bpf.CTKey, v bpf.CTValue, now uint64) observeapi.ConntrackEntry {
	e := observeapi.ConntrackEntry{
		Proto:     flows.ProtoName(k.Proto),
		Src:       s.addr(netip.AddrPortFrom(bpf.AddrFrom(k.Src), bpf.PortFrom(k.Sport))),
		Dst:       s.addr(netip.AddrPortFrom(bpf.AddrFrom(k.Dst), bpf.PortFrom(k.Dport))),
		ExpiresIn: time.Duration(v.ExpiresNs - now),
	}
	nat := netip.AddrPortFrom(bpf.AddrFrom(v.NatAddr), bpf.PortFrom(v.NatPort))
	switch k.Dir {
	case bpf.CTDirService:
		e.Kind = "service"
		b := s.addr(nat)
		e.Backend = &b
	case bpf.CTDirReply:
		e.Kind = "reply"
	case bpf.CTDirMasq:
		// The XDP masquerade's: the backend's replies to this node's
		// port go back to the client named here.
		e.Kind = "masq"
		c := s.addr(nat)
		e.Client = &c
	case ctDirPolicyEgress:
		e.Kind = "policy-egress"
	case ctDirPolicyIngress:
		e.Kind = "policy-ingress"
	default:
		e.Kind = fmt.Sprintf("dir-%d", k.Dir)
	}
	if v.SvcId != 0 {
		e.Service = s.services.ServiceName(v.SvcId)
	}
	for _, fl := range []struct {
		bit  uint8
		name string
	}{{bpf.CTFlagEstablished, "established"}, {ctFlagReplied, "replied"}, {bpf.CTFlagClosing, "closing"}, {bpf.CTFlagHairpin, "hairpin"},
		{bpf.CTFlagDSR, "dsr"}, {bpf.CTFlagMasq, "masq"}} {
		if v.Flags&fl.bit != 0 {
			e.Flags = append(e.Flags, fl.name)
		}
	}
	return e
}

func (s *Source) addr(ap netip.AddrPort) observeapi.Addr {
	a := observeapi.Addr{IP: ap.Addr().String(), Port: ap.Port()}
	if a.Pod = s.names.Pod(ap.Addr()); a.Pod == "" {
		a.Node = s.names.Node(ap.Addr())
	}
	return a
}
