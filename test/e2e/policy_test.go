//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// policyTimeout bounds how long a policy change may take to reach every
// node's datapath.
const policyTimeout = 20 * time.Second

// connects reports whether client can open a TCP connection to addr.
func (f *testNS) connects(client, addr string) error {
	_, err := f.exec(client, "/agnhost", "connect", addr, "--timeout=2s", "--protocol=tcp")
	return err
}

// expectReach waits until client's connections to addr succeed (want
// true) or fail (want false).
func (f *testNS) expectReach(client, addr string, want bool) {
	f.t.Helper()
	what := fmt.Sprintf("%s to reach %s: %v", client, addr, want)
	f.eventually(what, policyTimeout, func(context.Context) error {
		err := f.connects(client, addr)
		if want && err != nil {
			return err
		}
		if !want && err == nil {
			return fmt.Errorf("connected")
		}
		return nil
	})
}

func (f *testNS) applyPolicy(p *networkingv1.NetworkPolicy) {
	f.t.Helper()
	p.Namespace = f.name
	if _, err := f.client.NetworkingV1().NetworkPolicies(f.name).Create(f.t.Context(), p, metav1.CreateOptions{}); err != nil {
		f.t.Fatalf("create NetworkPolicy %s: %v", p.Name, err)
	}
}

// TestNetworkPolicy: default deny, then an allow by pod label on one port,
// across nodes, directly and through a Service; a relabelled pod gains
// access; deleting the policies restores it all.
func TestNetworkPolicy(t *testing.T) {
	t.Parallel()
	f := newTestNS(t)
	a, b := f.nodes[0], f.nodes[1]
	ips := f.runPods(
		netexecPod("server", a, map[string]string{"app": "server"}),
		netexecPod("allowed", b, map[string]string{"role": "allowed"}),
		netexecPod("other", b, map[string]string{"role": "other"}),
		netexecPod("neighbour", a, map[string]string{"role": "other"}))
	server := net.JoinHostPort(ips[0], strconv.Itoa(podHTTPPort))
	vip := f.createService(service("server", map[string]string{"app": "server"}), 1)
	viaService := net.JoinHostPort(vip, strconv.Itoa(svcHTTPPort))
	clients := []string{"allowed", "other", "neighbour"}
	for _, c := range clients {
		f.expectReach(c, server, true)
	}

	f.applyPolicy(&networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "default-deny"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	})
	for _, c := range clients {
		f.expectReach(c, server, false)
	}
	// The node's own traffic (kubelet probes) still reaches it.
	f.eventually("server Ready under default deny", policyTimeout, func(ctx context.Context) error {
		p, err := f.client.CoreV1().Pods(f.name).Get(ctx, "server", metav1.GetOptions{})
		if err != nil || !podReady(p) {
			return fmt.Errorf("not ready: %v", err)
		}
		return nil
	})

	port := intstr.FromInt32(podHTTPPort)
	f.applyPolicy(&networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-role-allowed"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "allowed"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &port}},
			}},
		},
	})
	f.expectReach("allowed", server, true)
	f.expectReach("allowed", viaService, true)
	f.expectReach("other", server, false)
	f.expectReach("other", viaService, false)
	f.expectReach("neighbour", server, false)
	// Another port of the same pod stays closed to the allowed client.
	f.expectReach("allowed", net.JoinHostPort(ips[0], "8082"), false)
	// The isolated server still reaches itself through its Service
	// (hairpin), and a Service without endpoints still refuses at once
	// rather than its reset being dropped by the isolated client's policy.
	f.expectReach("server", viaService, true)
	empty := net.JoinHostPort(f.createService(service("empty", map[string]string{"app": "nothing"}), 0), strconv.Itoa(svcHTTPPort))
	refused := func() error {
		_, err := f.exec("server", "/agnhost", "connect", empty, "--timeout=3s", "--protocol=tcp")
		if err == nil || !strings.Contains(err.Error(), "REFUSED") {
			return fmt.Errorf("got %v, want REFUSED", err)
		}
		return nil
	}
	f.eventually("the isolated server refused by a Service without endpoints", policyTimeout, func(context.Context) error { return refused() })
	start := time.Now()
	if err := refused(); err != nil || time.Since(start) > 2500*time.Millisecond {
		t.Errorf("isolated pod to a Service without endpoints: %v after %v, want REFUSED at once", err, time.Since(start))
	}

	other, err := f.client.CoreV1().Pods(f.name).Get(t.Context(), "other", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other.Labels["role"] = "allowed"
	if _, err := f.client.CoreV1().Pods(f.name).Update(t.Context(), other, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.expectReach("other", server, true)

	if err := f.client.NetworkingV1().NetworkPolicies(f.name).DeleteCollection(t.Context(), metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	f.expectReach("neighbour", server, true)
}

// TestNetworkPolicyEgress: an egress default deny with one allowed
// destination; replies to allowed inbound connections still flow.
func TestNetworkPolicyEgress(t *testing.T) {
	t.Parallel()
	f := newTestNS(t)
	a, b := f.nodes[0], f.nodes[1]
	ips := f.runPods(
		netexecPod("client", a, map[string]string{"app": "client"}),
		netexecPod("db", b, map[string]string{"app": "db"}),
		netexecPod("web", b, map[string]string{"app": "web"}))
	db := net.JoinHostPort(ips[1], strconv.Itoa(podHTTPPort))
	web := net.JoinHostPort(ips[2], strconv.Itoa(podHTTPPort))
	client := net.JoinHostPort(ips[0], strconv.Itoa(podHTTPPort))
	f.expectReach("client", web, true)

	f.applyPolicy(&networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "client-egress"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}}},
			}},
		},
	})
	f.expectReach("client", web, false)
	f.expectReach("client", db, true)
	// Inbound connections to the client are not isolated, and their
	// replies leave through its isolated egress.
	f.expectReach("web", client, true)
}
