//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// pmtuSetup builds, from the outside host, a client behind a router whose
// path back to the client has an MTU of 1280 while every link is 1500:
// the client's SYN offers a full-size MSS, and the backend's full-size
// replies meet the router, which answers "fragmentation needed" to the
// reply's source, the NodePort. The router masquerades the client, so the
// nodes need no route to it. Arguments: router and client namespace names,
// a short suffix for link names, a node address, the router's address on
// the node network.
const pmtuSetup = `set -eu
r=$1 c=$2 s=$3 node=$4 raddr=$5
dev=$(ip -o route get "$node" | sed -n 's/.* dev \([^ ]*\).*/\1/p')
plen=$(ip -o -4 addr show dev "$dev" | sed -n 's|.* inet [^/]*/\([0-9]*\) .*|\1|p' | head -n 1)
ip netns add "$r"
ip netns add "$c"
ip link add "pm$s" type veth peer name u0 netns "$r"
ip link set "pm$s" master "$dev" up
ip -n "$r" link set lo up
ip -n "$r" link set u0 up
ip -n "$r" addr add "$raddr/$plen" dev u0
ip -n "$r" link add c0 type veth peer name c1 netns "$c"
ip -n "$r" link set c0 up
ip -n "$r" addr add 10.99.0.1/24 dev c0
ip -n "$r" route replace 10.99.0.0/24 dev c0 mtu 1280
ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$r" nft -f - <<NFT
table ip pmtu {
	chain post {
		type nat hook postrouting priority srcnat;
		oifname "u0" masquerade
	}
}
NFT
ip -n "$c" link set lo up
ip -n "$c" link set c1 up
ip -n "$c" addr add 10.99.0.2/24 dev c1
ip -n "$c" route add default via 10.99.0.1`

// TestPathMTUThroughNodePort: a client whose path back has a smaller MTU
// than its own link fetches a reply of several full-size segments through
// a NodePort, from a backend on the node and on another node. It gets it
// only if the router's "fragmentation needed" about the reply, sent to
// the NodePort, reaches the backend as its own (else the segments are
// lost for good: a path-MTU black hole).
func TestPathMTUThroughNodePort(t *testing.T) {
	t.Parallel()
	f := newTestNS(t)
	a, b := f.nodes[0], f.nodes[1]
	ipA := f.nodeIP(a)
	node := netip.MustParseAddr(ipA)
	if !node.Is4() {
		t.Skip("the router of this test is IPv4")
	}
	suffix := f.name[len(f.name)-5:]
	router, client := "sl-pmtu-r-"+suffix, "sl-pmtu-c-"+suffix
	// Node A's address with the last byte 250: free on the local cluster's
	// node network (192.168.77.0/24, nodes from .11).
	raddr := node.As4()
	raddr[3] = 250
	t.Cleanup(func() {
		// The test's context is done by now: the driver runs on its own.
		del := `for ns; do [ ! -e "/run/netns/$ns" ] || ip netns del "$ns"; done`
		if out, err := exec.Command(f.driver, "outside", "--", "sh", "-c", del, "sh", client, router).CombinedOutput(); err != nil {
			t.Errorf("remove namespaces %s and %s: %v %s", client, router, err, out)
		}
	})
	if out, err := f.driverRun(execTimeout, "outside", "--", "sh", "-c", pmtuSetup, "pmtu", router, client, suffix, ipA,
		netip.AddrFrom4(raddr).String()); err != nil {
		t.Skipf("cannot build the router and client on the outside host (the local cluster can): %v %s", err, out)
	}

	f.runPods(netexecPod("local-a", a, map[string]string{"app": "local"}), netexecPod("remote-b", b, map[string]string{"app": "remote"}))
	const size = 6000 // five segments of 1448 bytes or more
	msg := strings.Repeat("x", size)
	for _, c := range []struct {
		svc    string
		policy v1.ServiceExternalTrafficPolicy
	}{{"local", v1.ServiceExternalTrafficPolicyLocal}, {"remote", v1.ServiceExternalTrafficPolicyCluster}} {
		port := f.nodePortService(c.svc, map[string]string{"app": c.svc}, c.policy, 1)
		url := "http://" + net.JoinHostPort(ipA, strconv.Itoa(port)) + "/echo?msg=" + msg
		f.eventually(fmt.Sprintf("a %d-byte reply through NodePort %s:%d (%s backend) over the 1280-byte path", size, ipA, port, c.svc),
			datapathTimeout, func(context.Context) error {
				out, err := f.driverRun(execTimeout, "outside", "--", "ip", "netns", "exec", client,
					"curl", "-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{size_download}", url)
				if err != nil {
					// Not err itself: it quotes the whole URL.
					return fmt.Errorf("curl from the client behind the router: exit %d (28: timed out), %s bytes received", exitCode(err), strings.TrimSpace(out))
				}
				if got := strings.TrimSpace(out); got != strconv.Itoa(size) {
					return fmt.Errorf("received %s bytes, want %d", got, size)
				}
				return nil
			})
	}
}
