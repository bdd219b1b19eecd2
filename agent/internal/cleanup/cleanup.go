// Package cleanup removes what Sluice installed on a node, so that it can
// go back to kube-proxy and another CNI (`sluice-agent cleanup`). Every
// step is idempotent and reported; a failed step does not stop the others.
package cleanup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/sluice-net/sluice/agent/internal/dsr"
	"github.com/sluice-net/sluice/agent/internal/masq"
	"github.com/sluice-net/sluice/agent/internal/routes"
	"github.com/sluice-net/sluice/agent/internal/tunnel"
	"github.com/sluice-net/sluice/bpf"
)

// Options name what to remove. Empty paths are skipped.
type Options struct {
	// BPFRoot is the bpffs directory of the node's datapath.
	BPFRoot string
	// CNIConfFile is the CNI configuration the install wrote.
	CNIConfFile string
	// NodeStateFile and EndpointSocket are the agent's files for the CNI
	// plugin.
	NodeStateFile, EndpointSocket string
}

// Result is the outcome of one step.
type Result struct {
	Step string
	Did  string // what was removed; "" when there was nothing to remove
	Err  error
}

// Run removes, in this order: the CNI configuration (no new pod gets
// Sluice's network), the node state file and the endpoint socket, the
// socket-level load balancing hooks, Sluice's tc programs on every
// interface of the current network namespace (tcx links and legacy
// filters), every pin under BPFRoot, the nftables table, the routes the
// routes controller added, the overlay device and the managed neighbour
// entries of direct server return. Pods already running
// lose their connectivity: drain the node first.
func Run(o Options) []Result {
	steps := []struct {
		name string
		fn   func() (string, error)
	}{
		{"cni config " + o.CNIConfFile, func() (string, error) { return removeFile(o.CNIConfFile) }},
		{"node state file " + o.NodeStateFile, func() (string, error) { return removeFile(o.NodeStateFile) }},
		{"endpoint socket " + o.EndpointSocket, func() (string, error) { return removeFile(o.EndpointSocket) }},
		{"socket load balancing", func() (string, error) { return detachSocketLB(o.BPFRoot) }},
		{"tc programs", func() (string, error) { return detachTC(o.BPFRoot) }},
		{"bpffs pins under " + o.BPFRoot, func() (string, error) { return removePins(o.BPFRoot) }},
		{"nftables table inet " + masq.TableName, removeTable},
		{"routes (proto 92)", removeRoutes},
		{"overlay device " + tunnel.DeviceName, tunnel.Remove},
		{"managed neighbours (direct server return)", dsr.RemoveNeighbours},
	}
	var out []Result
	for _, s := range steps {
		did, err := s.fn()
		out = append(out, Result{Step: s.name, Did: did, Err: err})
	}
	return out
}

// Err joins the errors of results.
func Err(results []Result) error {
	var errs []error
	for _, r := range results {
		if r.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.Step, r.Err))
		}
	}
	return errors.Join(errs...)
}

func removeFile(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	err := os.Remove(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", nil
	case err != nil:
		return "", err
	}
	return "removed", nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func detachSocketLB(root string) (string, error) {
	if root == "" || !exists(root) {
		return "", nil
	}
	n := countSockLinks(root)
	if err := bpf.DetachSocketLB(root); err != nil {
		return "", err
	}
	if n == 0 {
		return "", nil
	}
	return fmt.Sprintf("%d cgroup hooks detached", n), nil
}

// detachTC removes Sluice's programs from every interface: tcx links
// pinned under root, and legacy cls_bpf filters (which no pin records).
func detachTC(root string) (string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return "", fmt.Errorf("list interfaces: %w", err)
	}
	var errs []error
	n := 0
	for _, l := range links {
		name := l.Attrs().Name
		had := hasSluiceTC(root, l)
		if err := bpf.DetachPod(root, name); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		if had {
			n++
		}
	}
	did := ""
	if n > 0 {
		did = fmt.Sprintf("detached from %d interfaces", n)
	}
	return did, errors.Join(errs...)
}

func removePins(root string) (string, error) {
	if root == "" || !exists(root) {
		return "", nil
	}
	if err := bpf.Remove(root); err != nil {
		return "", err
	}
	return "removed", nil
}

func removeTable() (string, error) {
	conn, err := nftables.New()
	if err != nil {
		return "", fmt.Errorf("nftables: %w", err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", fmt.Errorf("list nftables tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == masq.TableName }) {
		return "", nil
	}
	if err := masq.Apply(nil, 0, masq.PortRange{}); err != nil {
		return "", err
	}
	return "removed", nil
}

func removeRoutes() (string, error) {
	n, err := routes.MainTable{}.Sync(nil)
	if n == 0 {
		return "", err
	}
	return fmt.Sprintf("%d removed", n), err
}

// countSockLinks counts the pinned cgroup links of socket LB
// (<root>/links/cgroup_*, docs/reference.md).
func countSockLinks(root string) int {
	pins, _ := filepath.Glob(filepath.Join(root, "links", "cgroup_*"))
	return len(pins)
}

// hasSluiceTC says whether l carries Sluice's programs: a tcx link pinned
// for it (<root>/links/<ifname>_{ingress,egress}, '.' written ':'), or a
// legacy filter (named sluice_ingress or sluice_egress).
func hasSluiceTC(root string, l netlink.Link) bool {
	name := strings.ReplaceAll(l.Attrs().Name, ".", ":")
	for _, dir := range []string{"ingress", "egress"} {
		if root != "" && exists(filepath.Join(root, "links", name+"_"+dir)) {
			return true
		}
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		filters, err := netlink.FilterList(l, parent)
		if err != nil {
			continue // no clsact qdisc
		}
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, "sluice_") {
				return true
			}
		}
	}
	return false
}
