//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// deletePolicies deletes every NetworkPolicy of the namespace.
func (f *testNS) deletePolicies() {
	f.t.Helper()
	if err := f.client.NetworkingV1().NetworkPolicies(f.name).DeleteCollection(f.t.Context(), metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		f.t.Fatalf("delete NetworkPolicies: %v", err)
	}
}

// TestPolicyICMPDenyAll: ICMP echo is judged like any protocol. Under an
// ingress deny-all a pod answers no ping; under an egress deny-all a pod's
// pings reach neither a pod nor another node. Replies to a pod's own
// pings (ingress deny-all) and its replies to others' (egress deny-all)
// still pass, and without the policies every ping is answered again.
func TestPolicyICMPDenyAll(t *testing.T) {
	t.Parallel()
	f := newTestNS(t)
	a, b := f.nodes[0], f.nodes[1]
	role := func(r string) map[string]string { return map[string]string{"role": r} }
	ips := f.runPods(
		netexecPod("target", a, role("target")), // ingress deny-all
		netexecPod("sender", a, role("sender")), // egress deny-all
		netexecPod("client", b, role("client")),
		netexecPod("peer", b, role("peer")))
	target, sender, client, peer := ips[0], ips[1], ips[2], ips[3]
	nodeB := f.nodeIP(b)
	type ping struct {
		from, to, what string
		denied         bool
	}
	pings := []ping{
		{"client", target, "into a pod under ingress deny-all", true},
		{"sender", peer, "from a pod under egress deny-all to a pod", true},
		{"sender", nodeB, "from a pod under egress deny-all to another node", true},
		{"target", client, "from a pod under ingress deny-all (the replies come in)", false},
		{"peer", sender, "to a pod under egress deny-all (its replies go out)", false},
	}
	// The control: without policies every ping is answered.
	for _, p := range pings {
		f.eventually(fmt.Sprintf("ping %s from %s to %s answered", p.what, p.from, p.to), datapathTimeout,
			func(context.Context) error { return f.ping(p.from, p.to) })
	}

	f.applyPolicy(&networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "target-deny-ingress"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: role("target")},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	})
	f.applyPolicy(&networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "sender-deny-egress"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: role("sender")},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		},
	})
	// Once TCP between the same pods is dropped, both policies are in the
	// datapath: from then on ICMP must be dropped too, at once.
	port := strconv.Itoa(podHTTPPort)
	f.expectPolicyDrop("client", net.JoinHostPort(target, port))
	f.expectPolicyDrop("sender", net.JoinHostPort(peer, port))
	for _, p := range pings {
		for range 3 {
			err := f.ping(p.from, p.to)
			switch {
			case p.denied && err == nil:
				t.Errorf("ping %s (%s to %s): answered, want dropped", p.what, p.from, p.to)
			case !p.denied && err != nil:
				t.Errorf("ping %s (%s to %s): %v, want answered", p.what, p.from, p.to, err)
			}
		}
	}

	f.deletePolicies()
	for _, p := range pings {
		f.eventually(fmt.Sprintf("ping %s from %s to %s answered without policies", p.what, p.from, p.to), policyTimeout,
			func(context.Context) error { return f.ping(p.from, p.to) })
	}
}
