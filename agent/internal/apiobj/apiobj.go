// Package apiobj reads fields of Kubernetes API objects the same way for
// every controller of the agent: a Node's pod CIDRs, a protocol's number,
// and the error that names a field no controller could use.
package apiobj

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/bpf"
)

// PodCIDRs returns the node's pod CIDRs: spec.podCIDRs, or the older
// single spec.podCIDR when only that is set.
func PodCIDRs(n *v1.Node) []string {
	if len(n.Spec.PodCIDRs) == 0 && n.Spec.PodCIDR != "" {
		return []string{n.Spec.PodCIDR}
	}
	return n.Spec.PodCIDRs
}

// ParsePodCIDRs parses the node's pod CIDRs (PodCIDRs), masked; one that
// does not parse is left out and named in an error.
func ParsePodCIDRs(n *v1.Node) ([]netip.Prefix, []error) {
	var out []netip.Prefix
	var errs []error
	for i, c := range PodCIDRs(n) {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: spec.podCIDRs[%d]: %q is not a CIDR", n.Name, i, c))
			continue
		}
		out = append(out, p.Masked())
	}
	return out, errs
}

// Protocol maps a Kubernetes protocol to the datapath's protocol number;
// "" is TCP, the API default.
func Protocol(p v1.Protocol) (uint8, bool) {
	switch p {
	case v1.ProtocolTCP, "":
		return bpf.ProtoTCP, true
	case v1.ProtocolUDP:
		return bpf.ProtoUDP, true
	case v1.ProtocolSCTP:
		return bpf.ProtoSCTP, true
	}
	return 0, false
}

// Error reports an object, or one field of it, that a compiler could not
// use; what that costs (the field, or the whole object) is the compiler's
// to say.
type Error struct {
	Kind   string
	Object types.NamespacedName
	Field  string
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s: %s: %s", e.Kind, e.Object, e.Field, e.Reason)
}
