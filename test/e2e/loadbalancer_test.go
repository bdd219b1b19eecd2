//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// curlTimedOut is curl's exit code when --max-time ran out: what a client
// whose packets are dropped sees.
const curlTimedOut = 28

// loadBalancerService creates a LoadBalancer Service on port, restricted
// to ranges, and gives it ingress IP lbIP as a bare-metal load balancer
// (MetalLB, servicelb) would. It returns the Service's TCP node port.
func (f *testNS) loadBalancerService(name string, selector map[string]string, port int32, lbIP string, ranges []string) int {
	f.t.Helper()
	svc := service(name, selector)
	svc.Spec.Type = v1.ServiceTypeLoadBalancer
	svc.Spec.Ports = svc.Spec.Ports[:1]
	svc.Spec.Ports[0].Port = port
	svc.Spec.LoadBalancerSourceRanges = ranges
	f.createService(svc, 1)
	got, err := f.client.CoreV1().Services(f.name).Get(f.t.Context(), name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	got.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: lbIP}}
	if _, err := f.client.CoreV1().Services(f.name).UpdateStatus(f.t.Context(), got, metav1.UpdateOptions{}); err != nil {
		f.t.Fatalf("set the load balancer IP of %s: %v", name, err)
	}
	return int(got.Spec.Ports[0].NodePort)
}

// TestLoadBalancerSourceRanges: a LoadBalancer IP answers clients inside
// its loadBalancerSourceRanges and refuses the rest: from outside the
// nodes (dropped, as kube-proxy drops), and from pods (refused at connect
// on socket LB, dropped on the tc path); its NodePort is not restricted,
// as under kube-proxy; widening the ranges lets the refused clients in.
// The load balancer IP is node A's own address, as servicelb gives out.
func TestLoadBalancerSourceRanges(t *testing.T) {
	t.Parallel()
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		a, b := f.nodes[0], f.nodes[1]
		web := map[string]string{"app": "web"}
		tc := netexecPod("client-tc", a, nil)
		tc.Annotations = map[string]string{socketLBAnnotation: "disabled"}
		f.runPods(netexecPod("web-b", b, web), netexecPod("client", a, nil), tc)
		lbIP := f.nodeIP(a)
		// The node network holds the outside client: a /16 of a node's
		// address covers it here and on kind.
		underlay := netip.PrefixFrom(netip.MustParseAddr(lbIP), 16).Masked().String()
		const openPort, closedPort = 8481, 8482
		f.loadBalancerService("open", web, openPort, lbIP, []string{underlay})
		elsewhere := "203.0.113.0/24" // documentation ranges: nobody here
		if f.family == v1.IPv6Protocol {
			elsewhere = "2001:db8::/32"
		}
		closedNodePort := f.loadBalancerService("closed", web, closedPort, lbIP, []string{elsewhere})
		url := func(port int) string { return "http://" + net.JoinHostPort(lbIP, strconv.Itoa(port)) + "/hostname" }

		f.eventually("the open LoadBalancer IP answering from outside", datapathTimeout, func(context.Context) error {
			got, err := f.fromOutside(url(openPort))
			if err == nil && got != "web-b" {
				err = fmt.Errorf("answered %q", got)
			}
			return err
		})
		// The closed one: dropped from outside (a timeout: kube-proxy drops
		// too). Until node A has its load balancer IP the node itself refuses
		// (nothing listens there), so wait for the drop; an answer would mean
		// the ranges are ignored.
		f.eventually("the closed LoadBalancer IP dropping the outside client", datapathTimeout, func(context.Context) error {
			got, err := f.fromOutside(url(closedPort))
			if code := exitCode(err); code != curlTimedOut {
				return fmt.Errorf("%q, curl exit %d; want dropped (curl exit %d)", got, code, curlTimedOut)
			}
			return nil
		})
		if got, err := f.fromOutside(url(closedNodePort)); err != nil || got != "web-b" {
			t.Errorf("outside -> the closed Service's NodePort: %q, %v; want answered (kube-proxy does not restrict NodePorts)", got, err)
		}
		// Node A has programmed the IP now: the pods on it are judged.
		start := time.Now()
		got, err := f.curlFrom("client", nextSourcePort(), 3*time.Second, url(closedPort))
		if exitCode(err) != curlCouldntConnect {
			t.Errorf("pod on socket LB -> closed LoadBalancer IP: %q, %v after %v; want refused at connect (EPERM, curl exit %d)",
				got, err, time.Since(start), curlCouldntConnect)
		}
		if got, err := f.curlFrom("client-tc", nextSourcePort(), 3*time.Second, url(closedPort)); exitCode(err) != curlTimedOut {
			t.Errorf("pod on the tc path -> closed LoadBalancer IP: %q, %v; want dropped (curl exit %d)", got, err, curlTimedOut)
		}

		// Widen the ranges to the outside client and the two pods.
		svc, err := f.client.CoreV1().Services(f.name).Get(t.Context(), "closed", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, pod := range []string{"client", "client-tc"} {
			p, err := f.client.CoreV1().Pods(f.name).Get(t.Context(), pod, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			svc.Spec.LoadBalancerSourceRanges = append(svc.Spec.LoadBalancerSourceRanges, hostPrefix(f.podIP(p)))
		}
		svc.Spec.LoadBalancerSourceRanges = append(svc.Spec.LoadBalancerSourceRanges, underlay)
		if _, err := f.client.CoreV1().Services(f.name).Update(t.Context(), svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, from := range []string{"outside", "client", "client-tc"} {
			f.eventually(from+" answered by the widened LoadBalancer IP", datapathTimeout, func(context.Context) error {
				var got string
				var err error
				if from == "outside" {
					got, err = f.fromOutside(url(closedPort))
				} else {
					got, err = f.curlFrom(from, nextSourcePort(), 3*time.Second, url(closedPort))
				}
				if err == nil && strings.TrimSpace(got) != "web-b" {
					err = fmt.Errorf("answered %q", got)
				}
				return err
			})
		}
	})
}

// TestUnservedFrontendPortsDropped: an ExternalIP that is none of the
// nodes' addresses serves its Service's port to the outside client, and a
// packet to any other port of it is dropped at the node the client sent it
// to (counted as no_frontend_port) instead of being routed on by that
// node's stack. The outside host routes the address via node A, as a
// router in front of the cluster would.
func TestUnservedFrontendPortsDropped(t *testing.T) {
	t.Parallel()
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		a, b := f.nodes[0], f.nodes[1]
		web := map[string]string{"app": "web"}
		f.runPods(netexecPod("web-b", b, web))
		extIP, hostLen := "198.51.100.77", "/32" // documentation range: no one else's
		if f.family == v1.IPv6Protocol {
			extIP, hostLen = "2001:db8:77::77", "/128"
		}
		if _, err := f.driverRun(execTimeout, "outside", "--", "ip", "route", "replace", extIP+hostLen, "via", f.nodeIP(a)); err != nil {
			t.Skipf("skipped: cannot route %s via %s on the outside host: %v", extIP, a, err)
		}
		t.Cleanup(func() { _, _ = f.driverRun(execTimeout, "outside", "--", "ip", "route", "del", extIP+hostLen) })
		const servedPort, unservedPort = 8493, 8494
		svc := service("ext", web)
		svc.Spec.Ports = svc.Spec.Ports[:1]
		svc.Spec.Ports[0].Port = servedPort
		svc.Spec.ExternalIPs = []string{extIP}
		f.createService(svc, 1)
		url := func(port int) string { return "http://" + net.JoinHostPort(extIP, strconv.Itoa(port)) + "/hostname" }

		f.eventually("the ExternalIP answering from outside", datapathTimeout, func(context.Context) error {
			got, err := f.fromOutside(url(servedPort))
			if err == nil && got != "web-b" {
				err = fmt.Errorf("answered %q", got)
			}
			return err
		})
		before := f.drops(a, "no_frontend_port")
		if got, err := f.fromOutside(url(unservedPort)); exitCode(err) != curlTimedOut {
			t.Errorf("outside -> the ExternalIP's unserved port %d: %q, %v; want dropped (curl exit %d)", unservedPort, got, err, curlTimedOut)
		}
		if n := f.drops(a, "no_frontend_port") - before; n == 0 {
			t.Errorf("node %s counted no no_frontend_port drop for the unserved port", a)
		}
	})
}

// drops sums node's sluice_drops_total for reason over every direction.
func (f *testNS) drops(node, reason string) int {
	f.t.Helper()
	sum := 0.0
	re := regexp.MustCompile(`(?m)^sluice_drops_total\{[^}]*reason="` + reason + `"[^}]*\} (\S+)`)
	for _, m := range re.FindAllStringSubmatch(f.agentMetrics(node), -1) {
		n, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			f.t.Fatalf("sluice_drops_total on %s: %v", node, err)
		}
		sum += n
	}
	return int(sum)
}
