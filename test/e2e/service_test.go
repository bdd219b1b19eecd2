//go:build e2e

package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
)

// TestClusterIPFromEveryNode: from a client on every node, TCP and UDP
// through the ClusterIP reach the backends, and new connections spread
// over both of them.
func TestClusterIPFromEveryNode(t *testing.T) {
	t.Parallel()
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		labels := map[string]string{"app": "backend"}
		backends := []string{"backend-0", "backend-1"}
		pods := []*v1.Pod{netexecPod(backends[0], f.nodes[0], labels), netexecPod(backends[1], f.nodes[1], labels)}
		var clients []string
		for i, node := range f.nodes {
			clients = append(clients, "client-"+strconv.Itoa(i))
			pods = append(pods, netexecPod(clients[i], node, nil))
		}
		f.runPods(pods...)
		vip := f.createService(service("backend", labels), len(backends))

		// Maglev picks by 5-tuple and every dial has a new source port: 20
		// dials all missing one of two backends has odds of 2^-19.
		const dials = 20
		for i, client := range clients {
			for _, svc := range svcPorts {
				from := fmt.Sprintf("%s on %s, %s to %s:%d", client, f.nodes[i], svc.proto, vip, svc.port)
				hits := map[string]int{f.dialEventually(client, svc.proto, vip, svc.port): 1}
				for range dials - 1 {
					got, err := f.dialFrom(client, svc.proto, vip, svc.port)
					if err != nil {
						t.Errorf("%s: %v", from, err)
						continue
					}
					hits[got]++
				}
				for name := range hits {
					if !slices.Contains(backends, name) {
						t.Errorf("%s: answered by %q, not a backend", from, name)
					}
				}
				for _, b := range backends {
					if hits[b] == 0 {
						t.Errorf("%s: %s never answered in %d dials: %v", from, b, dials, hits)
					}
				}
			}
		}
	})
}

// TestSessionAffinity: with ClientIP affinity every connection from one
// client goes to the backend its first one went to.
func TestSessionAffinity(t *testing.T) {
	t.Parallel()
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		labels := map[string]string{"app": "sticky"}
		var pods []*v1.Pod
		for i := range 3 {
			pods = append(pods, netexecPod("backend-"+strconv.Itoa(i), f.nodes[i%len(f.nodes)], labels))
		}
		pods = append(pods, netexecPod("client", f.nodes[0], nil))
		f.runPods(pods...)
		svc := service("sticky", labels)
		svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		vip := f.createService(svc, 3)

		first := f.dialEventually("client", "http", vip, svcHTTPPort)
		answers := sets.New(first)
		for range 10 {
			got, err := f.dialFrom("client", "http", vip, svcHTTPPort)
			if err != nil {
				t.Errorf("dial %s:%d: %v", vip, svcHTTPPort, err)
				continue
			}
			answers.Insert(got)
		}
		if answers.Len() != 1 {
			t.Errorf("dials to %s:%d were answered by %v, want only %s, the first answer", vip, svcHTTPPort, sets.List(answers), first)
		}
	})
}

// TestServiceWithoutEndpointsRejects: a connect to a Service without
// endpoints is refused at once instead of timing out.
func TestServiceWithoutEndpointsRejects(t *testing.T) {
	t.Parallel()
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		f.runPods(netexecPod("client", f.nodes[0], nil))
		vip := f.createService(service("nobody", map[string]string{"app": "nobody"}), 0)
		target := net.JoinHostPort(vip, strconv.Itoa(svcHTTPPort))

		const connectTimeout = 3 * time.Second
		connect := func() (time.Duration, error) {
			start := time.Now()
			_, err := f.exec("client", "/agnhost", "connect", target, "--timeout="+connectTimeout.String(), "--protocol=tcp")
			return time.Since(start), err
		}
		refused := func(err error) bool { return err != nil && strings.Contains(err.Error(), "REFUSED") }
		// Until the agent knows the Service the connect times out.
		f.eventually("connect to "+target+" refused", datapathTimeout, func(context.Context) error {
			_, err := connect()
			if err == nil {
				return errors.New("connect succeeded")
			}
			if !refused(err) {
				return err
			}
			return nil
		})

		took, err := connect()
		if !refused(err) {
			t.Fatalf("connect to %s: %v, want REFUSED", target, err)
		}
		// The time includes the driver's round trip; a refusal comes long
		// before agnhost's own timeout.
		if took >= connectTimeout {
			t.Errorf("refusal took %v, want under %v", took, connectTimeout)
		}
	})
}

// TestHairpin: a backend that dials its own Service over TCP and UDP gets
// its own answer back.
func TestHairpin(t *testing.T) {
	t.Parallel()
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		labels := map[string]string{"app": "hairpin"}
		f.runPods(netexecPod("backend", f.nodes[0], labels))
		vip := f.createService(service("hairpin", labels), 1)

		for _, svc := range svcPorts {
			if got := f.dialEventually("backend", svc.proto, vip, svc.port); got != "backend" {
				t.Errorf("%s to %s:%d answered by %q", svc.proto, vip, svc.port, got)
			}
		}
	})
}

// TestHostNetworkToClusterIP: a hostNetwork pod (like the kubelet or a node
// agent) reaches a ClusterIP whose backends run on its own and on another
// node; its packets never cross a pod veth, so socket-level load balancing
// serves it.
func TestHostNetworkToClusterIP(t *testing.T) {
	t.Parallel()
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		labels := map[string]string{"app": "hostnet-backend"}
		f.runPods(netexecPod("backend-0", f.nodes[0], labels), netexecPod("backend-1", f.nodes[1], labels),
			hostNetworkPod("host-client", f.nodes[0]))
		vip := f.createService(service("hostnet", labels), 2)
		url := "http://" + net.JoinHostPort(vip, strconv.Itoa(svcHTTPPort)) + "/hostname"
		answers := sets.New[string]()
		f.eventually("both backends answering the hostNetwork pod", readyTimeout, func(context.Context) error {
			out, err := f.exec("host-client", "curl", "-s", "--max-time", "3", url)
			if err != nil {
				return err
			}
			answers.Insert(strings.TrimSpace(out))
			if !answers.HasAll("backend-0", "backend-1") {
				return fmt.Errorf("answered by %v so far", sets.List(answers))
			}
			return nil
		})
	})
}
