//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// peerServer answers every HTTP request on the port it is given, over IPv4
// and IPv6, with the address the client was seen from.
const peerServer = `import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
while True:
    c, a = s.accept()
    c.recv(4096)
    ip = a[0].removeprefix("::ffff:").encode()
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(ip), ip))
    c.close()`

// outsideAddr is the outside host's address on node's subnet, of the
// test's family.
func (f *testNS) outsideAddr(node string) string {
	f.t.Helper()
	nodeIP := netip.MustParseAddr(f.nodeIP(node))
	out, err := f.driverRun(execTimeout, "outside", "--", "ip", "-o", "addr", "show")
	if err != nil {
		f.t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 4 {
			continue
		}
		if p, err := netip.ParsePrefix(fields[3]); err == nil && p.Contains(nodeIP) {
			return p.Addr().String()
		}
	}
	f.t.Fatalf("the outside host has no address on %s's subnet:\n%s", node, out)
	return ""
}

// TestPodToOutsideMasqueraded: a pod's connection to a host outside the
// cluster leaves from its node's address (the masquerade of traffic
// leaving the cluster CIDRs, which the agents take from the Nodes), and
// its reply finds the pod: the outside network has no route to pods.
func TestPodToOutsideMasqueraded(t *testing.T) {
	t.Parallel()
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		if _, err := f.driverRun(execTimeout, "outside", "--", "python3", "-c", "pass"); err != nil {
			t.Skipf("no python3 on the outside host: %v", err)
		}
		a := f.nodes[0]
		port := 18481
		if f.family == v1.IPv6Protocol {
			port++
		}
		f.driverBackground("outside", "--", "python3", "-c", peerServer, strconv.Itoa(port))
		f.runPods(netexecPod("client", a, nil))
		url := "http://" + net.JoinHostPort(f.outsideAddr(a), strconv.Itoa(port)) + "/"
		want := f.nodeIP(a)
		f.eventually("the outside host answering "+url, datapathTimeout, func(context.Context) error {
			got, err := f.exec("client", "curl", "-s", "--max-time", "3", url)
			if err == nil && strings.TrimSpace(got) != want {
				err = fmt.Errorf("the outside host saw the pod as %q, want its node's address %s", got, want)
			}
			return err
		})
	})
}
