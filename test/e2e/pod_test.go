//go:build e2e

package e2e_test

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// TestPodToPod: every client reaches every server by pod IP, on its own
// node and across nodes, and the server sees the client's own pod IP: pod
// traffic is routed, never masqueraded.
func TestPodToPod(t *testing.T) {
	t.Parallel()
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		nodes := f.nodes[:2]
		servers := []string{"server-0", "server-1"}
		clients := []string{"client-0", "client-1"}
		ips := f.runPods(
			netexecPod(servers[0], nodes[0], nil), netexecPod(servers[1], nodes[1], nil),
			netexecPod(clients[0], nodes[0], nil), netexecPod(clients[1], nodes[1], nil))
		serverIPs, clientIPs := ips[:2], ips[2:]

		for c, client := range clients {
			for s, server := range servers {
				path := client + " (" + nodes[c] + ") -> " + server + " (" + nodes[s] + ")"
				for _, dial := range podPorts {
					got, err := f.dialFrom(client, dial.proto, serverIPs[s], dial.port)
					if err != nil {
						t.Errorf("%s %s: %v", path, dial.proto, err)
					} else if got != server {
						t.Errorf("%s %s: answered by %q", path, dial.proto, got)
					}
				}

				out, err := f.exec(client, "curl", "-s", "--max-time", "5",
					"http://"+net.JoinHostPort(serverIPs[s], strconv.Itoa(podHTTPPort))+"/clientip")
				if err != nil {
					t.Errorf("%s /clientip: %v", path, err)
					continue
				}
				seen, _, err := net.SplitHostPort(strings.TrimSpace(out))
				if err != nil {
					t.Errorf("%s /clientip: unreadable answer %q: %v", path, out, err)
				} else if seen != clientIPs[c] {
					t.Errorf("%s: server saw the client as %s, want its pod IP %s", path, seen, clientIPs[c])
				}
			}
		}
	})
}
