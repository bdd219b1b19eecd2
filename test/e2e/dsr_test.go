//go:build e2e

package e2e_test

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// TestDirectServerReturn (loadBalancerMode dsr, test/e2e/run-dsr.sh): an
// outside client reaches a NodePort and a LoadBalancer IP on node A whose
// only backend is on node B. Node A's XDP sends the flow on to node B; the
// backend sees the client's own address (under snat it would see node
// A's), and the replies leave node B straight for the client: node B's
// agent counts them, node A's counts none. A kept-alive connection through
// node A survives a restart of node A's agent.
func TestDirectServerReturn(t *testing.T) {
	if os.Getenv("SLUICE_E2E_DSR") == "" {
		t.Skip("SLUICE_E2E_DSR not set: run by test/e2e/run-dsr.sh on a local cluster up with --dsr")
	}
	// Not parallel with other tests: node A's count of replies must stay
	// what this test's flows make it (none); the families in turn, each
	// restarting node A's agent.
	inBothFamiliesInTurn(t, func(t *testing.T, f *testNS) {
		a, b := f.nodes[0], f.nodes[1]
		web := map[string]string{"app": "web"}
		f.runPods(netexecPod("web-b", b, web))
		ipA, ipB := f.nodeIP(a), f.nodeIP(b)
		nodePort := f.nodePortService("web", web, v1.ServiceExternalTrafficPolicyCluster, 1)
		const lbPort = 8491
		f.loadBalancerService("web-lb", web, lbPort, ipA, nil)
		sentBefore, repliedBefore := f.dsrPackets(a, "sent"), f.dsrPackets(a, "replied")
		bRepliedBefore := f.dsrPackets(b, "replied")

		for _, port := range []int{nodePort, lbPort} {
			url := "http://" + net.JoinHostPort(ipA, strconv.Itoa(port)) + "/clientip"
			seen := f.clientSeenThrough(url, b)
			host, _, err := net.SplitHostPort(seen)
			if err != nil || host == ipA || host == ipB {
				t.Errorf("through %s the backend saw the client as %q; want the outside client's own address", url, seen)
			}
		}
		if sent := f.dsrPackets(a, "sent") - sentBefore; sent == 0 {
			t.Errorf("node %s sent no packet on to %s", a, b)
		}
		if n := f.dsrPackets(b, "replied") - bRepliedBefore; n == 0 {
			t.Errorf("node %s sent no reply straight to the client", b)
		}
		if n := f.dsrPackets(a, "replied") - repliedBefore; n != 0 {
			t.Errorf("node %s translated %d replies: they came back through it", a, n)
		}

		// A connection kept alive across a restart of node A's agent.
		url := "http://" + net.JoinHostPort(ipA, strconv.Itoa(nodePort)) + "/hostname"
		f.keptAcrossAgentRestart(a, url, "agent restart on "+a+" under dsr", "outside->nodeport-dsr")
	})
}

// dsrPackets reads node's sluice_dsr_packets_total{direction} from its
// agent's metrics.
func (f *testNS) dsrPackets(node, direction string) int {
	f.t.Helper()
	return f.agentCounter(node, "sluice_dsr_packets_total", direction)
}

// agentCounter reads the series of the counter name with the label
// direction from node's agent's metrics.
func (f *testNS) agentCounter(node, name, direction string) int {
	f.t.Helper()
	out := f.agentMetrics(node)
	m := regexp.MustCompile(fmt.Sprintf(`(?m)^%s\{direction="%s"\} (\S+)`, name, direction)).FindStringSubmatch(out)
	if m == nil {
		f.t.Fatalf("the agent on %s reports no %s{direction=%q}", node, name, direction)
	}
	n, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		f.t.Fatalf("%s on %s: %v", name, node, err)
	}
	return int(n)
}
