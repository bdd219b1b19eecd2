package observer

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/agent/internal/flows"
	"github.com/sluice-net/sluice/agent/internal/netpol/compile"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/observeapi"
)

// localPods are the pods of the local endpoints, sorted.
func localPods(out *compile.Output) []types.NamespacedName {
	seen := map[types.NamespacedName]bool{}
	for _, ep := range out.EndpointPods {
		seen[ep.Pod] = true
	}
	return slices.SortedFunc(maps.Keys(seen), func(a, b types.NamespacedName) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
}

// podEndpoints are the endpoint IDs of pod's addresses, by address.
func podEndpoints(out *compile.Output, pod types.NamespacedName) []compile.EndpointPod {
	var eps []compile.EndpointPod
	for _, ep := range out.EndpointPods {
		if ep.Pod == pod {
			eps = append(eps, ep)
		}
	}
	slices.SortFunc(eps, func(a, b compile.EndpointPod) int { return a.Addr.Compare(b.Addr) })
	return eps
}

// endpoint describes a local pod: its addresses, identity and isolation.
// PolicyID is its first address's endpoint ID when isolated (each address
// has its own, with the same rules).
func endpoint(out *compile.Output, pod types.NamespacedName) observeapi.Endpoint {
	e := observeapi.Endpoint{Pod: pod.String()}
	for i, ep := range podEndpoints(out, pod) {
		e.Addrs = append(e.Addrs, ep.Addr.String())
		e.Identity = ep.Identity
		iso, ok := out.Isolation[epID(out, ep.Addr)]
		if i > 0 || !ok {
			continue
		}
		e.PolicyID = epID(out, ep.Addr)
		e.IngressPolicies = names(iso.Ingress)
		e.EgressPolicies = names(iso.Egress)
	}
	return e
}

func epID(out *compile.Output, addr netip.Addr) uint32 { return out.Endpoints[addr].ID }

func names(ns []types.NamespacedName) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.String())
	}
	return out
}

// ruleKey groups the compiled rules of a pod's addresses into what it
// admits: the same direction, remote, protocol and sources; ports are
// merged into ranges.
type ruleKey struct {
	dir      compile.Direction
	remote   uint32
	proto    uint8
	policies string
}

type portRange struct{ lo, hi uint16 }

// policyRules lists what pod admits, each with the policy rules it comes
// from: ingress first, then egress, by peer, protocol and port.
func policyRules(out *compile.Output, pod types.NamespacedName) []observeapi.PolicyRule {
	ids := map[uint32]bool{}
	for _, ep := range podEndpoints(out, pod) {
		ids[epID(out, ep.Addr)] = true
	}
	ranges := map[ruleKey][]portRange{}
	sources := map[ruleKey][]string{}
	for r, set := range out.Rules {
		if !ids[r.Endpoint] {
			continue
		}
		var srcs []string
		for _, s := range out.SourceSets[set] {
			srcs = append(srcs, s.String())
		}
		k := ruleKey{dir: r.Dir, remote: r.Remote, proto: r.Proto, policies: strings.Join(srcs, "\n")}
		sources[k] = srcs
		lo := r.Port
		hi := lo | uint16(0xffff>>r.PortBits)
		if r.PortBits >= 16 {
			hi = lo
		}
		if !slices.Contains(ranges[k], portRange{lo, hi}) {
			ranges[k] = append(ranges[k], portRange{lo, hi})
		}
	}
	var rules []observeapi.PolicyRule
	keys := slices.SortedFunc(maps.Keys(ranges), func(a, b ruleKey) int {
		return cmp.Or(cmp.Compare(a.dir, b.dir), cmp.Compare(a.remote, b.remote), cmp.Compare(a.proto, b.proto), cmp.Compare(a.policies, b.policies))
	})
	for _, k := range keys {
		rs := ranges[k]
		slices.SortFunc(rs, func(a, b portRange) int { return cmp.Compare(a.lo, b.lo) })
		var merged []portRange
		for _, r := range rs {
			if n := len(merged); n > 0 && uint32(r.lo) <= uint32(merged[n-1].hi)+1 {
				merged[n-1].hi = max(merged[n-1].hi, r.hi)
				continue
			}
			merged = append(merged, r)
		}
		for _, r := range merged {
			rule := observeapi.PolicyRule{Direction: k.dir.String(), Peer: peer(out, k.remote), Proto: "any", Ports: "any",
				Policies: sources[k]}
			if k.proto != 0 {
				rule.Proto = strings.ToUpper(flows.ProtoName(k.proto))
				switch {
				case r.lo == 0 && r.hi == 0xffff:
				case r.lo == r.hi:
					rule.Ports = fmt.Sprint(r.lo)
				default:
					rule.Ports = fmt.Sprintf("%d-%d", r.lo, r.hi)
				}
			}
			rules = append(rules, rule)
		}
	}
	return rules
}

// peer describes a remote identity.
func peer(out *compile.Output, id uint32) observeapi.Peer {
	p := observeapi.Peer{Identity: id}
	switch id {
	case bpf.IdentityAny:
		p.Kind = "any"
		return p
	case bpf.IdentityHost:
		p.Kind = "host"
		return p
	case bpf.IdentityWorld:
		p.Kind = "world"
		return p
	}
	d := out.Identities[id]
	if compile.IsCIDR(id) {
		p.Kind, p.CIDRs = "cidr", d.Blocks
		return p
	}
	p.Kind, p.Namespace, p.Labels, p.Pods = "pods", d.Namespace, d.Labels, names(d.Pods)
	return p
}
