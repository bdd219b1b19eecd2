// Package compile compiles Kubernetes NetworkPolicies (networking.k8s.io/v1)
// into the maps the datapath enforces them with: an identity for every
// remote address (pod IPs and this node's addresses in the ipcache, ipBlock
// prefixes in an LPM trie), the local endpoints with their isolation, and
// allow rules keyed by endpoint, remote identity, direction, protocol and
// port prefix. It is pure: no kernel and no API server, so the semantics are
// table-tested against Kubernetes' verdicts (policy_test.go).
package compile

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/agent/internal/apiobj"
	"github.com/sluice-net/sluice/bpf"
)

// Pod identities are numbered from firstPodIdentity, CIDR identities from
// firstCIDRIdentity, so the two never collide, nor meet the reserved ones
// (bpf.IdentityAny: any remote, as a rule's remote; bpf.IdentityHost: this
// node's own addresses, always allowed; bpf.IdentityWorld: an address in
// no ipBlock).
const (
	firstPodIdentity  uint32 = 256
	firstCIDRIdentity uint32 = 1 << 24
)

// Direction is the direction of a rule, seen from the local endpoint.
type Direction uint8

// The values are the datapath's.
const (
	Ingress = Direction(bpf.PolicyIngress)
	Egress  = Direction(bpf.PolicyEgress)
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Input is everything the compiler reads: the cluster's pods, namespaces
// and policies, and who this node is.
type Input struct {
	NodeName   string
	HostAddrs  []netip.Addr
	Pods       []*v1.Pod
	Namespaces []*v1.Namespace
	Policies   []*networkingv1.NetworkPolicy
}

// Endpoint is a local pod address under policy enforcement.
type Endpoint struct {
	ID              uint32
	IngressIsolated bool
	EgressIsolated  bool
}

// Rule allows traffic between an endpoint and a remote identity. Proto 0
// means any protocol (and then Port and PortBits are 0); otherwise the top
// PortBits bits of the port must equal those of Port (PortBits 0: any
// port). Port is in host order: network order is the map writer's job.
type Rule struct {
	Endpoint uint32
	Remote   uint32
	Dir      Direction
	Proto    uint8
	Port     uint16
	PortBits uint8
}

func (r Rule) String() string {
	return fmt.Sprintf("ep=%d remote=%d %s proto=%d port=%d/%d", r.Endpoint, r.Remote, r.Dir, r.Proto, r.Port, r.PortBits)
}

// Output is the complete desired content of the policy maps for one node.
type Output struct {
	// IPCache maps every pod address in the cluster to its pod identity,
	// and this node's addresses to bpf.IdentityHost. Addresses are unmapped
	// (an IPv4 address is never in its ::ffff: form).
	IPCache map[netip.Addr]uint32
	// CIDRs maps every ipBlock prefix (cidr and except) to its CIDR
	// identity; the longest prefix containing an address decides, and an
	// address in none has bpf.IdentityWorld.
	CIDRs map[netip.Prefix]uint32
	// Endpoints are the addresses of the pods on this node.
	Endpoints map[netip.Addr]Endpoint
	// Rules are the allow rules, each with the NetworkPolicy rules it
	// comes from: an index into SourceSets.
	Rules map[Rule]SourceSet
	// SourceSets are the distinct lists of NetworkPolicy rules that rules
	// come from, each in policy order (namespace, name, rule).
	SourceSets [][]RuleSource
	// Errors report objects, or parts of them, that were skipped.
	Errors []error

	// What the numbers stand for, to name what the datapath reports (the
	// maps hold only numbers):
	//
	// Isolation is, for every isolated endpoint ID, the policies isolating
	// it.
	Isolation map[uint32]Isolation
	// Identities describe the pod and CIDR identities numbered.
	Identities map[uint32]Identity
	// EndpointPods are the pods of the local endpoints, by endpoint ID.
	EndpointPods map[uint32]EndpointPod
}

// Compile computes the policy maps of node in.NodeName. a keeps identity
// and endpoint numbers stable between calls; calls sharing a must not run
// concurrently.
func Compile(in Input, a *Allocator) Output {
	c := &compiler{
		in: in,
		a:  a,
		out: Output{
			IPCache:   map[netip.Addr]uint32{},
			CIDRs:     map[netip.Prefix]uint32{},
			Endpoints: map[netip.Addr]Endpoint{},
			Rules:     map[Rule]SourceSet{},

			Isolation:    map[uint32]Isolation{},
			Identities:   map[uint32]Identity{},
			EndpointPods: map[uint32]EndpointPod{},
		},
		namespaces: map[string]*namespace{},
		unions:     map[[2]SourceSet]SourceSet{},
		idents:     map[string]*podIdentity{},
		blocks:     map[string]*ipBlock{},
	}
	for _, ns := range in.Namespaces {
		c.namespace(ns.Name).labels = ns.Labels
	}
	c.addPods()
	// Host addresses win over a pod claiming the same address (only a
	// misreported status could do that): the node is the node.
	for _, addr := range in.HostAddrs {
		c.out.IPCache[addr.Unmap()] = bpf.IdentityHost
	}
	policies := c.parsePolicies()
	c.cidrIdentities()
	for _, p := range policies {
		c.apply(p)
	}
	a.release()
	return c.out
}

type compiler struct {
	in  Input
	a   *Allocator
	out Output

	namespaces map[string]*namespace
	// unions numbers the source sets made of a set and one more source.
	unions map[[2]SourceSet]SourceSet
	// idents are this compile's pod identities by key (see podKey); all
	// lists them in creation order.
	idents map[string]*podIdentity
	all    []*podIdentity
	// blocks are the ipBlocks of all valid policies, by content (see
	// ipBlock.key).
	blocks map[string]*ipBlock
}

// namespace is a namespace with pods, or with a Namespace object, or both.
type namespace struct {
	name   string
	labels labels.Set
	key    string         // the namespace's part of podKey, once computed
	idents []*podIdentity // pod identities in the namespace
	local  []*localPod    // pods on this node
}

type localPod struct {
	ident *podIdentity
	addrs []netip.Addr
	eps   []uint32 // the endpoint ID of each address
}

func (c *compiler) namespace(name string) *namespace {
	ns := c.namespaces[name]
	if ns == nil {
		ns = &namespace{name: name}
		c.namespaces[name] = ns
	}
	return ns
}

// addPods fills the ipcache and the endpoints. Pods are taken in a fixed
// order so that an address claimed by two pods (a terminating pod still
// reporting an address its successor got) goes to the same one every time:
// the one not being deleted, else the first by namespace and name.
func (c *compiler) addPods() {
	pods := make([]*v1.Pod, 0, len(c.in.Pods))
	for _, p := range c.in.Pods {
		if p.Spec.HostNetwork || p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed {
			continue
		}
		pods = append(pods, p)
	}
	slices.SortFunc(pods, func(a, b *v1.Pod) int {
		if d := cmp.Compare(deleting(a), deleting(b)); d != 0 {
			return d
		}
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	for _, p := range pods {
		addrs := c.podAddrs(p)
		if len(addrs) == 0 {
			continue
		}
		ident := c.podIdentity(p)
		for _, addr := range addrs {
			c.out.IPCache[addr] = ident.id
		}
		desc := c.out.Identities[ident.id]
		desc.Pods = append(desc.Pods, podName(p))
		c.out.Identities[ident.id] = desc
		if p.Spec.NodeName != c.in.NodeName {
			continue
		}
		lp := &localPod{ident: ident, addrs: addrs}
		for _, addr := range addrs {
			if h, ok := c.a.hints.Endpoints[addr]; ok {
				c.a.endpoints.claim(addr, h)
			}
			id := c.a.endpoints.get(addr)
			c.out.Endpoints[addr] = Endpoint{ID: id}
			c.out.EndpointPods[id] = EndpointPod{Pod: podName(p), Identity: ident.id, Addr: addr}
			lp.eps = append(lp.eps, id)
		}
		ident.ns.local = append(ident.ns.local, lp)
	}
}

func deleting(p *v1.Pod) int {
	if p.DeletionTimestamp != nil {
		return 1
	}
	return 0
}

func podName(p *v1.Pod) types.NamespacedName {
	return types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
}

// podAddrs returns the pod's addresses no earlier pod claimed.
func (c *compiler) podAddrs(p *v1.Pod) []netip.Addr {
	ips, field := p.Status.PodIPs, "status.podIPs"
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips, field = []v1.PodIP{{IP: p.Status.PodIP}}, "status.podIP"
	}
	var addrs []netip.Addr
	for i, ip := range ips {
		addr, err := netip.ParseAddr(ip.IP)
		if err != nil {
			c.out.Errors = append(c.out.Errors, &apiobj.Error{Kind: "Pod", Object: podName(p),
				Field: fmt.Sprintf("%s[%d]", field, i), Reason: fmt.Sprintf("%q is not an IP address", ip.IP)})
			continue
		}
		addr = addr.Unmap()
		if _, taken := c.out.IPCache[addr]; taken {
			continue
		}
		addrs = append(addrs, addr)
	}
	return addrs
}

// apply enforces one policy on the local pods it selects.
func (c *compiler) apply(p *policy) {
	ns := c.namespaces[p.obj.Namespace]
	if ns == nil {
		return
	}
	var selected []*localPod
	for _, lp := range ns.local {
		if p.podSelector.Matches(lp.ident.labels) {
			selected = append(selected, lp)
		}
	}
	if len(selected) == 0 {
		return
	}
	for _, lp := range selected {
		for i, addr := range lp.addrs {
			ep := c.out.Endpoints[addr]
			ep.IngressIsolated = ep.IngressIsolated || p.ingress
			ep.EgressIsolated = ep.EgressIsolated || p.egress
			c.out.Endpoints[addr] = ep
			iso := c.out.Isolation[lp.eps[i]]
			if p.ingress {
				iso.Ingress = append(iso.Ingress, p.obj)
			}
			if p.egress {
				iso.Egress = append(iso.Egress, p.obj)
			}
			c.out.Isolation[lp.eps[i]] = iso
		}
	}
	for i := range p.rules {
		r := &p.rules[i]
		rem := c.remotes(p.obj.Namespace, r)
		src := c.sourceSet(RuleSource{Policy: p.obj, Dir: r.dir, Index: r.index})
		for _, lp := range selected {
			c.emit(lp, r, rem, src)
		}
	}
}

// remoteSet is what a rule's peers resolve to.
type remoteSet struct {
	any   bool           // no peers: every remote
	pods  []*podIdentity // pods selected by podSelector/namespaceSelector peers
	cidrs []uint32       // CIDR identities of ipBlock peers
}

func (c *compiler) remotes(policyNS string, r *rule) remoteSet {
	if r.peers == nil {
		return remoteSet{any: true}
	}
	var rem remoteSet
	// In identity order, whatever the namespaces' order: rules are
	// emitted, and their source sets numbered, the same way every time.
	defer func() {
		slices.SortFunc(rem.pods, func(a, b *podIdentity) int { return cmp.Compare(a.id, b.id) })
		rem.pods = slices.Compact(rem.pods)
	}()
	for _, pr := range r.peers {
		switch {
		case pr.block != nil:
			rem.cidrs = append(rem.cidrs, pr.block.ids...)
		case pr.namespaceSelector == nil:
			if ns := c.namespaces[policyNS]; ns != nil {
				rem.pods = appendSelected(rem.pods, ns, pr.podSelector)
			}
		default:
			for _, ns := range c.namespaces {
				if len(ns.idents) > 0 && pr.namespaceSelector.Matches(ns.labels) {
					rem.pods = appendSelected(rem.pods, ns, pr.podSelector)
				}
			}
		}
	}
	return rem
}

func appendSelected(dst []*podIdentity, ns *namespace, sel labels.Selector) []*podIdentity {
	for _, id := range ns.idents {
		if sel.Matches(id.labels) {
			dst = append(dst, id)
		}
	}
	return dst
}

// emit adds the rules of r for every address of lp, with src as their
// source.
func (c *compiler) emit(lp *localPod, r *rule, rem remoteSet, src SourceSet) {
	add := func(remote uint32, proto uint8, pp PortPrefix) {
		for _, ep := range lp.eps {
			key := Rule{Endpoint: ep, Remote: remote, Dir: r.dir, Proto: proto, Port: pp.Port, PortBits: pp.Bits}
			if cur, ok := c.out.Rules[key]; !ok {
				c.out.Rules[key] = src
			} else if cur != src {
				c.out.Rules[key] = c.union(cur, src)
			}
		}
	}
	addAll := func(proto uint8, pps []PortPrefix) {
		for _, pp := range pps {
			if rem.any {
				add(bpf.IdentityAny, proto, pp)
			}
			for _, id := range rem.pods {
				add(id.id, proto, pp)
			}
			for _, id := range rem.cidrs {
				add(id, proto, pp)
			}
		}
	}
	for _, pt := range r.ports {
		switch {
		case pt.name == "":
			addAll(pt.proto, pt.prefixes)
		case r.dir == Ingress:
			// An ingress named port is the local pod's own port.
			for _, port := range lp.ident.resolve(pt.name, pt.proto) {
				addAll(pt.proto, []PortPrefix{{Port: port, Bits: 16}})
			}
		default:
			// An egress named port is the destination pod's port, so it
			// resolves per remote pod identity. Every pod is a candidate
			// when the rule has no peers; an ipBlock peer names addresses,
			// not pods, so a named port never matches through it.
			targets := rem.pods
			if rem.any {
				targets = c.all
			}
			for _, id := range targets {
				for _, port := range id.resolve(pt.name, pt.proto) {
					add(id.id, pt.proto, PortPrefix{Port: port, Bits: 16})
				}
			}
		}
	}
}
