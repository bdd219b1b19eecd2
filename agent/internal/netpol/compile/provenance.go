package compile

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/bpf"
)

// SourceSet numbers a list of NetworkPolicy rules (Output.SourceSets).
type SourceSet uint32

// sourceSet numbers a new set of one source: a NetworkPolicy rule, applied
// once.
func (c *compiler) sourceSet(s RuleSource) SourceSet {
	c.out.SourceSets = append(c.out.SourceSets, []RuleSource{s})
	return SourceSet(len(c.out.SourceSets) - 1)
}

// union returns the set of cur's sources and the one source of single
// (sourceSet made it), numbering it on first sight. Policies are applied
// in order, so the sources stay in policy order.
func (c *compiler) union(cur, single SourceSet) SourceSet {
	k := [2]SourceSet{cur, single}
	if u, ok := c.unions[k]; ok {
		return u
	}
	src := c.out.SourceSets[single][0]
	u := cur
	if !slices.Contains(c.out.SourceSets[cur], src) {
		c.out.SourceSets = append(c.out.SourceSets, append(slices.Clip(c.out.SourceSets[cur]), src))
		u = SourceSet(len(c.out.SourceSets) - 1)
	}
	c.unions[k] = u
	return u
}

// Sources are the NetworkPolicy rules rule r comes from (none when the
// output has no such rule).
func (o *Output) Sources(r Rule) []RuleSource {
	set, ok := o.Rules[r]
	if !ok {
		return nil
	}
	return o.SourceSets[set]
}

// RuleSource is one rule of a NetworkPolicy: spec.ingress[Index] or
// spec.egress[Index] of Policy.
type RuleSource struct {
	Policy types.NamespacedName
	Dir    Direction
	Index  int
}

// String is "NAMESPACE/NAME[DIRECTION INDEX]", e.g. "demo/allow-web[ingress 0]".
func (s RuleSource) String() string {
	return fmt.Sprintf("%s[%s %d]", s.Policy, s.Dir, s.Index)
}

// Isolation lists the NetworkPolicies isolating an endpoint, per
// direction, sorted by namespace and name.
type Isolation struct {
	Ingress, Egress []types.NamespacedName
}

// In returns the policies isolating the endpoint in dir.
func (i Isolation) In(dir Direction) []types.NamespacedName {
	if dir == Egress {
		return i.Egress
	}
	return i.Ingress
}

// Identity describes what an identity number stands for: the pods of a
// namespace with a label set (Namespace, Labels and the Pods having it
// now), or for a CIDR identity the ipBlocks containing its addresses
// (Blocks, e.g. "10.0.0.0/8 except 10.0.2.0/24").
type Identity struct {
	Namespace string
	Labels    map[string]string
	Pods      []types.NamespacedName
	Blocks    []string
}

// IsCIDR reports whether id is a CIDR identity (of ipBlock prefixes).
func IsCIDR(id uint32) bool { return id >= firstCIDRIdentity }

// EndpointPod is the pod a local endpoint is an address of.
type EndpointPod struct {
	Pod      types.NamespacedName
	Identity uint32 // the pod's identity
	Addr     netip.Addr
}

// String writes the block as "CIDR" or "CIDR except P1, P2".
func (b *ipBlock) String() string {
	if len(b.except) == 0 {
		return b.cidr.String()
	}
	s := make([]string, len(b.except))
	for i, e := range b.except {
		s[i] = e.String()
	}
	return b.cidr.String() + " except " + strings.Join(s, ", ")
}

// Allowing returns the NetworkPolicy rules that allow endpoint ep traffic
// in direction dir with the remote address remote, protocol proto and
// port, sorted: the sources of every rule key the datapath could match
// for any identity the remote has (its pod identity, its CIDR identity,
// bpf.IdentityAny) and for the extra identities given (what the datapath
// reported as matched). None when the endpoint is not isolated that way,
// or nothing allows it.
func (o *Output) Allowing(ep uint32, dir Direction, remote netip.Addr, proto uint8, port uint16, extra ...uint32) []RuleSource {
	ids := append([]uint32{bpf.IdentityAny, o.CIDRIdentity(remote)}, extra...)
	if id, ok := o.IPCache[remote.Unmap()]; ok {
		ids = append(ids, id)
	}
	var out []RuleSource
	add := func(k Rule) {
		for _, s := range o.Sources(k) {
			if !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	for i, id := range ids {
		if slices.Contains(ids[:i], id) {
			continue
		}
		add(Rule{Endpoint: ep, Remote: id, Dir: dir})
		if proto == 0 {
			continue
		}
		for bits := uint8(0); bits <= 16; bits++ {
			mask := uint16(0xffff << (16 - uint(bits)))
			add(Rule{Endpoint: ep, Remote: id, Dir: dir, Proto: proto, Port: port & mask, PortBits: bits})
		}
	}
	slices.SortFunc(out, compareSources)
	return out
}

// CIDRIdentity is the CIDR identity of addr: that of the longest ipBlock
// prefix containing it, else bpf.IdentityWorld.
func (o *Output) CIDRIdentity(addr netip.Addr) uint32 {
	addr = addr.Unmap()
	if len(o.CIDRs) == 0 || !addr.IsValid() {
		return bpf.IdentityWorld
	}
	for bits := addr.BitLen(); bits >= 0; bits-- {
		p, _ := addr.Prefix(bits)
		if id, ok := o.CIDRs[p]; ok {
			return id
		}
	}
	return bpf.IdentityWorld
}

func compareSources(a, b RuleSource) int {
	return cmp.Or(cmp.Compare(a.Policy.Namespace, b.Policy.Namespace), cmp.Compare(a.Policy.Name, b.Policy.Name),
		cmp.Compare(a.Dir, b.Dir), cmp.Compare(a.Index, b.Index))
}
