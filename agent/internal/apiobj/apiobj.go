// Package apiobj reads fields of Kubernetes API objects the same way for
// every controller of the agent.
package apiobj

import v1 "k8s.io/api/core/v1"

// PodCIDRs returns the node's pod CIDRs: spec.podCIDRs, or the older
// single spec.podCIDR when only that is set.
func PodCIDRs(n *v1.Node) []string {
	if len(n.Spec.PodCIDRs) == 0 && n.Spec.PodCIDR != "" {
		return []string{n.Spec.PodCIDR}
	}
	return n.Spec.PodCIDRs
}
