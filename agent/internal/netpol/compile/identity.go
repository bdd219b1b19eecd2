package compile

import (
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/sluice-net/sluice/agent/internal/apiobj"
	"github.com/sluice-net/sluice/bpf"
)

// Allocator keeps pod identities, CIDR identities and endpoint IDs stable
// from one Compile to the next, and across agent restarts (Restore). The
// datapath's maps are updated in place, entry by entry: if numbers moved
// between compiles, an address could briefly meet rules meant for another.
type Allocator struct {
	pods      numbering[string]
	cidrs     numbering[string]
	endpoints numbering[netip.Addr]
	hints     Hints
}

// NewAllocator returns an Allocator that has handed out no number.
func NewAllocator() *Allocator {
	return &Allocator{
		pods:      newNumbering[string](firstPodIdentity),
		cidrs:     newNumbering[string](firstCIDRIdentity),
		endpoints: newNumbering[netip.Addr](1),
	}
}

// Hints are the numbers the datapath's maps held when the agent started
// (a restart keeps the pinned maps): the identity of each address in the
// ipcache, of each ipBlock prefix, and each local endpoint's ID.
type Hints struct {
	PodIdentities  map[netip.Addr]uint32
	CIDRIdentities map[netip.Prefix]uint32
	Endpoints      map[netip.Addr]uint32
}

// Restore makes the next Compile give every label set, ipBlock set and
// endpoint the number its addresses had in hints, so that an agent
// restart renumbers nothing and its first sync rewrites nothing. Numbers
// no key claims in that compile are freed after it. Call it before the
// first Compile.
func (a *Allocator) Restore(h Hints) {
	a.hints = h
	a.pods.expect(slices.Collect(maps.Values(h.PodIdentities)), firstCIDRIdentity)
	a.cidrs.expect(slices.Collect(maps.Values(h.CIDRIdentities)), math.MaxUint32)
	a.endpoints.expect(slices.Collect(maps.Values(h.Endpoints)), math.MaxUint32)
}

// release frees the numbers of keys the last compile did not use, and the
// hints none claimed.
func (a *Allocator) release() {
	a.pods.release()
	a.cidrs.release()
	a.endpoints.release()
	a.hints = Hints{}
}

// numbering hands out numbers upwards from a first one, one per key. A
// number stays with its key until a release finds it unused since the
// previous release; only then may another key get it. Numbers never run
// into the next range (pod identities stay below firstCIDRIdentity):
// numbers in use or free never exceed the most keys alive across two
// compiles, and a cluster has orders of magnitude fewer pod label sets,
// ipBlock prefixes or local addresses than the 16 million pod identities.
type numbering[K comparable] struct {
	ids  map[K]assigned
	free []uint32 // released numbers, reused oldest first
	next uint32   // the lowest number never handed out
	gen  uint64   // counts releases
	// expected are restored numbers (Restore) no key has claimed yet:
	// get hands them to no one else; release frees what is left.
	expected map[uint32]bool
}

type assigned struct {
	id  uint32
	gen uint64 // the gen in which id was last used
}

func newNumbering[K comparable](first uint32) numbering[K] {
	return numbering[K]{ids: map[K]assigned{}, next: first}
}

// maxRestoreGap bounds how far above the numbers handed out a restored
// number may lie: the gap below it becomes free numbers.
const maxRestoreGap = 1 << 20

// expect sets numbers aside for the keys that will claim them (claim).
// Numbers outside [next, limit) or absurdly high are ignored: they cannot
// be ours.
func (n *numbering[K]) expect(ids []uint32, limit uint32) {
	n.expected = map[uint32]bool{}
	first := n.next
	top := n.next
	for _, id := range ids {
		if id < first || id >= limit || id-first > maxRestoreGap {
			continue
		}
		n.expected[id] = true
		top = max(top, id+1)
	}
	for id := n.next; id < top; id++ {
		if !n.expected[id] {
			n.free = append(n.free, id)
		}
	}
	n.next = top
}

// claim gives k the restored number id, unless k has a number already or
// id was not restored or another key claimed it first.
func (n *numbering[K]) claim(k K, id uint32) {
	if _, ok := n.ids[k]; ok || !n.expected[id] {
		return
	}
	delete(n.expected, id)
	n.ids[k] = assigned{id: id, gen: n.gen}
}

func (n *numbering[K]) get(k K) uint32 {
	a, ok := n.ids[k]
	if !ok {
		if len(n.free) > 0 {
			a.id, n.free = n.free[0], n.free[1:]
		} else {
			a.id = n.next
			n.next++
		}
	}
	if !ok || a.gen != n.gen {
		a.gen = n.gen
		n.ids[k] = a
	}
	return a.id
}

func (n *numbering[K]) release() {
	var freed []uint32
	for k, a := range n.ids {
		if a.gen != n.gen {
			delete(n.ids, k)
			freed = append(freed, a.id)
		}
	}
	for id := range n.expected {
		freed = append(freed, id)
	}
	n.expected = nil
	// Reusing the oldest first gives a number the longest time unused:
	// whatever still referred to it has been rewritten long before.
	slices.Sort(freed)
	n.free = append(n.free, freed...)
	n.gen++
}

// podIdentity is the identity of the pods sharing a namespace, its labels,
// their labels and their named ports.
//
// Named ports are part of it so that an egress rule to a named port, which
// resolves on the destination pod, is exact: two pods with the same labels
// but "http" on different numbers get different identities, and each is
// allowed only on its own number.
type podIdentity struct {
	id     uint32
	ns     *namespace
	labels labels.Set
	ports  []namedPort // sorted
}

type namedPort struct {
	name  string
	proto uint8
	port  uint16
}

// resolve returns the numbers of the named port (usually one; none when
// the pods have no such port).
func (id *podIdentity) resolve(name string, proto uint8) []uint16 {
	var out []uint16
	for _, p := range id.ports {
		if p.name == name && p.proto == proto {
			out = append(out, p.port)
		}
	}
	return out
}

// podIdentity returns the identity of pod p, numbering it on first sight.
func (c *compiler) podIdentity(p *v1.Pod) *podIdentity {
	ns := c.namespace(p.Namespace)
	ports := namedPorts(p)
	key := podKey(ns, p.Labels, ports)
	if id := c.idents[key]; id != nil {
		return id
	}
	for _, addr := range c.podAddrs(p) {
		if h, ok := c.a.hints.PodIdentities[addr]; ok {
			c.a.pods.claim(key, h)
			break
		}
	}
	id := &podIdentity{id: c.a.pods.get(key), ns: ns, labels: p.Labels, ports: ports}
	c.out.Identities[id.id] = Identity{Namespace: ns.name, Labels: p.Labels}
	c.idents[key] = id
	c.all = append(c.all, id)
	ns.idents = append(ns.idents, id)
	return id
}

// namedPorts returns the named ports of the pod's containers, including
// sidecars (restartable init containers), which serve like containers.
func namedPorts(p *v1.Pod) []namedPort {
	var out []namedPort
	add := func(c *v1.Container) {
		for _, cp := range c.Ports {
			proto, ok := apiobj.Protocol(cp.Protocol)
			if cp.Name == "" || !ok || cp.ContainerPort < 1 || cp.ContainerPort > math.MaxUint16 {
				continue
			}
			out = append(out, namedPort{name: cp.Name, proto: proto, port: uint16(cp.ContainerPort)})
		}
	}
	for i := range p.Spec.Containers {
		add(&p.Spec.Containers[i])
	}
	for i := range p.Spec.InitContainers {
		c := &p.Spec.InitContainers[i]
		if c.RestartPolicy != nil && *c.RestartPolicy == v1.ContainerRestartPolicyAlways {
			add(c)
		}
	}
	slices.SortFunc(out, func(a, b namedPort) int {
		if a.name != b.name {
			return strings.Compare(a.name, b.name)
		}
		if a.proto != b.proto {
			return int(a.proto) - int(b.proto)
		}
		return int(a.port) - int(b.port)
	})
	return slices.Compact(out)
}

// podKey encodes what a pod identity stands for. Label keys and values
// cannot contain '=', NUL or \x01 (API validation), so the encoding is
// unambiguous.
func podKey(ns *namespace, podLabels map[string]string, ports []namedPort) string {
	if ns.key == "" {
		b := append([]byte(ns.name), 0)
		ns.key = string(appendLabels(b, ns.labels))
	}
	b := make([]byte, 0, 128)
	b = append(b, ns.key...)
	b = append(b, 1)
	b = appendLabels(b, podLabels)
	for _, p := range ports {
		b = append(b, 1)
		b = append(b, p.name...)
		b = append(b, 0, p.proto, byte(p.port>>8), byte(p.port))
	}
	return string(b)
}

func appendLabels(b []byte, l map[string]string) []byte {
	for _, k := range slices.Sorted(maps.Keys(l)) {
		b = append(b, k...)
		b = append(b, '=')
		b = append(b, l[k]...)
		b = append(b, 0)
	}
	return b
}

// ipBlock is the content of a NetworkPolicyPeer's ipBlock.
type ipBlock struct {
	cidr   netip.Prefix
	except []netip.Prefix // sorted, distinct
	key    string         // cidr and except as text: equal keys, equal blocks
	ids    []uint32       // the CIDR identities of the addresses in the block
}

// cidrIdentities inserts every ipBlock prefix P (cidr or except) into the
// CIDRs output, with the identity of the set of blocks that contain P
// without one of their excepts containing it. Prefixes nest or are
// disjoint, so the longest inserted prefix containing an address lies
// inside every inserted prefix containing it: the address is in a block
// exactly when that prefix is, and its CIDR identity names exactly the
// blocks it is in. Each block then lists the identities whose sets include
// it, which is what an ipBlock peer allows. A prefix in no block gets
// bpf.IdentityWorld; it is inserted anyway to shadow shorter prefixes around
// it (an except hole in a block).
func (c *compiler) cidrIdentities() {
	cidrOf := map[netip.Prefix][]*ipBlock{}
	exceptOf := map[netip.Prefix][]*ipBlock{}
	for _, b := range c.blocks {
		cidrOf[b.cidr] = append(cidrOf[b.cidr], b)
		for _, e := range b.except {
			exceptOf[e] = append(exceptOf[e], b)
		}
	}
	// In order, so that new identities are numbered the same every time.
	prefixes := slices.Collect(maps.Keys(cidrOf))
	for p := range exceptOf {
		if _, ok := cidrOf[p]; !ok {
			prefixes = append(prefixes, p)
		}
	}
	slices.SortFunc(prefixes, netip.Prefix.Compare)

	var in, out []*ipBlock
	var key strings.Builder
	for _, p := range prefixes {
		in, out = in[:0], out[:0]
		for bits := p.Bits(); bits >= 0; bits-- {
			anc := netip.PrefixFrom(p.Addr(), bits).Masked()
			in = append(in, cidrOf[anc]...)
			out = append(out, exceptOf[anc]...)
		}
		in = slices.DeleteFunc(in, func(b *ipBlock) bool { return slices.Contains(out, b) })
		if len(in) == 0 {
			c.out.CIDRs[p] = bpf.IdentityWorld
			continue
		}
		slices.SortFunc(in, func(a, b *ipBlock) int { return strings.Compare(a.key, b.key) })
		key.Reset()
		for _, b := range in {
			key.WriteString(b.key)
			key.WriteByte('\n')
		}
		if h, ok := c.a.hints.CIDRIdentities[p]; ok {
			c.a.cidrs.claim(key.String(), h)
		}
		id := c.a.cidrs.get(key.String())
		c.out.CIDRs[p] = id
		if _, ok := c.out.Identities[id]; !ok {
			desc := Identity{}
			for _, b := range in {
				desc.Blocks = append(desc.Blocks, b.String())
			}
			c.out.Identities[id] = desc
		}
		for _, b := range in {
			b.ids = append(b.ids, id)
		}
	}
	for _, b := range c.blocks {
		slices.Sort(b.ids)
		b.ids = slices.Compact(b.ids)
	}
}
