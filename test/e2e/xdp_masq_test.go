//go:build e2e

package e2e_test

import (
	"net"
	"os"
	"strconv"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// xdpMasqFirstPort is the lowest port the XDP masquerade uses on a node
// with Linux's default ephemeral range (32768-60999), as the local
// cluster's nodes have: netfilter's masquerade stays below it.
const xdpMasqFirstPort = 61000

// TestXDPMasquerade (loadBalancerMode snat with acceleration native,
// test/e2e/run-xdp.sh): an outside client reaches a NodePort and a
// LoadBalancer IP on node A whose only backend is on node B. Node A's XDP
// masquerades the flow itself: the backend sees node A's address, from a
// port of the XDP masquerade's range (netfilter's would be below it), and
// node A's agent counts packets sent on and replies sent back by XDP. A
// kept-alive connection through node A survives a restart of its agent.
func TestXDPMasquerade(t *testing.T) {
	if os.Getenv("SLUICE_E2E_XDP") == "" {
		t.Skip("SLUICE_E2E_XDP not set: run by test/e2e/run-xdp.sh on a local cluster up with --xdp")
	}
	inBothFamiliesInTurn(t, func(t *testing.T, f *testNS) {
		a, b := f.nodes[0], f.nodes[1]
		web := map[string]string{"app": "web"}
		f.runPods(netexecPod("web-b", b, web))
		ipA := f.nodeIP(a)
		nodePort := f.nodePortService("web", web, v1.ServiceExternalTrafficPolicyCluster, 1)
		const lbPort = 8492
		f.loadBalancerService("web-lb", web, lbPort, ipA, nil)
		forward := f.agentCounter(a, "sluice_xdp_masquerade_packets_total", "forward")
		reply := f.agentCounter(a, "sluice_xdp_masquerade_packets_total", "reply")

		for _, port := range []int{nodePort, lbPort} {
			url := "http://" + net.JoinHostPort(ipA, strconv.Itoa(port)) + "/clientip"
			seen := f.clientSeenThrough(url, b)
			host, p, err := net.SplitHostPort(seen)
			srcPort, _ := strconv.Atoi(p)
			if err != nil || host != ipA || srcPort < xdpMasqFirstPort {
				t.Errorf("through %s the backend saw the client as %q; want node %s's %s from a port of %d or above (the XDP masquerade's)",
					url, seen, a, ipA, xdpMasqFirstPort)
			}
		}
		if n := f.agentCounter(a, "sluice_xdp_masquerade_packets_total", "forward") - forward; n == 0 {
			t.Errorf("node %s's XDP sent no packet on to %s", a, b)
		}
		if n := f.agentCounter(a, "sluice_xdp_masquerade_packets_total", "reply") - reply; n == 0 {
			t.Errorf("node %s's XDP sent no reply back to the client", a)
		}

		// A connection kept alive across a restart of node A's agent.
		url := "http://" + net.JoinHostPort(ipA, strconv.Itoa(nodePort)) + "/hostname"
		f.keptAcrossAgentRestart(a, url, "agent restart on "+a+" under the XDP masquerade", "outside->nodeport-xdp-masq")
	})
}
