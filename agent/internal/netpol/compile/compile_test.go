package compile

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/sluice-net/sluice/bpf"
)

// The model cluster: two nodes, three labelled namespaces with three pods
// each, spread over both nodes, plus a namespace without a Namespace object
// and pods the compiler must leave out. Container ports differ so that
// named ports resolve to different numbers on different pods: "http" is
// 8080 on alpha/web and gamma/web, 9090 on beta/web and 8081 on the caches.

const (
	nodeA = "node-a"
	nodeB = "node-b"
)

var hostAddrs = map[string][]netip.Addr{
	nodeA: {netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("fd00:ff::1")},
	nodeB: {netip.MustParseAddr("192.168.0.2"), netip.MustParseAddr("fd00:ff::2")},
}

func tcp(name string, port int32) v1.ContainerPort {
	return v1.ContainerPort{Name: name, ContainerPort: port, Protocol: v1.ProtocolTCP}
}

func udp(name string, port int32) v1.ContainerPort {
	return v1.ContainerPort{Name: name, ContainerPort: port, Protocol: v1.ProtocolUDP}
}

func sctp(name string, port int32) v1.ContainerPort {
	return v1.ContainerPort{Name: name, ContainerPort: port, Protocol: v1.ProtocolSCTP}
}

func namespaceObj(name string, lbls map[string]string) *v1.Namespace {
	return &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
}

func podObj(ns, name, node string, lbls map[string]string, ips []string, ports ...v1.ContainerPort) *v1.Pod {
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec: v1.PodSpec{
			NodeName:   node,
			Containers: []v1.Container{{Name: "main", Ports: ports}},
		},
		Status: v1.PodStatus{Phase: v1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, v1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

type cluster struct {
	namespaces []*v1.Namespace
	pods       []*v1.Pod
	policies   []*networkingv1.NetworkPolicy
	allocs     map[string]*Allocator
	outs       map[string]Output
}

func newCluster() *cluster {
	c := &cluster{
		namespaces: []*v1.Namespace{
			namespaceObj("alpha", map[string]string{"team": "a", "env": "prod"}),
			namespaceObj("beta", map[string]string{"team": "b", "env": "prod"}),
			namespaceObj("gamma", map[string]string{"team": "c", "env": "dev"}),
		},
		allocs: map[string]*Allocator{},
		outs:   map[string]Output{},
	}
	type spec struct {
		node  string
		ips   []string
		ports []v1.ContainerPort
	}
	layout := map[string][3]spec{ // web, db, cache
		"alpha": {
			{nodeA, []string{"10.0.1.10", "fd00::1:10"}, []v1.ContainerPort{tcp("http", 8080)}},
			{nodeB, []string{"10.0.1.11"}, []v1.ContainerPort{tcp("sql", 5432), sctp("rep", 7000)}},
			{nodeA, []string{"10.0.1.12"}, []v1.ContainerPort{tcp("http", 8081), udp("dns", 53)}},
		},
		"beta": {
			{nodeB, []string{"10.0.2.10"}, []v1.ContainerPort{tcp("http", 9090)}},
			{nodeA, []string{"10.0.2.11"}, []v1.ContainerPort{tcp("sql", 5432), sctp("rep", 7000)}},
			{nodeB, []string{"10.0.2.12"}, []v1.ContainerPort{tcp("http", 8081), udp("dns", 53)}},
		},
		"gamma": {
			{nodeA, []string{"10.0.3.10"}, []v1.ContainerPort{tcp("http", 8080)}},
			{nodeB, []string{"10.0.3.11"}, []v1.ContainerPort{tcp("sql", 5432), sctp("rep", 7000)}},
			{nodeA, []string{"10.0.3.12"}, []v1.ContainerPort{tcp("http", 8081), udp("dns", 53)}},
		},
	}
	for _, ns := range []string{"alpha", "beta", "gamma"} {
		for i, app := range []string{"web", "db", "cache"} {
			s := layout[ns][i]
			c.pods = append(c.pods, podObj(ns, app, s.node, map[string]string{"app": app}, s.ips, s.ports...))
		}
	}
	// A namespace without a Namespace object: no labels, but a name.
	c.pods = append(c.pods, podObj("delta", "probe", nodeB, map[string]string{"app": "probe"}, []string{"10.0.4.10"}))
	// Pods that are not policy endpoints: host network, finished, no IP yet.
	agent := podObj("kube-system", "agent", nodeA, map[string]string{"app": "agent"}, []string{"192.168.0.1"})
	agent.Spec.HostNetwork = true
	job := podObj("gamma", "job", nodeA, map[string]string{"app": "job"}, []string{"10.0.3.50"})
	job.Status.Phase = v1.PodSucceeded
	pending := podObj("gamma", "pending", nodeA, map[string]string{"app": "web"}, nil)
	pending.Status.Phase = v1.PodPending
	c.pods = append(c.pods, agent, job, pending)
	return c
}

func (c *cluster) pod(name string) *v1.Pod {
	for _, p := range c.pods {
		if p.Namespace+"/"+p.Name == name {
			return p
		}
	}
	panic("no pod " + name)
}

func (c *cluster) namespaceLabels(name string) map[string]string {
	for _, ns := range c.namespaces {
		if ns.Name == name {
			return ns.Labels
		}
	}
	return nil
}

// compile compiles every node's maps, as each node's agent would, and
// checks the rules keep the datapath's contract.
func (c *cluster) compile(t *testing.T) {
	t.Helper()
	for _, node := range []string{nodeA, nodeB} {
		if c.allocs[node] == nil {
			c.allocs[node] = NewAllocator()
		}
		out := Compile(Input{NodeName: node, HostAddrs: hostAddrs[node], Pods: c.pods, Namespaces: c.namespaces, Policies: c.policies}, c.allocs[node])
		if len(out.Errors) > 0 {
			t.Fatalf("compile %s: %v", node, out.Errors)
		}
		for r := range out.Rules {
			if r.PortBits > 16 || (r.Proto == 0 && (r.Port != 0 || r.PortBits != 0)) || r.Port&^portMask(r.PortBits) != 0 {
				t.Errorf("%s: malformed rule %v", node, r)
			}
		}
		c.outs[node] = out
	}
}

func portMask(bits uint8) uint16 {
	return uint16(0xffff << (16 - uint(bits)))
}

// endpoint is one side of a connection.
type endpoint struct {
	addr netip.Addr
	pod  *v1.Pod // nil: not a pod
	node string  // the pod's node, or the node owning addr
}

// endpoint resolves "ns/name" (the pod's address of the given family) or
// an address.
func (c *cluster) endpoint(s string, v6 bool) (endpoint, bool) {
	if strings.Contains(s, "/") {
		p := c.pod(s)
		for _, ip := range p.Status.PodIPs {
			if a := netip.MustParseAddr(ip.IP); a.Is6() == v6 {
				return endpoint{addr: a, pod: p, node: p.Spec.NodeName}, true
			}
		}
		return endpoint{}, false
	}
	ep := endpoint{addr: netip.MustParseAddr(s)}
	for _, p := range c.pods {
		if !included(p) {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if ip.IP == s {
				ep.pod, ep.node = p, p.Spec.NodeName
			}
		}
	}
	for node, addrs := range hostAddrs {
		if slices.Contains(addrs, ep.addr) {
			ep.node = node
		}
	}
	return ep, true
}

func included(p *v1.Pod) bool {
	return !p.Spec.HostNetwork && p.Status.Phase != v1.PodSucceeded && p.Status.Phase != v1.PodFailed
}

// datapath is the verdict of the compiled maps: egress on the source's
// node, ingress on the destination's.
func (c *cluster) datapath(src, dst endpoint, proto uint8, port uint16) bool {
	ok := true
	if src.pod != nil {
		ok = datapathAllows(c.outs[src.node], src.addr, dst.addr, Egress, proto, port)
	}
	if dst.pod != nil {
		ok = ok && datapathAllows(c.outs[dst.node], dst.addr, src.addr, Ingress, proto, port)
	}
	return ok
}

// datapathAllows mimics the BPF program: an isolated endpoint's packet
// passes when a rule matches the remote's pod identity, its CIDR identity
// (longest prefix, else World) or any remote.
func datapathAllows(out Output, local, remote netip.Addr, dir Direction, proto uint8, port uint16) bool {
	ep, ok := out.Endpoints[local]
	if !ok {
		panic(fmt.Sprintf("%s is no endpoint", local))
	}
	isolated := ep.IngressIsolated
	if dir == Egress {
		isolated = ep.EgressIsolated
	}
	if !isolated {
		return true
	}
	remotes := []uint32{bpf.IdentityAny, cidrIdentity(out, remote)}
	if id, ok := out.IPCache[remote]; ok {
		if id == bpf.IdentityHost {
			return true
		}
		remotes = append(remotes, id)
	}
	for _, r := range remotes {
		if _, ok := out.Rules[Rule{Endpoint: ep.ID, Remote: r, Dir: dir}]; ok {
			return true
		}
		for bits := uint8(0); bits <= 16; bits++ {
			key := Rule{Endpoint: ep.ID, Remote: r, Dir: dir, Proto: proto, Port: port & portMask(bits), PortBits: bits}
			if _, ok := out.Rules[key]; ok {
				return true
			}
		}
	}
	return false
}

func cidrIdentity(out Output, addr netip.Addr) uint32 {
	id, best := bpf.IdentityWorld, -1
	for p, pid := range out.CIDRs {
		if p.Contains(addr) && p.Bits() > best {
			id, best = pid, p.Bits()
		}
	}
	return id
}

// kubernetes is the reference verdict, computed straight from the API
// objects as the NetworkPolicy documentation words it: no identities, no
// prefixes, no maps.
func (c *cluster) kubernetes(src, dst endpoint, proto v1.Protocol, port int32) bool {
	return c.k8sAllows(src, dst, Egress, proto, port) && c.k8sAllows(dst, src, Ingress, proto, port)
}

func (c *cluster) k8sAllows(self, remote endpoint, dir Direction, proto v1.Protocol, port int32) bool {
	// Only pods are isolated, and traffic with their own node always passes.
	if self.pod == nil || (remote.pod == nil && remote.node == self.node) {
		return true
	}
	isolating, allowing := c.k8sAttribution(self, remote, dir, proto, port)
	return len(isolating) == 0 || len(allowing) > 0
}

func selects(sel *metav1.LabelSelector, lbls map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		panic(err)
	}
	return s.Matches(labels.Set(lbls))
}

func (c *cluster) peersMatch(np *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, remote endpoint) bool {
	if len(peers) == 0 {
		return true
	}
	for _, pr := range peers {
		if b := pr.IPBlock; b != nil {
			in := netip.MustParsePrefix(b.CIDR).Contains(remote.addr)
			for _, e := range b.Except {
				in = in && !netip.MustParsePrefix(e).Contains(remote.addr)
			}
			if in {
				return true
			}
			continue
		}
		if remote.pod == nil {
			continue
		}
		nsOK := remote.pod.Namespace == np.Namespace
		if pr.NamespaceSelector != nil {
			nsOK = selects(pr.NamespaceSelector, c.namespaceLabels(remote.pod.Namespace))
		}
		if nsOK && (pr.PodSelector == nil || selects(pr.PodSelector, remote.pod.Labels)) {
			return true
		}
	}
	return false
}

// portsMatch checks the ports; a named port resolves on pod (the
// destination), and on nothing that is not a pod.
func portsMatch(ports []networkingv1.NetworkPolicyPort, pod *v1.Pod, proto v1.Protocol, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		pproto := v1.ProtocolTCP
		if p.Protocol != nil {
			pproto = *p.Protocol
		}
		if pproto != proto {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.StrVal != "":
			if pod == nil {
				continue
			}
			for _, ctr := range pod.Spec.Containers {
				for _, cp := range ctr.Ports {
					if cp.Name == p.Port.StrVal && cp.Protocol == proto && cp.ContainerPort == port {
						return true
					}
				}
			}
		default:
			end := p.Port.IntVal
			if p.EndPort != nil {
				end = *p.EndPort
			}
			if p.Port.IntVal <= port && port <= end {
				return true
			}
		}
	}
	return false
}

var protocols = map[string]struct {
	num uint8
	k8s v1.Protocol
}{
	"tcp":  {bpf.ProtoTCP, v1.ProtocolTCP},
	"udp":  {bpf.ProtoUDP, v1.ProtocolUDP},
	"sctp": {bpf.ProtoSCTP, v1.ProtocolSCTP},
}

// check asserts verdicts written "src > dst proto:port allow|deny", src and
// dst being "ns/pod" or an address; a pod's address is the family of the
// other side (IPv4 between two pods). Each is asserted on the compiled maps
// and on the reference, which keeps the reference honest.
func (c *cluster) check(t *testing.T, verdicts ...string) {
	t.Helper()
	for _, v := range verdicts {
		f := strings.Fields(v)
		if len(f) != 5 || f[1] != ">" || (f[4] != "allow" && f[4] != "deny") {
			t.Fatalf("bad verdict %q", v)
		}
		v6 := false
		for _, s := range []string{f[0], f[2]} {
			if a, err := netip.ParseAddr(s); err == nil {
				v6 = a.Is6()
			}
		}
		src, ok1 := c.endpoint(f[0], v6)
		dst, ok2 := c.endpoint(f[2], v6)
		protoName, portStr, _ := strings.Cut(f[3], ":")
		proto, ok3 := protocols[protoName]
		port, err := strconv.ParseUint(portStr, 10, 16)
		if !ok1 || !ok2 || !ok3 || err != nil {
			t.Fatalf("bad verdict %q", v)
		}
		want := f[4] == "allow"
		if got := c.datapath(src, dst, proto.num, uint16(port)); got != want {
			t.Errorf("%s: datapath says %v", v, verdict(got))
		}
		if got := c.kubernetes(src, dst, proto.k8s, int32(port)); got != want {
			t.Errorf("%s: reference says %v", v, verdict(got))
		}
	}
}

type verdict bool

func (v verdict) String() string {
	if v {
		return "allow"
	}
	return "deny"
}

// Addresses and ports the full matrix probes besides the pods.
var (
	probeAddrs = []string{"8.8.8.8", "10.9.9.9", "10.0.2.99", "172.16.5.5", "192.168.0.1", "192.168.0.2", "2001:db8::1", "fd00::2:99", "fd00:ff::1"}
	probePorts = []string{"tcp:80", "tcp:443", "tcp:5432", "tcp:5433", "tcp:7999", "tcp:8000", "tcp:8080", "tcp:8081", "tcp:8099",
		"tcp:8100", "tcp:9090", "tcp:53", "udp:53", "udp:54", "udp:8080", "sctp:7000", "sctp:7001"}
)

// probeEndpoints are the endpoints crossCheck and checkAttribution pair:
// every included pod address and every probe address.
func (c *cluster) probeEndpoints() []endpoint {
	var eps []endpoint
	for _, p := range c.pods {
		if !included(p) {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			ep, _ := c.endpoint(ip.IP, false)
			eps = append(eps, ep)
		}
	}
	for _, s := range probeAddrs {
		ep, _ := c.endpoint(s, false)
		eps = append(eps, ep)
	}
	return eps
}

// crossCheck compares the compiled maps with the reference on every pair
// of endpoints (pod addresses and probe addresses, same family) and every
// probe port.
func (c *cluster) crossCheck(t *testing.T) {
	t.Helper()
	eps := c.probeEndpoints()
	failures := 0
	for _, src := range eps {
		for _, dst := range eps {
			if src.addr == dst.addr || src.addr.Is6() != dst.addr.Is6() || (src.pod == nil && dst.pod == nil) {
				continue
			}
			for _, pp := range probePorts {
				name, portStr, _ := strings.Cut(pp, ":")
				port, _ := strconv.Atoi(portStr)
				proto := protocols[name]
				got := c.datapath(src, dst, proto.num, uint16(port))
				want := c.kubernetes(src, dst, proto.k8s, int32(port))
				if got != want {
					if failures++; failures <= 10 {
						t.Errorf("%s > %s %s: datapath says %v, Kubernetes %v", src.addr, dst.addr, pp, verdict(got), verdict(want))
					}
				}
			}
		}
	}
	if failures > 10 {
		t.Errorf("... %d mismatches in all", failures)
	}
}

func parsePolicies(t *testing.T, docs string) []*networkingv1.NetworkPolicy {
	t.Helper()
	var out []*networkingv1.NetworkPolicy
	for doc := range strings.SplitSeq(docs, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		np := &networkingv1.NetworkPolicy{}
		if err := yaml.UnmarshalStrict([]byte(doc), np); err != nil {
			t.Fatalf("policy %q: %v", doc, err)
		}
		out = append(out, np)
	}
	return out
}

// verdictTable is the verdict-table fixtures: policies on the model
// cluster and verdicts they must give, each attributed to the policies
// that decide it (TestVerdicts).
var verdictTable = []struct {
	name     string
	policies string
	mutate   func(c *cluster)
	verdicts []string
}{{
	name: "no policy allows everything",
	verdicts: []string{
		"alpha/web > beta/db tcp:5432 allow",
		"8.8.8.8 > gamma/cache udp:53 allow",
		"alpha/web > 8.8.8.8 tcp:443 allow",
		"fd00::1:10 > 2001:db8::1 tcp:443 allow",
	},
}, {
	name: "default deny ingress",
	policies: `
metadata: {namespace: beta, name: deny-in}
spec: {podSelector: {}, policyTypes: [Ingress]}`,
	verdicts: []string{
		"alpha/web > beta/db tcp:5432 deny",
		"beta/web > beta/db tcp:5432 deny",
		"8.8.8.8 > beta/web tcp:9090 deny",
		"beta/db > alpha/web tcp:8080 allow", // egress not isolated
		"beta/db > 8.8.8.8 tcp:443 allow",
		"alpha/web > gamma/web tcp:8080 allow", // other namespace
		"192.168.0.1 > beta/db tcp:5432 allow", // own node (beta/db runs on node-a)
		"192.168.0.2 > beta/db tcp:5432 deny",  // another node
		"192.168.0.2 > beta/web tcp:9090 allow",
	},
}, {
	name: "no policyTypes: ingress, and egress because it has egress rules",
	policies: `
metadata: {namespace: alpha, name: implicit}
spec:
  podSelector: {}
  egress: [{to: [{podSelector: {}}]}]`,
	verdicts: []string{
		"beta/web > alpha/web tcp:8080 deny",
		"alpha/db > alpha/web tcp:8080 deny", // isolated for ingress, no ingress rule
		"alpha/web > beta/web tcp:9090 deny",
		"alpha/web > 192.168.0.1 tcp:10250 allow",
	},
}, {
	name: "default deny egress",
	policies: `
metadata: {namespace: alpha, name: deny-out}
spec: {podSelector: {}, policyTypes: [Egress]}`,
	verdicts: []string{
		"alpha/web > beta/db tcp:5432 deny",
		"alpha/web > alpha/cache udp:53 deny",
		"alpha/web > 8.8.8.8 tcp:443 deny",
		"fd00::1:10 > 2001:db8::1 tcp:443 deny",
		"beta/db > alpha/web tcp:8080 allow", // ingress not isolated
		"alpha/web > 192.168.0.1 tcp:6443 allow",
		"alpha/web > fd00:ff::1 tcp:6443 allow",
		"alpha/db > 192.168.0.2 tcp:6443 allow",
		"alpha/db > 192.168.0.1 tcp:6443 deny",
	},
}, {
	name: "podSelector alone is the policy's namespace",
	policies: `
metadata: {namespace: beta, name: web-to-db}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]`,
	verdicts: []string{
		"beta/web > beta/db tcp:5432 allow",
		"beta/cache > beta/db tcp:5432 deny",
		"alpha/web > beta/db tcp:5432 deny",
		"beta/web > beta/cache tcp:8081 allow", // not selected
	},
}, {
	name: "namespaceSelector alone is every pod there",
	policies: `
metadata: {namespace: beta, name: from-team-a}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]`,
	verdicts: []string{
		"alpha/web > beta/db tcp:5432 allow",
		"alpha/cache > beta/db tcp:5432 allow",
		"beta/web > beta/db tcp:5432 deny",
		"gamma/web > beta/db tcp:5432 deny",
		"10.9.9.9 > beta/db tcp:5432 deny",
	},
}, {
	name: "one peer with both selectors: AND",
	policies: `
metadata: {namespace: gamma, name: and}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {matchLabels: {app: web}}`,
	verdicts: []string{
		"alpha/web > gamma/db tcp:5432 allow",
		"alpha/cache > gamma/db tcp:5432 deny", // right namespace, wrong pod
		"gamma/web > gamma/db tcp:5432 deny",   // right pod, wrong namespace
		"beta/web > gamma/db tcp:5432 deny",
	},
}, {
	name: "two peers: OR",
	policies: `
metadata: {namespace: gamma, name: or}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
    - podSelector: {matchLabels: {app: web}}`,
	verdicts: []string{
		"alpha/web > gamma/db tcp:5432 allow",
		"alpha/cache > gamma/db tcp:5432 allow",
		"gamma/web > gamma/db tcp:5432 allow",
		"gamma/cache > gamma/db tcp:5432 deny",
		"beta/web > gamma/db tcp:5432 deny",
	},
}, {
	name: "namespaceSelector with matchExpressions AND podSelector, egress",
	policies: `
metadata: {namespace: alpha, name: to-prod-dbs}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [prod]}]}
      podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web, cache]}]}`,
	verdicts: []string{
		"alpha/web > alpha/db tcp:5432 allow",
		"alpha/web > beta/db sctp:7000 allow",
		"alpha/web > gamma/db tcp:5432 deny", // env=dev
		"alpha/web > beta/cache udp:53 deny",
		"alpha/web > delta/probe tcp:80 deny", // no namespace labels
	},
}, {
	name: "empty podSelector: the whole namespace",
	policies: `
metadata: {namespace: beta, name: same-ns}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {}}]}]`,
	verdicts: []string{
		"beta/web > beta/db tcp:5432 allow",
		"beta/cache > beta/db udp:53 allow",
		"alpha/web > beta/db tcp:5432 deny",
	},
}, {
	name: "empty namespaceSelector: every pod, not every address",
	policies: `
metadata: {namespace: beta, name: all-pods}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {}}]}]`,
	verdicts: []string{
		"alpha/web > beta/db tcp:5432 allow",
		"delta/probe > beta/db tcp:5432 allow", // a namespace without object
		"8.8.8.8 > beta/db tcp:5432 deny",
		"10.0.2.99 > beta/db tcp:5432 deny",
		"192.168.0.2 > beta/db tcp:5432 deny",
	},
}, {
	name: "both selectors empty: every pod",
	policies: `
metadata: {namespace: beta, name: all-pods}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {}}]}]`,
	verdicts: []string{
		"gamma/cache > beta/db tcp:5432 allow",
		"8.8.8.8 > beta/db tcp:5432 deny",
	},
}, {
	name: "ipBlock with except, and a /32 to a pod",
	policies: `
metadata: {namespace: alpha, name: egress-blocks}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.2.0/24]}}]
  - to: [{ipBlock: {cidr: 10.0.2.11/32}}]
    ports: [{port: 5432}]
  - to: [{ipBlock: {cidr: "fd00::/16", except: ["fd00::2:0/112"]}}]
---
metadata: {namespace: gamma, name: ingress-block}
spec:
  podSelector: {matchLabels: {app: cache}}
  ingress: [{from: [{ipBlock: {cidr: 8.8.8.0/24}}]}]`,
	verdicts: []string{
		"alpha/web > gamma/db tcp:5432 allow",
		"alpha/web > 10.9.9.9 tcp:443 allow",
		"alpha/web > beta/web tcp:9090 deny", // in the except
		"alpha/web > 10.0.2.99 tcp:80 deny",
		"alpha/web > beta/db tcp:5432 allow", // the /32
		"alpha/web > beta/db tcp:5433 deny",
		"alpha/web > 8.8.8.8 tcp:443 deny",
		"alpha/web > 172.16.5.5 tcp:443 deny",
		"fd00::1:10 > 2001:db8::1 tcp:443 deny",
		"fd00::1:10 > fd00::2:99 tcp:443 deny",
		"fd00::1:10 > fd00:ff::2 tcp:443 allow", // node-b, in fd00::/16
		"8.8.8.8 > gamma/cache udp:53 allow",
		"alpha/web > gamma/cache udp:53 deny",
	},
}, {
	name: "no from: every remote, on the ports given",
	policies: `
metadata: {namespace: beta, name: sql-from-anywhere}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{ports: [{port: 5432}]}]`,
	verdicts: []string{
		"8.8.8.8 > beta/db tcp:5432 allow",
		"gamma/web > beta/db tcp:5432 allow",
		"gamma/web > beta/db tcp:5433 deny",
		"gamma/web > beta/db udp:5432 deny",
	},
}, {
	name: "empty rule allows everything; empty from list too",
	policies: `
metadata: {namespace: beta, name: allow-all}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{}]
---
metadata: {namespace: beta, name: allow-all-out}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [], ports: []}]`,
	verdicts: []string{
		"8.8.8.8 > beta/db sctp:7001 allow",
		"beta/web > 8.8.8.8 udp:54 allow",
	},
}, {
	name: "named port on ingress resolves on the selected pod",
	policies: `
metadata: {namespace: alpha, name: http}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}]}]
---
metadata: {namespace: beta, name: http}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}, {port: http, protocol: UDP}]}]`,
	verdicts: []string{
		"gamma/web > alpha/web tcp:8080 allow",
		"gamma/web > alpha/web tcp:9090 deny",
		"gamma/web > alpha/cache tcp:8081 allow",
		"gamma/web > alpha/cache tcp:8080 deny",
		"gamma/web > beta/web tcp:9090 allow",
		"gamma/web > beta/web tcp:8080 deny",
		"gamma/web > beta/web udp:9090 deny", // no UDP port named http
		"gamma/web > alpha/db tcp:8080 deny", // no port named http
	},
}, {
	name: "endPort range, edges",
	policies: `
metadata: {namespace: alpha, name: range}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 8000, endPort: 8099}]}]`,
	verdicts: []string{
		"beta/web > alpha/web tcp:7999 deny",
		"beta/web > alpha/web tcp:8000 allow",
		"beta/web > alpha/web tcp:8050 allow",
		"beta/web > alpha/web tcp:8080 allow",
		"beta/web > alpha/web tcp:8099 allow",
		"beta/web > alpha/web tcp:8100 deny",
		"beta/web > alpha/web udp:8080 deny",
	},
}, {
	name: "UDP, SCTP, protocol without port, protocol mismatch",
	policies: `
metadata: {namespace: gamma, name: dns}
spec:
  podSelector: {matchLabels: {app: cache}}
  ingress: [{ports: [{protocol: UDP, port: 53}]}]
---
metadata: {namespace: beta, name: replication}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{ports: [{protocol: SCTP, port: 7000}, {protocol: UDP}]}]`,
	verdicts: []string{
		"alpha/web > gamma/cache udp:53 allow",
		"alpha/web > gamma/cache tcp:53 deny",
		"alpha/web > gamma/cache udp:54 deny",
		"alpha/db > beta/db sctp:7000 allow",
		"alpha/db > beta/db sctp:7001 deny",
		"alpha/db > beta/db tcp:7000 deny",
		"alpha/db > beta/db udp:7000 allow",
		"alpha/db > beta/db udp:8080 allow",
	},
}, {
	name: "policies add up, each rule with its own ports",
	policies: `
metadata: {namespace: beta, name: sql-from-alpha}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
    ports: [{port: 5432}]
---
metadata: {namespace: beta, name: rep-from-gamma}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: c}}}]
    ports: [{port: 7000, protocol: SCTP}]`,
	verdicts: []string{
		"alpha/web > beta/db tcp:5432 allow",
		"alpha/web > beta/db sctp:7000 deny",
		"gamma/db > beta/db sctp:7000 allow",
		"gamma/db > beta/db tcp:5432 deny",
		"beta/web > beta/db tcp:5432 deny",
	},
}, {
	name: "isolation adds up across policies",
	policies: `
metadata: {namespace: beta, name: a-deny-out}
spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Egress]}
---
metadata: {namespace: beta, name: b-web-in}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]`,
	verdicts: []string{
		"beta/db > 8.8.8.8 tcp:443 deny",
		"beta/web > beta/db tcp:5432 allow",
		"beta/cache > beta/db tcp:5432 deny",
		"beta/web > 8.8.8.8 tcp:443 allow",
	},
}, {
	name: "policies selecting different pods",
	policies: `
metadata: {namespace: beta, name: deny-db}
spec: {podSelector: {matchLabels: {app: db}}}
---
metadata: {namespace: beta, name: web-from-alpha}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]`,
	verdicts: []string{
		"alpha/web > beta/db tcp:5432 deny",
		"alpha/web > beta/web tcp:9090 allow",
		"gamma/web > beta/web tcp:9090 deny",
		"gamma/web > beta/cache tcp:8081 allow", // selected by neither
	},
}, {
	name: "egress named port resolves on the destination pod",
	policies: `
metadata: {namespace: alpha, name: to-web-http}
spec:
  podSelector: {matchLabels: {app: cache}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]`,
	verdicts: []string{
		"alpha/cache > alpha/web tcp:8080 allow",
		"alpha/cache > beta/web tcp:9090 allow",
		"alpha/cache > beta/web tcp:8080 deny",
		"alpha/cache > gamma/web tcp:8080 allow",
		"alpha/cache > gamma/cache tcp:8081 deny", // has http, not selected
		"alpha/cache > alpha/db tcp:5432 deny",
	},
}, {
	name: "egress named port without to: any pod having the port (upstream e2e)",
	policies: `
metadata: {namespace: alpha, name: http-anywhere}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}, {port: dns, protocol: UDP}]}]`,
	verdicts: []string{
		"alpha/db > alpha/web tcp:8080 allow",
		"alpha/db > beta/web tcp:9090 allow",
		"alpha/db > beta/web tcp:8080 deny",
		"alpha/db > gamma/cache tcp:8081 allow",
		"alpha/db > gamma/cache udp:53 allow",
		"alpha/db > gamma/web udp:53 deny",
		"alpha/db > 8.8.8.8 tcp:8080 deny", // not a pod: no named ports
		"alpha/db > 8.8.8.8 udp:53 deny",
	},
}, {
	name: "same labels, different named port numbers",
	mutate: func(c *cluster) {
		c.pod("gamma/cache").Labels = map[string]string{"app": "web"}
	},
	policies: `
metadata: {namespace: alpha, name: to-gamma-http}
spec:
  podSelector: {matchLabels: {app: cache}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: c}}, podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]`,
	verdicts: []string{
		"alpha/cache > gamma/web tcp:8080 allow",
		"alpha/cache > gamma/web tcp:8081 deny",
		"alpha/cache > gamma/cache tcp:8081 allow",
		"alpha/cache > gamma/cache tcp:8080 deny",
	},
}, {
	name: "relabelled pod moves in and out of selections",
	mutate: func(c *cluster) {
		c.pod("beta/db").Labels = map[string]string{"app": "olddb"}
		c.pod("alpha/cache").Labels = map[string]string{"app": "web"}
	},
	policies: `
metadata: {namespace: beta, name: deny-db}
spec: {podSelector: {matchLabels: {app: db}}}
---
metadata: {namespace: beta, name: web-from-alpha-web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: web}}}]}]`,
	verdicts: []string{
		"gamma/web > beta/db tcp:5432 allow", // no longer app=db
		"alpha/cache > beta/web tcp:9090 allow",
		"alpha/web > beta/web tcp:9090 allow",
		"alpha/db > beta/web tcp:9090 deny",
	},
}, {
	name: "relabelled namespace",
	mutate: func(c *cluster) {
		c.namespaces[2].Labels = map[string]string{"team": "a"}
	},
	policies: `
metadata: {namespace: beta, name: from-team-a}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]`,
	verdicts: []string{
		"gamma/web > beta/db tcp:5432 allow",
		"alpha/web > beta/db tcp:5432 allow",
		"delta/probe > beta/db tcp:5432 deny",
	},
}, {
	name: "policy in a namespace without pods here, policies on other nodes' pods",
	policies: `
metadata: {namespace: delta, name: deny-all}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
metadata: {namespace: omega, name: deny-all}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}`,
	verdicts: []string{
		"alpha/web > delta/probe tcp:80 deny",
		"delta/probe > alpha/web tcp:8080 deny",
		"192.168.0.2 > delta/probe tcp:80 allow",
		"alpha/web > beta/web tcp:9090 allow",
	},
}}

// TestVerdicts checks every verdict table: the compiled maps against the
// table's verdicts and against Kubernetes' semantics on every pair of
// endpoints, and the policies the output names for each flow (the
// isolating ones of a denied flow, the allowing rules of an allowed one).
func TestVerdicts(t *testing.T) {
	for _, tt := range verdictTable {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster()
			if tt.mutate != nil {
				tt.mutate(c)
			}
			c.policies = parsePolicies(t, tt.policies)
			c.compile(t)
			c.check(t, tt.verdicts...)
			c.crossCheck(t)
			c.checkAttribution(t)
		})
	}
}

// snapshot is what must not move when only policies change.
func (c *cluster) snapshot() map[string]any {
	s := map[string]any{}
	for node, out := range c.outs {
		s[node+" ipcache"] = maps.Clone(out.IPCache)
		s[node+" endpoints"] = endpointIDs(out)
	}
	return s
}

func endpointIDs(out Output) map[netip.Addr]uint32 {
	ids := map[netip.Addr]uint32{}
	for a, ep := range out.Endpoints {
		ids[a] = ep.ID
	}
	return ids
}

func TestPolicyUpdateAndDelete(t *testing.T) {
	c := newCluster()
	c.policies = parsePolicies(t, `
metadata: {namespace: beta, name: db}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.1.0/24}}]}]`)
	c.compile(t)
	c.check(t,
		"alpha/web > beta/db tcp:5432 allow",
		"gamma/web > beta/db tcp:5432 deny",
	)
	before := c.snapshot()
	alphaBlock := c.outs[nodeA].CIDRs[netip.MustParsePrefix("10.0.1.0/24")]

	// Same name, new content: allow gamma instead, and by more blocks.
	c.policies = parsePolicies(t, `
metadata: {namespace: beta, name: db}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.3.0/24}}]
  - from: [{ipBlock: {cidr: 10.0.1.0/24}}]
    ports: [{port: 5433}]`)
	c.compile(t)
	c.check(t,
		"alpha/web > beta/db tcp:5432 deny",
		"alpha/web > beta/db tcp:5433 allow",
		"gamma/web > beta/db tcp:5432 allow",
	)
	c.crossCheck(t)
	if after := c.snapshot(); !reflect.DeepEqual(before, after) {
		t.Errorf("identities or endpoint IDs moved on a policy update:\n%v\n%v", before, after)
	}
	if got := c.outs[nodeA].CIDRs[netip.MustParsePrefix("10.0.1.0/24")]; got != alphaBlock {
		t.Errorf("CIDR identity of an unchanged block moved: %d -> %d", alphaBlock, got)
	}

	c.policies = nil
	c.compile(t)
	c.check(t,
		"alpha/web > beta/db tcp:5432 allow",
		"gamma/web > beta/db tcp:5432 allow",
	)
	if len(c.outs[nodeA].Rules) != 0 || len(c.outs[nodeA].CIDRs) != 0 {
		t.Errorf("rules or CIDRs left after deleting the policy: %v %v", c.outs[nodeA].Rules, c.outs[nodeA].CIDRs)
	}
	if after := c.snapshot(); !reflect.DeepEqual(before, after) {
		t.Errorf("identities or endpoint IDs moved on a policy deletion")
	}
}

func TestRelabelKeepsOtherIdentities(t *testing.T) {
	c := newCluster()
	c.compile(t)
	before := maps.Clone(c.outs[nodeA].IPCache)
	c.pod("beta/db").Labels = map[string]string{"app": "olddb"}
	c.compile(t)
	after := c.outs[nodeA].IPCache
	for addr, id := range before {
		moved := after[addr] != id
		if want := addr == netip.MustParseAddr("10.0.2.11"); moved != want {
			t.Errorf("%s: identity %d -> %d", addr, id, after[addr])
		}
	}
	// Other pods' identity numbers are not reused within a compile.
	for addr, id := range after {
		if addr != netip.MustParseAddr("10.0.2.11") && id == after[netip.MustParseAddr("10.0.2.11")] {
			t.Errorf("relabelled pod got %s's identity %d", addr, id)
		}
	}
}

func TestOutputContents(t *testing.T) {
	c := newCluster()
	c.compile(t)
	out := c.outs[nodeA]
	ident := func(addr string) uint32 { return out.IPCache[netip.MustParseAddr(addr)] }

	wantAddrs := []string{"10.0.1.10", "fd00::1:10", "10.0.1.11", "10.0.1.12", "10.0.2.10", "10.0.2.11", "10.0.2.12",
		"10.0.3.10", "10.0.3.11", "10.0.3.12", "10.0.4.10", "192.168.0.1", "fd00:ff::1"}
	var want []netip.Addr
	for _, s := range wantAddrs {
		want = append(want, netip.MustParseAddr(s))
	}
	if got := slices.SortedFunc(maps.Keys(out.IPCache), netip.Addr.Compare); !slices.Equal(got, slices.SortedFunc(slices.Values(want), netip.Addr.Compare)) {
		t.Errorf("ipcache holds %v, want %v (no host-network, finished or IP-less pods)", got, want)
	}
	if ident("192.168.0.1") != bpf.IdentityHost || ident("fd00:ff::1") != bpf.IdentityHost {
		t.Errorf("host addresses not bpf.IdentityHost")
	}
	if _, ok := out.IPCache[netip.MustParseAddr("192.168.0.2")]; ok {
		t.Errorf("another node's address in the ipcache")
	}
	if ident("10.0.1.10") != ident("fd00::1:10") {
		t.Errorf("a dual-stack pod has two identities")
	}
	// Same labels in different namespaces, or different labels in one:
	// different identities. Pod identities are in their range.
	seen := map[uint32]bool{}
	for _, s := range []string{"10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.2.10", "10.0.3.10", "10.0.4.10"} {
		id := ident(s)
		if seen[id] || id < firstPodIdentity || id >= firstCIDRIdentity {
			t.Errorf("%s: identity %d reused or out of range", s, id)
		}
		seen[id] = true
	}

	localAddrs := []string{"10.0.1.10", "fd00::1:10", "10.0.1.12", "10.0.2.11", "10.0.3.10", "10.0.3.12"}
	if len(out.Endpoints) != len(localAddrs) {
		t.Errorf("endpoints %v, want %v", out.Endpoints, localAddrs)
	}
	ids := map[uint32]bool{}
	for _, s := range localAddrs {
		ep, ok := out.Endpoints[netip.MustParseAddr(s)]
		if !ok || ep.ID == 0 || ids[ep.ID] || ep.IngressIsolated || ep.EgressIsolated {
			t.Errorf("endpoint %s: %+v, want a distinct ID, not isolated", s, ep)
		}
		ids[ep.ID] = true
	}
}

func TestDeterministic(t *testing.T) {
	c := newCluster()
	c.policies = parsePolicies(t, `
metadata: {namespace: alpha, name: a}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.2.0/24]}}, {ipBlock: {cidr: 10.0.1.0/24}}]}]
---
metadata: {namespace: beta, name: b}
spec:
  podSelector: {}
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16}}, {namespaceSelector: {}}], ports: [{port: http}]}]`)
	in := Input{NodeName: nodeA, HostAddrs: hostAddrs[nodeA], Pods: c.pods, Namespaces: c.namespaces, Policies: c.policies}
	want := Compile(in, NewAllocator())
	for i := range 5 {
		r := rand.New(rand.NewPCG(uint64(i), 1))
		shuffled := in
		shuffled.Pods = slices.Clone(in.Pods)
		shuffled.Policies = slices.Clone(in.Policies)
		r.Shuffle(len(shuffled.Pods), func(i, j int) { shuffled.Pods[i], shuffled.Pods[j] = shuffled.Pods[j], shuffled.Pods[i] })
		r.Shuffle(len(shuffled.Policies), func(i, j int) {
			shuffled.Policies[i], shuffled.Policies[j] = shuffled.Policies[j], shuffled.Policies[i]
		})
		if got := Compile(shuffled, NewAllocator()); !reflect.DeepEqual(got, want) {
			t.Fatalf("input order changed the output")
		}
	}
}

func TestAddressClaimedTwice(t *testing.T) {
	c := newCluster()
	// beta/old still reports the address beta/db got after it.
	old := podObj("beta", "old", nodeA, map[string]string{"app": "old"}, []string{"10.0.2.11"})
	old.DeletionTimestamp = &metav1.Time{}
	c.pods = append([]*v1.Pod{old}, c.pods...)
	// aaa/dup reports the same address as gamma/web, neither deleting: the
	// first by namespace and name wins, whatever the input order.
	dup := podObj("aaa", "dup", nodeB, map[string]string{"app": "dup"}, []string{"10.0.3.10"})
	c.pods = append(c.pods, dup)
	c.policies = parsePolicies(t, `
metadata: {namespace: beta, name: from-db}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}]}]`)
	c.compile(t)
	out := c.outs[nodeA]
	if _, ok := out.Endpoints[netip.MustParseAddr("10.0.2.11")]; !ok {
		t.Errorf("10.0.2.11 is no endpoint")
	}
	c.check(t, "10.0.2.11 > beta/web tcp:9090 allow")
	// gamma/web's address belongs to aaa/dup (sorted first), on node-b: it
	// is no endpoint here.
	if _, ok := out.Endpoints[netip.MustParseAddr("10.0.3.10")]; ok {
		t.Errorf("10.0.3.10 is an endpoint of a pod that lost the address")
	}
}

func TestInvalidPoliciesAreSkippedAndReported(t *testing.T) {
	c := newCluster()
	c.policies = parsePolicies(t, `
metadata: {namespace: beta, name: bad-selector}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Bogus}]}
---
metadata: {namespace: beta, name: bad-peer}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}, {namespaceSelector: {matchExpressions: [{key: team, operator: In}]}}]}]
---
metadata: {namespace: beta, name: bad-cidr}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/33]}}]}]
---
metadata: {namespace: beta, name: bad-range}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 9000, endPort: 8000}]}]
---
metadata: {namespace: beta, name: bad-protocol}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80, protocol: ICMP}]}]
---
metadata: {namespace: beta, name: empty-peer}
spec:
  podSelector: {}
  ingress: [{from: [{}]}]
---
metadata: {namespace: alpha, name: good}
spec: {podSelector: {}}`)
	out := Compile(Input{NodeName: nodeA, HostAddrs: hostAddrs[nodeA], Pods: c.pods, Namespaces: c.namespaces, Policies: c.policies}, NewAllocator())
	var got []string
	for _, err := range out.Errors {
		got = append(got, err.Error())
	}
	want := []string{
		"NetworkPolicy beta/bad-cidr: spec.egress[0].to[0].ipBlock.except[0]",
		"NetworkPolicy beta/bad-peer: spec.ingress[0].from[1].namespaceSelector",
		"NetworkPolicy beta/bad-protocol: spec.ingress[0].ports[0]",
		"NetworkPolicy beta/bad-range: spec.ingress[0].ports[0]",
		"NetworkPolicy beta/bad-selector: spec.podSelector",
		"NetworkPolicy beta/empty-peer: spec.ingress[0].from[0]",
	}
	if len(got) != len(want) {
		t.Fatalf("errors:\n%s\nwant %d", strings.Join(got, "\n"), len(want))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]+": ") {
			t.Errorf("error %q, want %q...", got[i], want[i])
		}
	}
	// The bad policies are skipped (beta stays open, and the bad ipBlock
	// left no prefix); the good one applies.
	if ep := out.Endpoints[netip.MustParseAddr("10.0.2.11")]; ep.IngressIsolated || ep.EgressIsolated {
		t.Errorf("beta/db isolated by invalid policies: %+v", ep)
	}
	if len(out.CIDRs) != 0 {
		t.Errorf("CIDRs from an invalid policy: %v", out.CIDRs)
	}
	if ep := out.Endpoints[netip.MustParseAddr("10.0.1.10")]; !ep.IngressIsolated {
		t.Errorf("alpha/web not isolated by the valid policy")
	}
}

// An ipBlock names addresses, not pods: a named port cannot resolve
// through it (or through its CIDR identity, which may cover pods and
// non-pods alike), so it allows nothing. Kubernetes leaves this case open.
func TestEgressNamedPortThroughIPBlockAllowsNothing(t *testing.T) {
	c := newCluster()
	c.policies = parsePolicies(t, `
metadata: {namespace: alpha, name: named-to-block}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: http}]}]`)
	c.compile(t)
	out := c.outs[nodeA]
	ep := out.Endpoints[netip.MustParseAddr("10.0.1.10")]
	if !ep.EgressIsolated {
		t.Fatalf("alpha/web not isolated for egress")
	}
	for r := range out.Rules {
		if r.Endpoint == ep.ID {
			t.Errorf("rule %v from a named port through an ipBlock", r)
		}
	}
}
