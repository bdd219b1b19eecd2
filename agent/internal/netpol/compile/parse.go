package compile

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sluice-net/sluice/agent/internal/apiobj"
	"github.com/sluice-net/sluice/bpf"
)

// policy is a NetworkPolicy parsed and checked.
type policy struct {
	obj             types.NamespacedName
	podSelector     labels.Selector
	ingress, egress bool // isolates the pods it selects in that direction
	rules           []rule
}

type rule struct {
	dir   Direction
	index int        // its place in spec.ingress or spec.egress
	peers []peer     // nil: every remote
	ports []portSpec // never empty: no ports is one "all" entry
}

// peer is one NetworkPolicyPeer: either an ipBlock, or pods matching
// podSelector in the namespaces matching namespaceSelector (nil: the
// policy's own namespace).
type peer struct {
	block             *ipBlock
	namespaceSelector labels.Selector
	podSelector       labels.Selector
}

type portSpec struct {
	proto    uint8  // 0: any protocol
	name     string // a named port, resolved per pod
	prefixes []PortPrefix
}

// allPorts is the port list of a rule without ports.
var allPorts = []portSpec{{prefixes: []PortPrefix{{}}}}

// parsePolicies parses the policies, in a fixed order so that errors come
// out the same way every time, and collects the ipBlocks of the valid ones.
func (c *compiler) parsePolicies() []*policy {
	nps := slices.Clone(c.in.Policies)
	slices.SortFunc(nps, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	var out []*policy
	for _, np := range nps {
		p, err := parsePolicy(np)
		if err != nil {
			c.out.Errors = append(c.out.Errors, err)
			continue
		}
		for i := range p.rules {
			for j := range p.rules[i].peers {
				pr := &p.rules[i].peers[j]
				if pr.block == nil {
					continue
				}
				// Blocks with the same content always match the same
				// addresses, so they share one entry (and identities).
				if b, ok := c.blocks[pr.block.key]; ok {
					pr.block = b
				} else {
					c.blocks[pr.block.key] = pr.block
				}
			}
		}
		out = append(out, p)
	}
	return out
}

func parsePolicy(np *networkingv1.NetworkPolicy) (*policy, error) {
	p := &policy{obj: types.NamespacedName{Namespace: np.Namespace, Name: np.Name}}
	// A policy with an error is skipped as a whole, as if it did not
	// exist: the API server validates policies, so only a validation gap
	// gets one here, and enforcing a part of it would be a guess at what it
	// meant.
	fail := func(field, format string, args ...any) (*policy, error) {
		return nil, &apiobj.Error{Kind: "NetworkPolicy", Object: p.obj, Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	var err error
	if p.podSelector, err = metav1.LabelSelectorAsSelector(&np.Spec.PodSelector); err != nil {
		return fail("spec.podSelector", "%v", err)
	}
	// Kubernetes' defaulting: without policyTypes a policy isolates for
	// ingress, and for egress too when it has egress rules.
	if len(np.Spec.PolicyTypes) == 0 {
		p.ingress, p.egress = true, len(np.Spec.Egress) > 0
	}
	for i, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.ingress = true
		case networkingv1.PolicyTypeEgress:
			p.egress = true
		default:
			return fail(fmt.Sprintf("spec.policyTypes[%d]", i), "unknown policy type %q", t)
		}
	}
	// Rules of a direction the policy does not isolate are ignored, as
	// Kubernetes does.
	if p.ingress {
		for i, r := range np.Spec.Ingress {
			field := fmt.Sprintf("spec.ingress[%d]", i)
			pr, f, err := parseRule(Ingress, r.From, r.Ports, field+".from", field+".ports")
			if err != nil {
				return fail(f, "%v", err)
			}
			pr.index = i
			p.rules = append(p.rules, pr)
		}
	}
	if p.egress {
		for i, r := range np.Spec.Egress {
			field := fmt.Sprintf("spec.egress[%d]", i)
			pr, f, err := parseRule(Egress, r.To, r.Ports, field+".to", field+".ports")
			if err != nil {
				return fail(f, "%v", err)
			}
			pr.index = i
			p.rules = append(p.rules, pr)
		}
	}
	return p, nil
}

// parseRule parses one rule; on error it also returns the failing field.
func parseRule(dir Direction, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, peersField, portsField string) (rule, string, error) {
	r := rule{dir: dir, ports: allPorts}
	for i, np := range peers {
		pr, f, err := parsePeer(np)
		if err != nil {
			return r, fmt.Sprintf("%s[%d]%s", peersField, i, f), err
		}
		r.peers = append(r.peers, pr)
	}
	if len(ports) > 0 {
		r.ports = make([]portSpec, 0, len(ports))
	}
	for i, np := range ports {
		pt, err := parsePort(np)
		if err != nil {
			return r, fmt.Sprintf("%s[%d]", portsField, i), err
		}
		r.ports = append(r.ports, pt)
	}
	return r, "", nil
}

// parsePeer returns, on error, the failing field below the peer.
func parsePeer(np networkingv1.NetworkPolicyPeer) (peer, string, error) {
	if np.IPBlock != nil {
		if np.PodSelector != nil || np.NamespaceSelector != nil {
			return peer{}, "", fmt.Errorf("ipBlock cannot be combined with a selector")
		}
		b, f, err := parseIPBlock(np.IPBlock)
		return peer{block: b}, ".ipBlock" + f, err
	}
	if np.PodSelector == nil && np.NamespaceSelector == nil {
		return peer{}, "", fmt.Errorf("one of podSelector, namespaceSelector and ipBlock is required")
	}
	pr := peer{podSelector: labels.Everything()}
	var err error
	if np.PodSelector != nil {
		if pr.podSelector, err = metav1.LabelSelectorAsSelector(np.PodSelector); err != nil {
			return pr, ".podSelector", err
		}
	}
	if np.NamespaceSelector != nil {
		if pr.namespaceSelector, err = metav1.LabelSelectorAsSelector(np.NamespaceSelector); err != nil {
			return pr, ".namespaceSelector", err
		}
	}
	return pr, "", nil
}

// parseIPBlock returns, on error, the failing field below the block.
func parseIPBlock(ib *networkingv1.IPBlock) (*ipBlock, string, error) {
	cidr, err := netip.ParsePrefix(ib.CIDR)
	if err != nil {
		return nil, ".cidr", err
	}
	b := &ipBlock{cidr: cidr.Masked()}
	for i, s := range ib.Except {
		e, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Sprintf(".except[%d]", i), err
		}
		b.except = append(b.except, e.Masked())
	}
	slices.SortFunc(b.except, netip.Prefix.Compare)
	b.except = slices.Compact(b.except)
	var key strings.Builder
	key.WriteString(b.cidr.String())
	for _, e := range b.except {
		key.WriteString(" -")
		key.WriteString(e.String())
	}
	b.key = key.String()
	return b, "", nil
}

func parsePort(np networkingv1.NetworkPolicyPort) (portSpec, error) {
	pt := portSpec{proto: bpf.ProtoTCP}
	if np.Protocol != nil {
		var ok bool
		if pt.proto, ok = apiobj.Protocol(*np.Protocol); !ok {
			return pt, fmt.Errorf("unsupported protocol %q", *np.Protocol)
		}
	}
	switch {
	case np.Port == nil:
		if np.EndPort != nil {
			return pt, fmt.Errorf("endPort without port")
		}
		pt.prefixes = []PortPrefix{{}}
	case np.Port.Type == intstr.String:
		if np.EndPort != nil {
			return pt, fmt.Errorf("endPort with named port %q", np.Port.StrVal)
		}
		if np.Port.StrVal == "" {
			return pt, fmt.Errorf("empty port name")
		}
		pt.name = np.Port.StrVal
	default:
		from, to := np.Port.IntVal, np.Port.IntVal
		if np.EndPort != nil {
			to = *np.EndPort
		}
		if from < 1 || from > 65535 || to < from || to > 65535 {
			return pt, fmt.Errorf("invalid port range %d-%d", from, to)
		}
		pt.prefixes = PortPrefixes(uint16(from), uint16(to))
	}
	return pt, nil
}
