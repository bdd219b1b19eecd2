//go:build e2e

package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// policyTimeout bounds how long a policy change may take to reach every
// node's datapath.
const policyTimeout = 20 * time.Second

// podOtherPort is a second TCP port the policy tests' server listens on
// (a second netexec), so that a port a policy leaves closed is closed by
// the policy, not by the absence of a listener.
const podOtherPort = 8082

// policyServerPod is a netexec pod that also listens on podOtherPort.
func policyServerPod(name, node string, labels map[string]string) *v1.Pod {
	p := netexecPod(name, node, labels)
	p.Spec.Containers = append(p.Spec.Containers, v1.Container{
		Name:  "other-port",
		Image: agnhostImage,
		Args:  []string{"netexec", "--http-port=" + strconv.Itoa(podOtherPort), "--udp-port=" + strconv.Itoa(podOtherPort+1)},
		Ports: []v1.ContainerPort{{Name: "other", ContainerPort: podOtherPort, Protocol: v1.ProtocolTCP}},
	})
	return p
}

// connects reports whether client can open a TCP connection to addr. The
// error carries agnhost's verdict: TIMEOUT (no answer at all) or REFUSED (a
// reset or an ICMP error).
func (f *testNS) connects(client, addr string) error {
	_, err := f.exec(client, "/agnhost", "connect", addr, "--timeout=2s", "--protocol=tcp")
	return err
}

// expectReach waits until client's connections to addr succeed.
func (f *testNS) expectReach(client, addr string) {
	f.t.Helper()
	f.eventually(fmt.Sprintf("%s to reach %s", client, addr), policyTimeout, func(context.Context) error {
		return f.connects(client, addr)
	})
}

// expectPolicyDrop waits until client's connections to addr time out: a
// NetworkPolicy drops the SYN without a reply, so the client sees a
// timeout, never a refusal (a refusal would come from a port nothing
// listens on, or a Service without endpoints, not from the policy).
func (f *testNS) expectPolicyDrop(client, addr string) {
	f.t.Helper()
	f.eventually(fmt.Sprintf("%s to %s dropped by policy (TIMEOUT)", client, addr), policyTimeout, func(context.Context) error {
		err := f.connects(client, addr)
		if err == nil {
			return errors.New("connected")
		}
		if !strings.Contains(err.Error(), "TIMEOUT") {
			return fmt.Errorf("got %v, want TIMEOUT (a policy drop sends no reset)", err)
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
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		a, b := f.nodes[0], f.nodes[1]
		ips := f.runPods(
			policyServerPod("server", a, map[string]string{"app": "server"}),
			netexecPod("allowed", b, map[string]string{"role": "allowed"}),
			netexecPod("other", b, map[string]string{"role": "other"}),
			netexecPod("neighbour", a, map[string]string{"role": "other"}))
		server := net.JoinHostPort(ips[0], strconv.Itoa(podHTTPPort))
		vip := f.createService(service("server", map[string]string{"app": "server"}), 1)
		viaService := net.JoinHostPort(vip, strconv.Itoa(svcHTTPPort))
		otherPort := net.JoinHostPort(ips[0], strconv.Itoa(podOtherPort))
		clients := []string{"allowed", "other", "neighbour"}
		for _, c := range clients {
			f.expectReach(c, server)
		}
		// The port the allow below leaves closed is open until then.
		f.expectReach("allowed", otherPort)

		f.applyPolicy(&networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "default-deny"},
			Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
		})
		for _, c := range clients {
			f.expectPolicyDrop(c, server)
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
		f.expectReach("allowed", server)
		f.expectReach("allowed", viaService)
		f.expectPolicyDrop("other", server)
		f.expectPolicyDrop("other", viaService)
		f.expectPolicyDrop("neighbour", server)
		// Another port of the same pod, with a listener, stays closed to the
		// allowed client.
		f.expectPolicyDrop("allowed", otherPort)
		// The isolated server still reaches itself through its Service
		// (hairpin), and a Service without endpoints still refuses at once
		// rather than its reset being dropped by the isolated client's policy.
		f.expectReach("server", viaService)
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
		f.expectReach("other", server)

		if err := f.client.NetworkingV1().NetworkPolicies(f.name).DeleteCollection(t.Context(), metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
		f.expectReach("neighbour", server)
	})
}

// TestNetworkPolicyEgress: an egress default deny with one allowed
// destination; replies to allowed inbound connections still flow.
func TestNetworkPolicyEgress(t *testing.T) {
	t.Parallel()
	inBothFamilies(t, func(t *testing.T, f *testNS) {
		a, b := f.nodes[0], f.nodes[1]
		ips := f.runPods(
			netexecPod("client", a, map[string]string{"app": "client"}),
			netexecPod("db", b, map[string]string{"app": "db"}),
			netexecPod("web", b, map[string]string{"app": "web"}))
		db := net.JoinHostPort(ips[1], strconv.Itoa(podHTTPPort))
		web := net.JoinHostPort(ips[2], strconv.Itoa(podHTTPPort))
		client := net.JoinHostPort(ips[0], strconv.Itoa(podHTTPPort))
		f.expectReach("client", web)

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
		f.expectPolicyDrop("client", web)
		f.expectReach("client", db)
		// Inbound connections to the client are not isolated, and their
		// replies leave through its isolated egress.
		f.expectReach("web", client)
	})
}
