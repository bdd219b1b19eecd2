//go:build e2e

package e2e_test

import (
	"net/netip"
	"os"
	"regexp"
	"testing"
)

// TestOverlayNetwork checks what the overlay run (run-overlay.sh, the
// local cluster in routingMode vxlan) rests on: the nodes sit on subnets
// of their own, so the pod, Service and policy tests that run next cross
// an underlay that routes nothing but node addresses; and pods get the
// MTU the overlay leaves them (the local cluster's 1500-byte uplinks less
// VXLAN's 50 bytes over IPv4), so a full-size packet fits the tunnel.
func TestOverlayNetwork(t *testing.T) {
	if os.Getenv("SLUICE_E2E_OVERLAY") == "" {
		t.Skip("SLUICE_E2E_OVERLAY not set: run by test/e2e/run-overlay.sh on an overlay local cluster")
	}
	t.Parallel()
	f := newTestNS(t)
	a, b := f.nodes[0], f.nodes[1]
	ipA, ipB := netip.MustParseAddr(f.nodeIP(a)), netip.MustParseAddr(f.nodeIP(b))
	if netip.PrefixFrom(ipA, 24).Masked() == netip.PrefixFrom(ipB, 24).Masked() {
		t.Fatalf("nodes %s (%s) and %s (%s) share a subnet: the overlay run needs them apart (localcluster up --overlay)", a, ipA, b, ipB)
	}
	f.runPods(netexecPod("pod-a", a, nil), netexecPod("pod-b", b, nil))
	const wantMTU = "1450"
	for _, pod := range []string{"pod-a", "pod-b"} {
		out, err := f.exec(pod, "ip", "-o", "link", "show", "eth0")
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`mtu (\d+)`).FindStringSubmatch(out)
		if m == nil || m[1] != wantMTU {
			t.Errorf("%s's eth0: %q; want mtu %s (uplink 1500 less VXLAN's 50)", pod, out, wantMTU)
		}
	}
}
