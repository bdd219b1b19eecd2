package compile

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Small builders in the style of kube-proxy's proxier tests.

func svc(name string, mutate ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

type ep struct {
	addr        string
	node        string
	notReady    bool
	terminating bool
	notServing  bool
	zones       []string
}

func slice(svcName string, family discovery.AddressType, ports map[string]int32, eps ...ep) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: svcName + "-" + string(family), Labels: map[string]string{LabelServiceName: svcName}},
		AddressType: family,
	}
	names := make([]string, 0, len(ports))
	for n := range ports {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		name, port, proto := n, ports[n], v1.ProtocolTCP
		if strings.HasPrefix(n, "udp:") {
			name, proto = strings.TrimPrefix(n, "udp:"), v1.ProtocolUDP
		}
		s.Ports = append(s.Ports, discovery.EndpointPort{Name: &name, Port: &port, Protocol: &proto})
	}
	for _, e := range eps {
		ready, serving, term := !e.notReady, !e.notServing, e.terminating
		d := discovery.Endpoint{Addresses: []string{e.addr},
			Conditions: discovery.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &term}}
		if e.node != "" {
			node := e.node
			d.NodeName = &node
		}
		if e.zones != nil {
			d.Hints = &discovery.EndpointHints{}
			for _, z := range e.zones {
				d.Hints.ForZones = append(d.Hints.ForZones, discovery.ForZone{Name: z})
			}
		}
		s.Endpoints = append(s.Endpoints, d)
	}
	return s
}

var thisNode = Node{Name: "node-a", Zone: "zone-1",
	NodePortAddrs: []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("fd00:1::10")},
	Addrs:         []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("fd00:1::10")}}

// render turns Desired into sorted text lines, so tests compare the whole
// state order-insensitively and failures read like a diff.
func render(d Desired) string {
	var lines []string
	names := func(bs []Backend) string {
		var out []string
		for _, b := range bs {
			s := b.Addr.String()
			if b.Local {
				s += "(local)"
			}
			if b.Terminating {
				s += "(terminating)"
			}
			out = append(out, s)
		}
		return strings.Join(out, " ")
	}
	for f, e := range d {
		flags := ""
		if len(e.Draining) > 0 {
			flags += " draining=[" + names(e.Draining) + "]"
		}
		if e.LocalOnly {
			flags += " local-only"
		}
		if e.TerminatingFallback {
			flags += " terminating-fallback"
		}
		if e.AffinityTimeout > 0 {
			flags += fmt.Sprintf(" affinity=%ds", e.AffinityTimeout)
		}
		if e.Restricted {
			flags += fmt.Sprintf(" ranges=%v", e.SourceRanges)
		}
		if e.NodeInRanges {
			flags += " node-in-ranges"
		}
		if e.ServicesOnly {
			flags += " services-only"
		}
		lines = append(lines, fmt.Sprintf("%s -> [%s]%s", f, names(e.Backends), flags))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func TestCompile(t *testing.T) {
	local := func(s *v1.Service) {
		p := v1.ServiceInternalTrafficPolicyLocal
		s.Spec.InternalTrafficPolicy = &p
	}
	nodePort := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
	}
	cases := []struct {
		name     string
		services []*v1.Service
		slices   []*discovery.EndpointSlice
		want     string
	}{
		{
			name:     "clusterIP with ready endpoints",
			services: []*v1.Service{svc("web")},
			slices:   []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080}, ep{addr: "10.244.1.5", node: "node-b"}, ep{addr: "10.244.0.7", node: "node-a"})},
			want:     "10.96.0.10:80/6/internal -> [10.244.0.7:8080(local) 10.244.1.5:8080]",
		},
		{
			name:     "no endpoints rejects",
			services: []*v1.Service{svc("web")},
			want:     "10.96.0.10:80/6/internal -> []",
		},
		{
			name: "multi-port with named target ports resolved per slice",
			services: []*v1.Service{svc("web", func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{{Name: "http", Port: 80}, {Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}}
			})},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080, "udp:dns": 5353}, ep{addr: "10.244.1.5"})},
			want: "10.96.0.10:53/17/internal -> [10.244.1.5:5353]\n" +
				"10.96.0.10:80/6/internal -> [10.244.1.5:8080]",
		},
		{
			name: "dual stack",
			services: []*v1.Service{svc("web", func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
			})},
			slices: []*discovery.EndpointSlice{
				slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080}, ep{addr: "10.244.1.5"}),
				slice("web", discovery.AddressTypeIPv6, map[string]int32{"http": 8080}, ep{addr: "fd00:244::5"}),
			},
			want: "10.96.0.10:80/6/internal -> [10.244.1.5:8080]\n" +
				"[fd00:96::10]:80/6/internal -> [[fd00:244::5]:8080]",
		},
		{
			name:     "terminating endpoints drain while one is ready",
			services: []*v1.Service{svc("web")},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.1.5"}, ep{addr: "10.244.1.6", notReady: true, terminating: true},
				ep{addr: "10.244.1.7", notReady: true, terminating: true, notServing: true},
				ep{addr: "10.244.1.8", notReady: true})},
			want: "10.96.0.10:80/6/internal -> [10.244.1.5:8080] draining=[10.244.1.6:8080(terminating) 10.244.1.7:8080(terminating)]",
		},
		{
			name:     "serving terminating endpoints as fallback",
			services: []*v1.Service{svc("web")},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.1.6", notReady: true, terminating: true},
				ep{addr: "10.244.1.7", notReady: true, terminating: true, notServing: true})},
			want: "10.96.0.10:80/6/internal -> [10.244.1.6:8080(terminating)] draining=[10.244.1.7:8080(terminating)] terminating-fallback",
		},
		{
			name:     "nothing serving: terminating endpoints drain, new connections are rejected",
			services: []*v1.Service{svc("web")},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.1.7", notReady: true, terminating: true, notServing: true})},
			want: "10.96.0.10:80/6/internal -> [] draining=[10.244.1.7:8080(terminating)]",
		},
		{
			name:     "draining under internalTrafficPolicy Local: local endpoints only",
			services: []*v1.Service{svc("web", local)},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.0.7", node: "node-a"},
				ep{addr: "10.244.0.8", node: "node-a", notReady: true, terminating: true},
				ep{addr: "10.244.1.6", node: "node-b", notReady: true, terminating: true})},
			want: "10.96.0.10:80/6/internal -> [10.244.0.7:8080(local)] draining=[10.244.0.8:8080(local)(terminating)] local-only",
		},
		{
			name: "draining per family",
			services: []*v1.Service{svc("web", func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
			})},
			slices: []*discovery.EndpointSlice{
				slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080}, ep{addr: "10.244.1.5"},
					ep{addr: "10.244.1.6", notReady: true, terminating: true}),
				slice("web", discovery.AddressTypeIPv6, map[string]int32{"http": 8080}, ep{addr: "fd00:244::5", notReady: true, terminating: true}),
			},
			want: "10.96.0.10:80/6/internal -> [10.244.1.5:8080] draining=[10.244.1.6:8080(terminating)]\n" +
				"[fd00:96::10]:80/6/internal -> [[fd00:244::5]:8080(terminating)] terminating-fallback",
		},
		{
			name: "topology limits new connections, not draining",
			services: []*v1.Service{svc("web", func(s *v1.Service) {
				d := v1.ServiceTrafficDistributionPreferClose
				s.Spec.TrafficDistribution = &d
			})},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.1.5", zones: []string{"zone-1"}}, ep{addr: "10.244.2.5", zones: []string{"zone-2"}},
				ep{addr: "10.244.2.6", zones: []string{"zone-2"}, notReady: true, terminating: true})},
			want: "10.96.0.10:80/6/internal -> [10.244.1.5:8080] draining=[10.244.2.6:8080(terminating)]",
		},
		{
			name:     "internalTrafficPolicy Local",
			services: []*v1.Service{svc("web", local)},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.1.5", node: "node-b"}, ep{addr: "10.244.0.7", node: "node-a"})},
			want: "10.96.0.10:80/6/internal -> [10.244.0.7:8080(local)] local-only",
		},
		{
			name: "session affinity",
			services: []*v1.Service{svc("web", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				to := int32(60)
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &to}}
			}), svc("default-timeout", func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.11"}
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			})},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080}, ep{addr: "10.244.1.5"})},
			want: "10.96.0.10:80/6/internal -> [10.244.1.5:8080] affinity=60s\n" +
				"10.96.0.11:80/6/internal -> [] affinity=10800s",
		},
		{
			name:     "NodePort with externalTrafficPolicy Cluster",
			services: []*v1.Service{svc("web", nodePort)},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.1.5", node: "node-b"})},
			want: "10.96.0.10:80/6/internal -> [10.244.1.5:8080]\n" +
				"192.168.1.10:30080/6/external -> [10.244.1.5:8080]\n" +
				"192.168.1.10:30080/6/internal -> [10.244.1.5:8080]",
		},
		{
			name: "LoadBalancer and ExternalIPs with externalTrafficPolicy Local",
			services: []*v1.Service{svc("web", nodePort, func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.ExternalIPs = []string{"203.0.113.7"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.9"}, {Hostname: "lb.example"}}
			})},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.1.5", node: "node-b"}, ep{addr: "10.244.0.7", node: "node-a"})},
			want: "10.96.0.10:80/6/internal -> [10.244.0.7:8080(local) 10.244.1.5:8080]\n" +
				"192.168.1.10:30080/6/external -> [10.244.0.7:8080(local)] local-only\n" +
				"192.168.1.10:30080/6/internal -> [10.244.0.7:8080(local) 10.244.1.5:8080]\n" +
				"198.51.100.9:80/6/external -> [10.244.0.7:8080(local)] local-only services-only\n" +
				"198.51.100.9:80/6/internal -> [10.244.0.7:8080(local) 10.244.1.5:8080]\n" +
				"203.0.113.7:80/6/external -> [10.244.0.7:8080(local)] local-only services-only\n" +
				"203.0.113.7:80/6/internal -> [10.244.0.7:8080(local) 10.244.1.5:8080]",
		},
		{
			name:     "an ExternalIP that is a node address serves the node too: not services-only",
			services: []*v1.Service{svc("web", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"192.168.1.10", "203.0.113.7"} })},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.1.5", node: "node-b"})},
			want: "10.96.0.10:80/6/internal -> [10.244.1.5:8080]\n" +
				"192.168.1.10:80/6/external -> [10.244.1.5:8080]\n" +
				"192.168.1.10:80/6/internal -> [10.244.1.5:8080]\n" +
				"203.0.113.7:80/6/external -> [10.244.1.5:8080] services-only\n" +
				"203.0.113.7:80/6/internal -> [10.244.1.5:8080]",
		},
		{
			name: "loadBalancerSourceRanges restrict the LoadBalancer IP, from outside and inside, not the NodePort",
			services: []*v1.Service{svc("web", nodePort, func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalIPs = []string{"203.0.113.7"}
				s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24", " 192.168.1.0/24", "2001:db8:1::/48", "192.168.1.0/24"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.9"}}
			})},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.1.5", node: "node-b"})},
			want: "10.96.0.10:80/6/internal -> [10.244.1.5:8080]\n" +
				"192.168.1.10:30080/6/external -> [10.244.1.5:8080]\n" +
				"192.168.1.10:30080/6/internal -> [10.244.1.5:8080]\n" +
				"198.51.100.9:80/6/external -> [10.244.1.5:8080] ranges=[192.168.1.0/24 203.0.113.0/24] node-in-ranges services-only\n" +
				"198.51.100.9:80/6/internal -> [10.244.1.5:8080] ranges=[192.168.1.0/24 203.0.113.0/24] node-in-ranges\n" +
				"203.0.113.7:80/6/external -> [10.244.1.5:8080] services-only\n" +
				"203.0.113.7:80/6/internal -> [10.244.1.5:8080]",
		},
		{
			name: "the annotation when the field is empty; ipMode Proxy leaves the IP to the load balancer",
			services: []*v1.Service{svc("web", func(s *v1.Service) {
				proxy := v1.LoadBalancerIPModeProxy
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Annotations = map[string]string{AnnotationSourceRanges: "10.0.0.0/8, 203.0.113.5/32"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.9"}, {IP: "198.51.100.10", IPMode: &proxy}}
			})},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.1.5", node: "node-b"})},
			want: "10.96.0.10:80/6/internal -> [10.244.1.5:8080]\n" +
				"198.51.100.9:80/6/external -> [10.244.1.5:8080] ranges=[10.0.0.0/8 203.0.113.5/32] services-only\n" +
				"198.51.100.9:80/6/internal -> [10.244.1.5:8080] ranges=[10.0.0.0/8 203.0.113.5/32]",
		},
		{
			name: "ranges of the other family only admit nobody",
			services: []*v1.Service{svc("web", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.LoadBalancerSourceRanges = []string{"2001:db8::/32"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.9"}}
			})},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.1.5", node: "node-b"})},
			want: "10.96.0.10:80/6/internal -> [10.244.1.5:8080]\n" +
				"198.51.100.9:80/6/external -> [10.244.1.5:8080] ranges=[] services-only\n" +
				"198.51.100.9:80/6/internal -> [10.244.1.5:8080] ranges=[]",
		},
		{
			name: "topology hints keep traffic in the zone",
			services: []*v1.Service{svc("web", func(s *v1.Service) {
				d := v1.ServiceTrafficDistributionPreferClose
				s.Spec.TrafficDistribution = &d
			})},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.1.5", zones: []string{"zone-1"}}, ep{addr: "10.244.2.5", zones: []string{"zone-2"}})},
			want: "10.96.0.10:80/6/internal -> [10.244.1.5:8080]",
		},
		{
			name: "topology ignored when an endpoint lacks hints",
			services: []*v1.Service{svc("web", func(s *v1.Service) {
				d := v1.ServiceTrafficDistributionPreferClose
				s.Spec.TrafficDistribution = &d
			})},
			slices: []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
				ep{addr: "10.244.1.5", zones: []string{"zone-1"}}, ep{addr: "10.244.2.5"})},
			want: "10.96.0.10:80/6/internal -> [10.244.1.5:8080 10.244.2.5:8080]",
		},
		{
			name: "skipped: headless, ExternalName, other proxy",
			services: []*v1.Service{
				svc("headless", func(s *v1.Service) {
					s.Spec.ClusterIP, s.Spec.ClusterIPs = v1.ClusterIPNone, []string{v1.ClusterIPNone}
				}),
				svc("external", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeExternalName }),
				svc("other", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "someone-else"} }),
			},
			want: "",
		},
		{
			name:     "endpoint in two slices counted once",
			services: []*v1.Service{svc("web")},
			slices: []*discovery.EndpointSlice{
				slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080}, ep{addr: "10.244.1.5"}),
				func() *discovery.EndpointSlice {
					s := slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080}, ep{addr: "10.244.1.5"})
					s.Name = "web-dup"
					return s
				}(),
			},
			want: "10.96.0.10:80/6/internal -> [10.244.1.5:8080]",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, conflicts, errs := Compile(c.services, c.slices, thisNode)
			if len(errs) > 0 || len(conflicts) > 0 {
				t.Fatalf("errors: %v; conflicts: %v", errs, conflicts)
			}
			if r := render(got); r != c.want {
				t.Errorf("got:\n%s\nwant:\n%s", r, c.want)
			}
		})
	}
}

// TestCompileMalformed: a bad field is reported naming the object and field,
// and everything else still compiles.
func TestCompileMalformed(t *testing.T) {
	bad := svc("bad", func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{"not-an-ip", "10.96.0.12"}
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "weird", Port: 81, Protocol: "ICMP"})
	})
	good := svc("good", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.13"} })
	// A range that does not parse admits nobody rather than everybody.
	lb := svc("lb", func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{"10.96.0.14"}
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = []string{"office"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.9"}}
	})
	got, _, errs := Compile([]*v1.Service{bad, good, lb}, nil, thisNode)
	msgs := fmt.Sprint(errs)
	for _, want := range []string{
		`Service ns/bad: spec.clusterIPs[0]: "not-an-ip" is not an IP address`,
		`Service ns/bad: spec.ports[1].protocol: "ICMP" is not TCP, UDP or SCTP`,
		`Service ns/lb: spec.loadBalancerSourceRanges[0]: "office" is not a CIDR such as 203.0.113.0/24; it admits no client`,
	} {
		if !strings.Contains(msgs, want) {
			t.Errorf("errors %s; want %q", msgs, want)
		}
	}
	want := "10.96.0.12:80/6/internal -> []\n10.96.0.13:80/6/internal -> []\n10.96.0.14:80/6/internal -> []\n" +
		"198.51.100.9:80/6/external -> [] ranges=[] services-only\n198.51.100.9:80/6/internal -> [] ranges=[]"
	if r := render(got); r != want {
		t.Errorf("got:\n%s\nwant:\n%s", r, want)
	}
}

// TestFrontendConflicts: a frontend several Services claim goes to the
// oldest (creationTimestamp, then namespace/name), with its entry; the
// others are reported.
func TestFrontendConflicts(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) func(*v1.Service) {
		return func(s *v1.Service) { s.CreationTimestamp = metav1.NewTime(t0.Add(d)) }
	}
	clusterIP := func(ip string) func(*v1.Service) {
		return func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = ip, []string{ip} }
	}
	externalIP := func(ip string) func(*v1.Service) {
		return func(s *v1.Service) { s.Spec.ExternalIPs = []string{ip} }
	}
	udp := func(s *v1.Service) { s.Spec.Ports[0].Protocol = v1.ProtocolUDP }
	eps := func(name, addr string) *discovery.EndpointSlice {
		return slice(name, discovery.AddressTypeIPv4, map[string]int32{"http": 8080, "udp:http": 8080}, ep{addr: addr})
	}
	slices := []*discovery.EndpointSlice{eps("old", "10.244.1.1"), eps("new", "10.244.2.2"), eps("newest", "10.244.3.3"),
		eps("a", "10.244.4.4"), eps("b", "10.244.5.5")}
	cases := []struct {
		name      string
		services  []*v1.Service
		want      string
		conflicts string
	}{
		{
			name: "an externalIP on another Service's ClusterIP: the older Service owns it",
			services: []*v1.Service{
				svc("new", at(time.Hour), clusterIP("10.96.0.20"), externalIP("10.96.0.10")),
				svc("old", at(0), clusterIP("10.96.0.10")),
			},
			want: "10.96.0.10:80/6/external -> [10.244.2.2:8080] services-only\n" +
				"10.96.0.10:80/6/internal -> [10.244.1.1:8080]\n" +
				"10.96.0.20:80/6/internal -> [10.244.2.2:8080]",
			conflicts: "10.96.0.10:80/6/internal: owned by ns/old, also claimed by [ns/new]",
		},
		{
			name: "the older claimant wins whichever it is",
			services: []*v1.Service{
				svc("new", at(0), clusterIP("10.96.0.20"), externalIP("10.96.0.10")),
				svc("old", at(time.Hour), clusterIP("10.96.0.10")),
			},
			want: "10.96.0.10:80/6/external -> [10.244.2.2:8080] services-only\n" +
				"10.96.0.10:80/6/internal -> [10.244.2.2:8080]\n" +
				"10.96.0.20:80/6/internal -> [10.244.2.2:8080]",
			conflicts: "10.96.0.10:80/6/internal: owned by ns/new, also claimed by [ns/old]",
		},
		{
			name: "three claimants, ties broken by name",
			services: []*v1.Service{
				svc("newest", at(2*time.Hour), clusterIP("10.96.0.30"), externalIP("10.96.0.10")),
				svc("b", at(0), clusterIP("10.96.0.10")),
				svc("a", at(0), clusterIP("10.96.0.40"), externalIP("10.96.0.10")),
			},
			want: "10.96.0.10:80/6/external -> [10.244.4.4:8080] services-only\n" +
				"10.96.0.10:80/6/internal -> [10.244.4.4:8080]\n" +
				"10.96.0.30:80/6/internal -> [10.244.3.3:8080]\n" +
				"10.96.0.40:80/6/internal -> [10.244.4.4:8080]",
			conflicts: "10.96.0.10:80/6/external: owned by ns/a, also claimed by [ns/newest]\n" +
				"10.96.0.10:80/6/internal: owned by ns/a, also claimed by [ns/b ns/newest]",
		},
		{
			name: "another protocol is another frontend",
			services: []*v1.Service{
				svc("new", at(time.Hour), clusterIP("10.96.0.20"), externalIP("10.96.0.10"), udp),
				svc("old", at(0), clusterIP("10.96.0.10")),
			},
			want: "10.96.0.10:80/17/external -> [10.244.2.2:8080] services-only\n" +
				"10.96.0.10:80/17/internal -> [10.244.2.2:8080]\n" +
				"10.96.0.10:80/6/internal -> [10.244.1.1:8080]\n" +
				"10.96.0.20:80/17/internal -> [10.244.2.2:8080]",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, conflicts, errs := Compile(c.services, slices, thisNode)
			if len(errs) > 0 {
				t.Fatalf("errors: %v", errs)
			}
			if r := render(got); r != c.want {
				t.Errorf("got:\n%s\nwant:\n%s", r, c.want)
			}
			var cs []string
			for _, cf := range conflicts {
				cs = append(cs, cf.String())
			}
			if r := strings.Join(cs, "\n"); r != c.conflicts {
				t.Errorf("conflicts:\n%s\nwant:\n%s", r, c.conflicts)
			}
		})
	}
}

func TestServiceHealthCheck(t *testing.T) {
	lb := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 32000
	}
	eps := []*discovery.EndpointSlice{slice("web", discovery.AddressTypeIPv4, map[string]int32{"http": 8080},
		ep{addr: "10.244.0.7", node: "node-a"}, ep{addr: "10.244.0.8", node: "node-a", notReady: true},
		ep{addr: "10.244.1.5", node: "node-b"})}
	hc, ok := ServiceHealthCheck(svc("web", lb), eps, thisNode)
	if !ok || hc.Port != 32000 || hc.LocalEndpoints != 1 || hc.Service.String() != "ns/web" {
		t.Errorf("got %+v %v, want port 32000 with 1 local endpoint", hc, ok)
	}
	if _, ok := ServiceHealthCheck(svc("web", lb, func(s *v1.Service) {
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
	}), eps, thisNode); ok {
		t.Error("externalTrafficPolicy Cluster has no health check")
	}
	if _, ok := ServiceHealthCheck(svc("web"), eps, thisNode); ok {
		t.Error("ClusterIP service has no health check")
	}
}
