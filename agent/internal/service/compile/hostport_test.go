package compile

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func hostPortPod(mutate ...func(*v1.Pod)) *v1.Pod {
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ingress"},
		Spec: v1.PodSpec{NodeName: "node-a", Containers: []v1.Container{{Name: "c", Ports: []v1.ContainerPort{
			{Name: "http", ContainerPort: 8080, HostPort: 80, Protocol: v1.ProtocolTCP},
			{Name: "metrics", ContainerPort: 9090, Protocol: v1.ProtocolTCP}, // no hostPort
		}}}},
		Status: v1.PodStatus{Phase: v1.PodRunning, PodIPs: []v1.PodIP{{IP: "10.244.0.7"}, {IP: "fd00:244::7"}}},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func TestHostPorts(t *testing.T) {
	for _, c := range []struct {
		name string
		pod  *v1.Pod
		want string
	}{
		{"every node address, each family to the pod's address of that family", hostPortPod(),
			"192.168.1.10:80/6/external -> [10.244.0.7:8080(local)]\n" +
				"192.168.1.10:80/6/internal -> [10.244.0.7:8080(local)]\n" +
				"[fd00:1::10]:80/6/external -> [[fd00:244::7]:8080(local)]\n" +
				"[fd00:1::10]:80/6/internal -> [[fd00:244::7]:8080(local)]"},
		{"hostIP names one address; UDP", hostPortPod(func(p *v1.Pod) {
			p.Spec.Containers[0].Ports[0].HostIP = "192.168.1.10"
			p.Spec.Containers[0].Ports[0].Protocol = v1.ProtocolUDP
		}), "192.168.1.10:80/17/external -> [10.244.0.7:8080(local)]\n" +
			"192.168.1.10:80/17/internal -> [10.244.0.7:8080(local)]"},
		{"hostIP 0.0.0.0 is every address", hostPortPod(func(p *v1.Pod) {
			p.Spec.Containers[0].Ports[0].HostIP = "0.0.0.0"
			p.Status.PodIPs = p.Status.PodIPs[:1]
		}), "192.168.1.10:80/6/external -> [10.244.0.7:8080(local)]\n" +
			"192.168.1.10:80/6/internal -> [10.244.0.7:8080(local)]"},
		{"a pod of another node", hostPortPod(func(p *v1.Pod) { p.Spec.NodeName = "node-b" }), ""},
		{"a hostNetwork pod needs no mapping", hostPortPod(func(p *v1.Pod) { p.Spec.HostNetwork = true }), ""},
		{"a pod without an address yet", hostPortPod(func(p *v1.Pod) { p.Status.PodIPs = nil }), ""},
		{"a pod that has finished", hostPortPod(func(p *v1.Pod) { p.Status.Phase = v1.PodSucceeded }), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, errs := HostPorts(c.pod, thisNode)
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			if r := render(got); r != c.want {
				t.Errorf("got:\n%s\nwant:\n%s", r, c.want)
			}
			for _, e := range got {
				if e.Kind != KindHostPort || e.Service.String() != "ns/ingress" {
					t.Errorf("entry named %s %s, want HostPort ns/ingress", e.Kind, e.Service)
				}
			}
		})
	}
}

// TestHostPortsMalformed: a bad port is reported by field and costs only
// that port.
func TestHostPortsMalformed(t *testing.T) {
	pod := hostPortPod(func(p *v1.Pod) {
		p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports,
			v1.ContainerPort{ContainerPort: 53, HostPort: 53, Protocol: "ICMP"},
			v1.ContainerPort{ContainerPort: 443, HostPort: 443, Protocol: v1.ProtocolTCP, HostIP: "node-a"})
		p.Status.PodIPs = p.Status.PodIPs[:1]
	})
	got, errs := HostPorts(pod, thisNode)
	msgs := ""
	for _, e := range errs {
		msgs += e.Error() + "\n"
	}
	for _, want := range []string{
		`Pod ns/ingress: spec.containers[0].ports[2].protocol: "ICMP" is not TCP, UDP or SCTP`,
		`Pod ns/ingress: spec.containers[0].ports[3].hostIP: "node-a" is not an IP address`,
	} {
		if !strings.Contains(msgs, want) {
			t.Errorf("errors %q; want %q", msgs, want)
		}
	}
	if len(got) != 2 {
		t.Errorf("got %d frontends, want the good port's 2:\n%s", len(got), render(got))
	}
}
