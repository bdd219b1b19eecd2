package compile

import (
	"fmt"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// benchInput is a 100-node cluster of 100 namespaces x 100 pods with 10
// policies per namespace, compiled for node-0, which runs perNS pods of
// each namespace, of varied apps.
func benchInput(perNS int) Input {
	in := Input{NodeName: "node-0", HostAddrs: []netip.Addr{netip.MustParseAddr("192.168.255.1")}}
	for n := range 100 {
		ns := fmt.Sprintf("ns-%d", n)
		env := "prod"
		if n%2 == 1 {
			env = "dev"
		}
		in.Namespaces = append(in.Namespaces, namespaceObj(ns, map[string]string{
			"kubernetes.io/metadata.name": ns, "team": fmt.Sprintf("team-%d", n%10), "env": env,
		}))
		for i := range 100 {
			app := fmt.Sprintf("app-%d", i%10)
			lbls := map[string]string{"app": app, "tier": []string{"frontend", "backend"}[i%2], "version": "v1"}
			if i%10 == 9 { // a StatefulSet: one label set per pod
				lbls["statefulset.kubernetes.io/pod-name"] = fmt.Sprintf("%s-%d", app, i)
			}
			ports := []v1.ContainerPort{tcp("http", 8080+int32(i%2)*1010), tcp("metrics", 9100)}
			if n == 0 && i%10 == 0 {
				ports = append(ports, udp("dns", 53), tcp("dns-tcp", 53))
			}
			node := fmt.Sprintf("node-%d", 1+(n*100+i)%99)
			for k := range perNS {
				if i == (n*37+11*k)%100 {
					node = "node-0"
				}
			}
			in.Pods = append(in.Pods, podObj(ns, fmt.Sprintf("%s-%d", app, i), node, lbls, []string{fmt.Sprintf("10.%d.0.%d", n, i+1)}, ports...))
		}
		in.Policies = append(in.Policies, benchPolicies(ns, n)...)
	}
	return in
}

func benchPolicies(ns string, n int) []*networkingv1.NetworkPolicy {
	np := func(name string, sel metav1.LabelSelector, types []networkingv1.PolicyType, in []networkingv1.NetworkPolicyIngressRule, out []networkingv1.NetworkPolicyEgressRule) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec:       networkingv1.NetworkPolicySpec{PodSelector: sel, PolicyTypes: types, Ingress: in, Egress: out},
		}
	}
	app := func(a string) metav1.LabelSelector {
		return metav1.LabelSelector{MatchLabels: map[string]string{"app": a}}
	}
	ref := func(s metav1.LabelSelector) *metav1.LabelSelector { return &s }
	port := func(proto v1.Protocol, p intstr.IntOrString, end ...int32) networkingv1.NetworkPolicyPort {
		pp := networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
		if len(end) > 0 {
			pp.EndPort = &end[0]
		}
		return pp
	}
	block := func(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
		return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
	}
	both := []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	egress := []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	return []*networkingv1.NetworkPolicy{
		np("default-deny", metav1.LabelSelector{}, both, nil, nil),
		np("app-1-from-app-0", app("app-1"), nil, []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{PodSelector: ref(app("app-0"))}},
			Ports: []networkingv1.NetworkPolicyPort{port(v1.ProtocolTCP, intstr.FromInt32(8080))},
		}}, nil),
		np("app-2-from-team", app("app-2"), nil, []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("team-%d", n%10)}}}},
			Ports: []networkingv1.NetworkPolicyPort{port(v1.ProtocolTCP, intstr.FromString("http"))},
		}}, nil),
		np("app-3-from-prod-frontends", app("app-3"), nil, []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}},
				PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "frontend"}},
			}},
			Ports: []networkingv1.NetworkPolicyPort{port(v1.ProtocolTCP, intstr.FromInt32(8000), 8100)},
		}}, nil),
		np("dns", metav1.LabelSelector{}, egress, nil, []networkingv1.NetworkPolicyEgressRule{{
			To: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "ns-0"}},
				PodSelector:       ref(app("app-0")),
			}},
			Ports: []networkingv1.NetworkPolicyPort{port(v1.ProtocolUDP, intstr.FromInt32(53)), port(v1.ProtocolTCP, intstr.FromInt32(53))},
		}}),
		np("app-5-internet", app("app-5"), egress, nil, []networkingv1.NetworkPolicyEgressRule{{
			To:    []networkingv1.NetworkPolicyPeer{block("0.0.0.0/0", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")},
			Ports: []networkingv1.NetworkPolicyPort{port(v1.ProtocolTCP, intstr.FromInt32(443))},
		}}),
		np("app-6-databases", app("app-6"), egress, nil, []networkingv1.NetworkPolicyEgressRule{{
			To: []networkingv1.NetworkPolicyPeer{
				block(fmt.Sprintf("172.16.%d.0/24", n)),
				block(fmt.Sprintf("192.168.%d.0/24", n), fmt.Sprintf("192.168.%d.128/25", n)),
			},
			Ports: []networkingv1.NetworkPolicyPort{port(v1.ProtocolTCP, intstr.FromInt32(5432))},
		}}),
		np("app-7-8-same-namespace", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{"app-7", "app-8"}},
		}}, nil, []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}, block(fmt.Sprintf("10.200.%d.0/24", n))},
		}}, nil),
		np("backend-to-http", metav1.LabelSelector{MatchLabels: map[string]string{"tier": "backend"}}, egress, nil, []networkingv1.NetworkPolicyEgressRule{{
			To: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{},
				PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{"app-1", "app-2"}},
				}},
			}},
			Ports: []networkingv1.NetworkPolicyPort{port(v1.ProtocolTCP, intstr.FromString("http"))},
		}}),
		np("app-9-metrics", app("app-9"), nil, []networkingv1.NetworkPolicyIngressRule{
			{Ports: []networkingv1.NetworkPolicyPort{port(v1.ProtocolTCP, intstr.FromInt32(9100))}},
			{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "team-0"}}}}},
		}, nil),
	}
}

func BenchmarkCompile(b *testing.B) {
	for _, bc := range []struct {
		name  string
		perNS int
	}{{"local=100", 1}, {"local=1000", 10}} {
		b.Run(bc.name, func(b *testing.B) {
			in := benchInput(bc.perNS)
			a := NewAllocator()
			var out Output
			b.ReportAllocs()
			for b.Loop() {
				out = Compile(in, a)
			}
			if len(out.Errors) > 0 {
				b.Fatal(out.Errors)
			}
			b.ReportMetric(float64(len(out.Endpoints)), "endpoints")
			b.ReportMetric(float64(len(out.Rules)), "rules")
			b.ReportMetric(float64(len(out.CIDRs)), "cidrs")
		})
	}
}
