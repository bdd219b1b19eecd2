//go:build e2e

package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
)

// fromOutside runs curl on a host of the node network outside every node.
func (f *testNS) fromOutside(url string) (string, error) {
	out, err := f.driverRun(execTimeout, "outside", "--", "curl", "-s", "--max-time", "3", url)
	return strings.TrimSpace(out), err
}

// clientSeenThrough asks /clientip at url from outside until the backend
// on node answers, and returns the host it saw the client as.
func (f *testNS) clientSeenThrough(url, node string) string {
	f.t.Helper()
	var seen string
	f.eventually("the backend on "+node+" answering through "+url, datapathTimeout, func(context.Context) error {
		got, err := f.fromOutside(url)
		seen = got
		return err
	})
	return seen
}

// keptAcrossAgentRestart streams requests from outside to url over one
// kept-alive connection while node's agent restarts; the stream must not
// break. label names the case in failures, summary the stream in the
// run's summary of streams.
func (f *testNS) keptAcrossAgentRestart(node, url, label, summary string) {
	f.t.Helper()
	s := f.startStream("", url, 12, true)
	s.waitAnswered(5)
	f.restartAgent(node)
	s.requireRunning("an agent restart on " + node)
	s.finish(label, summary)
}

// nodeIP is the node's InternalIP of the test's family.
func (f *testNS) nodeIP(node string) string {
	f.t.Helper()
	n, err := f.client.CoreV1().Nodes().Get(f.t.Context(), node, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	var internal []string
	for _, a := range n.Status.Addresses {
		if a.Type == v1.NodeInternalIP {
			internal = append(internal, a.Address)
		}
	}
	ip := f.ofFamily(internal...)
	if ip == "" {
		f.t.Fatalf("node %s has no %s InternalIP: %v", node, f.family, internal)
	}
	return ip
}

// nodePortService creates a NodePort Service and returns its node port.
func (f *testNS) nodePortService(name string, selector map[string]string, policy v1.ServiceExternalTrafficPolicy, endpoints int) int {
	f.t.Helper()
	svc := service(name, selector)
	svc.Spec.Type = v1.ServiceTypeNodePort
	svc.Spec.ExternalTrafficPolicy = policy
	f.createService(svc, endpoints)
	return f.nodePortOf(name, v1.ProtocolTCP)
}

// nodePortOf returns the node port the Service got for proto.
func (f *testNS) nodePortOf(name string, proto v1.Protocol) int {
	f.t.Helper()
	got, err := f.client.CoreV1().Services(f.name).Get(f.t.Context(), name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	for _, p := range got.Spec.Ports {
		if p.Protocol == proto {
			return int(p.NodePort)
		}
	}
	f.t.Fatalf("service %s has no %s node port", name, proto)
	return 0
}

// TestNodePortFromOutside: a client outside the nodes reaches a NodePort on
// every node; with externalTrafficPolicy Cluster any backend answers (those
// on other nodes through masquerade), with Local only the node's own
// backends answer, and they see the client's real address.
func TestNodePortFromOutside(t *testing.T) {
	t.Parallel()
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		a, b := f.nodes[0], f.nodes[1]
		f.runPods(
			netexecPod("cluster-a", a, map[string]string{"app": "cluster"}),
			netexecPod("cluster-b", b, map[string]string{"app": "cluster"}),
			netexecPod("local-b", b, map[string]string{"app": "local"}))
		clusterPort := f.nodePortService("cluster", map[string]string{"app": "cluster"}, v1.ServiceExternalTrafficPolicyCluster, 2)
		localPort := f.nodePortService("local", map[string]string{"app": "local"}, v1.ServiceExternalTrafficPolicyLocal, 1)
		ipA, ipB := f.nodeIP(a), f.nodeIP(b)
		url := func(ip string, port int, path string) string {
			return "http://" + net.JoinHostPort(ip, strconv.Itoa(port)) + path
		}

		for _, ip := range []string{ipA, ipB} {
			answers := sets.New[string]()
			f.eventually(fmt.Sprintf("both backends answering on %s:%d", ip, clusterPort), policyTimeout, func(context.Context) error {
				got, err := f.fromOutside(url(ip, clusterPort, "/hostname"))
				if err != nil {
					return err
				}
				answers.Insert(got)
				if !answers.HasAll("cluster-a", "cluster-b") {
					return fmt.Errorf("answered by %v so far", sets.List(answers))
				}
				return nil
			})
		}

		// Local: the node with the backend answers and the backend sees the
		// client's own address; the node without one refuses.
		var clientIP string
		f.eventually("Local NodePort answering on "+ipB, policyTimeout, func(context.Context) error {
			got, err := f.fromOutside(url(ipB, localPort, "/clientip"))
			clientIP = got
			return err
		})
		if host, _, err := net.SplitHostPort(clientIP); err != nil || host == ipA || host == ipB {
			t.Errorf("Local NodePort backend saw the client as %q, want the outside client's own address", clientIP)
		}
		// A refusal (a reset, curl's exit 7), at once: a timeout (exit 28) is
		// what a drop would look like, and a client would wait out every one.
		start := time.Now()
		got, err := f.fromOutside(url(ipA, localPort, "/hostname"))
		if code := exitCode(err); code != curlCouldntConnect {
			t.Errorf("Local NodePort on %s (no local backend): %q, %v after %v; want a refusal (curl exit %d), not an answer or a timeout",
				ipA, got, err, time.Since(start), curlCouldntConnect)
		}
	})
}

// curlCouldntConnect is curl's exit code when the connection is refused
// (a reset or an ICMP error); a timeout (--max-time) is 28.
const curlCouldntConnect = 7

// exitCode is the exit code of a failed driver run (curl's, or the
// driver's own), 0 for no error and -1 for an error that is not an exit
// code.
func exitCode(err error) int {
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.ExitCode()
	}
	return -1
}

// TestNodePortFromInside: a NodePort answers on every node's address from
// inside the cluster too, as under kube-proxy: from a pod on socket LB, a
// pod on the tc path and a hostNetwork pod (the node's own sockets), to
// the client's own node and to the other.
func TestNodePortFromInside(t *testing.T) {
	t.Parallel()
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		a, b := f.nodes[0], f.nodes[1]
		tc := netexecPod("client-tc", a, nil)
		tc.Annotations = map[string]string{socketLBAnnotation: "disabled"}
		f.runPods(netexecPod("web-b", b, map[string]string{"app": "web"}), netexecPod("client", a, nil), tc,
			hostNetworkPod("host-client", a))
		port := f.nodePortService("web", map[string]string{"app": "web"}, v1.ServiceExternalTrafficPolicyCluster, 1)
		for _, ip := range []string{f.nodeIP(a), f.nodeIP(b)} {
			url := "http://" + net.JoinHostPort(ip, strconv.Itoa(port)) + "/hostname"
			for _, client := range []string{"client", "client-tc", "host-client"} {
				f.eventually(fmt.Sprintf("%s reaching NodePort %s", client, url), datapathTimeout, func(context.Context) error {
					got, err := f.exec(client, "curl", "-s", "--max-time", "3", url)
					if err == nil && strings.TrimSpace(got) != "web-b" {
						err = fmt.Errorf("answered %q", got)
					}
					return err
				})
			}
		}
	})
}

// udpEchoFromOutside sends netexec's "echo" of size bytes to host:port from
// the outside host, in one datagram, and returns the reply's length and
// its source as the client saw it. python3 on the node network's outside
// host sends it; the test skips where there is none.
const udpEchoClient = `import socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"echo " + b"x" * size, (host, port))
data, src = s.recvfrom(65535)
print(len(data), src[0], src[1])`

// TestLargeUDPThroughNodePort: a UDP request and reply larger than the
// MTU (fragmented on the way in and on the way back) pass a NodePort from
// outside, to a backend on the node and on another node, and the reply
// comes from the NodePort the client sent to.
func TestLargeUDPThroughNodePort(t *testing.T) {
	t.Parallel()
	f := newTestNS(t)
	a, b := f.nodes[0], f.nodes[1]
	if _, err := f.driverRun(execTimeout, "outside", "--", "python3", "-c", "pass"); err != nil {
		t.Skipf("no python3 on the outside host: %v", err)
	}
	f.runPods(netexecPod("local-a", a, map[string]string{"app": "local"}), netexecPod("remote-b", b, map[string]string{"app": "remote"}))
	f.nodePortService("local", map[string]string{"app": "local"}, v1.ServiceExternalTrafficPolicyLocal, 1)
	f.nodePortService("remote", map[string]string{"app": "remote"}, v1.ServiceExternalTrafficPolicyCluster, 1)
	ipA := f.nodeIP(a)
	const size = 2000 // netexec reads up to 2048 bytes; the MTU is 1500
	for _, svc := range []string{"local", "remote"} {
		port := f.nodePortOf(svc, v1.ProtocolUDP)
		f.eventually(fmt.Sprintf("a %d-byte UDP echo through NodePort %s:%d (%s backend)", size, ipA, port, svc), datapathTimeout,
			func(context.Context) error {
				out, err := f.driverRun(execTimeout, "outside", "--", "python3", "-c", udpEchoClient, ipA, strconv.Itoa(port), strconv.Itoa(size))
				if err != nil {
					return err
				}
				want := fmt.Sprintf("%d %s %d", size, ipA, port)
				if got := strings.TrimSpace(out); got != want {
					return fmt.Errorf("reply %q, want %q (length, source address and port)", got, want)
				}
				return nil
			})
	}
}
