package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Nodes can run kube-proxy instead of Sluice, for side-by-side benchmarks
// (hack/bench): pods are then wired by the reference ptp and host-local
// CNI plugins, built from containernetworking/plugins, and kube-proxy
// (built from the pinned Kubernetes module) programs Services in iptables
// or nftables mode.
const (
	proxySluice   = "sluice"
	proxyIPTables = "iptables"
	proxyNFTables = "nftables"
)

// parseProxies reads --proxies: one proxy per node, or empty for Sluice
// everywhere.
func parseProxies(flagValue string, nodes int) ([]string, error) {
	out := make([]string, nodes)
	for i := range out {
		out[i] = proxySluice
	}
	if flagValue == "" {
		return out, nil
	}
	given := strings.Split(flagValue, ",")
	if len(given) != nodes {
		return nil, fmt.Errorf("--proxies: %d values for %d nodes; give one per node", len(given), nodes)
	}
	for i, p := range given {
		switch p {
		case proxySluice, proxyIPTables, proxyNFTables:
			out[i] = p
		default:
			return nil, fmt.Errorf("--proxies: %q is not sluice, iptables or nftables", p)
		}
	}
	return out, nil
}

// buildReferencePlugins builds ptp and host-local into bin/cni.
func buildReferencePlugins(repo string) error {
	for _, name := range []string{"main/ptp", "ipam/host-local"} {
		cmd := exec.Command("go", "build", "-o", path("bin", "cni", filepath.Base(name)),
			"github.com/containernetworking/plugins/plugins/"+name)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", name, err, b)
		}
	}
	return nil
}

// installReferenceCNI puts ptp + host-local and their conflist on a
// kube-proxy node.
func installReferenceCNI(n *nodeState) error {
	binDir, confDir := n.Host.Map("/opt/cni/bin"), n.Host.Map("/etc/cni/net.d")
	for _, d := range []string{binDir, confDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, name := range []string{"ptp", "host-local"} {
		b, err := os.ReadFile(path("bin", "cni", name))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(binDir, name), b, 0o755); err != nil {
			return err
		}
	}
	conf := map[string]any{
		"cniVersion": "1.0.0", "name": "reference",
		"plugins": []any{map[string]any{
			"type": "ptp", "mtu": 1500,
			"ipam": map[string]any{
				"type": "host-local", "dataDir": n.Host.Map("/var/lib/cni/networks"),
				// IPv4 pods only: the benchmarks measure IPv4 Services.
				"ranges": []any{[]any{map[string]any{"subnet": n.PodCIDRs[0]}}},
				"routes": []any{map[string]any{"dst": "0.0.0.0/0"}},
			},
		}},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(confDir, "10-reference.conflist"), b, 0o644)
}

// kubeProxyDaemon is kube-proxy for the node in the given mode.
func kubeProxyDaemon(s *state, n *nodeState) *daemon {
	return &daemon{Name: "kube-proxy-" + n.Name, Argv: []string{
		filepath.Join(s.K8sBin, "kube-proxy"), "--kubeconfig", path("pki", "node.kubeconfig"),
		"--hostname-override", n.Name, "--proxy-mode", n.Proxy, "--cluster-cidr", clusterCIDRs,
		// The namespace's conntrack table is the kernel's; leave its sizing alone.
		"--conntrack-max-per-core", "0",
		"--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256",
	}}
}
