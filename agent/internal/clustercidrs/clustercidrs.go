// Package clustercidrs keeps the masquerade's cluster CIDRs in step with
// the cluster: the configured ones and, with the word "nodes" among them,
// every Node's spec.podCIDRs as nodes come and go, so that no pod CIDR
// has to be written into the manifest.
package clustercidrs

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"

	"github.com/sluice-net/sluice/agent/internal/apiobj"
	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/nodewatch"
)

// FromNodes, as an element of the clusterCIDRs setting, stands for every
// Node's pod CIDRs.
const FromNodes = "nodes"

// Parse splits the clusterCIDRs setting into its CIDRs and whether the
// Nodes' pod CIDRs are wanted too.
func Parse(setting []string) (static []netip.Prefix, fromNodes bool, err error) {
	for i, s := range setting {
		if s == FromNodes {
			fromNodes = true
			continue
		}
		p, perr := netip.ParsePrefix(s)
		if perr != nil {
			return nil, false, fmt.Errorf("clusterCIDRs[%d]: %q is not a CIDR or %q", i, s, FromNodes)
		}
		static = append(static, p.Masked())
	}
	return static, fromNodes, nil
}

// Desired is static and every Node's pod CIDRs, masked, sorted and without
// repeats. Malformed pod CIDRs are skipped and reported.
func Desired(nodes []*v1.Node, static []netip.Prefix) ([]netip.Prefix, []error) {
	out := slices.Clone(static)
	var errs []error
	for _, n := range nodes {
		cidrs, cidrErrs := apiobj.ParsePodCIDRs(n)
		out = append(out, cidrs...)
		errs = append(errs, cidrErrs...)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out), errs
}

// New returns the controller applying static and the Nodes' pod CIDRs
// with apply (the masquerade) whenever the Nodes change them; it registers
// on factory, which the caller starts. opts.Name is set here.
func New(log *slog.Logger, factory informers.SharedInformerFactory, static []netip.Prefix, apply func([]netip.Prefix) error,
	m *metrics.Metrics, opts nodewatch.Options) (*nodewatch.Watcher, error) {
	var applied []netip.Prefix
	sync := func(nodes []*v1.Node) (int, error) {
		desired, errs := Desired(nodes, static)
		for _, e := range errs {
			log.Warn("node's pod CIDR not counted as the cluster's", "err", e)
		}
		if applied != nil && slices.Equal(desired, applied) {
			return len(errs), nil
		}
		if err := apply(desired); err != nil {
			return len(errs), fmt.Errorf("masquerade of the cluster CIDRs: %w", err)
		}
		applied = desired
		log.Info("cluster CIDRs taken from the Nodes", "clusterCIDRs", desired)
		return len(errs), nil
	}
	opts.Name = "clustercidrs"
	return nodewatch.New(log, factory, sync, m, opts)
}
