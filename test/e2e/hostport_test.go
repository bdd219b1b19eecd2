//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
)

// TestHostPort: a pod's hostPort answers on its node's address from
// outside (the pod sees the client's own address), from pods on its own
// and on the other node, and from hostNetwork pods (the nodes' own
// sockets) on both.
func TestHostPort(t *testing.T) {
	t.Parallel()
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		a, b := f.nodes[0], f.nodes[1]
		const hostPort = 8091
		web := netexecPod("web-a", a, nil)
		web.Spec.Containers[0].Ports[0].HostPort = hostPort
		f.runPods(web, netexecPod("client-a", a, nil), netexecPod("client-b", b, nil),
			hostNetworkPod("host-a", a), hostNetworkPod("host-b", b))
		ipA := f.nodeIP(a)
		url := "http://" + net.JoinHostPort(ipA, strconv.Itoa(hostPort))

		var seen string
		f.eventually("the hostPort answering from outside", datapathTimeout, func(context.Context) error {
			got, err := f.fromOutside(url + "/clientip")
			seen = got
			return err
		})
		if host, _, err := net.SplitHostPort(seen); err != nil || host == ipA || host == f.nodeIP(b) {
			t.Errorf("the hostPort's pod saw the outside client as %q, want the client's own address", seen)
		}
		for _, client := range []string{"client-a", "client-b", "host-a", "host-b"} {
			f.eventually(client+" reaching the hostPort", datapathTimeout, func(context.Context) error {
				got, err := f.exec(client, "curl", "-s", "--max-time", "3", url+"/hostname")
				if err == nil && strings.TrimSpace(got) != "web-a" {
					err = fmt.Errorf("answered %q", got)
				}
				return err
			})
		}
	})
}
