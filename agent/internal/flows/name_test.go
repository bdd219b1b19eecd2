package flows

import (
	"context"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"

	"github.com/sluice-net/sluice/agent/internal/netpol/compile"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/observeapi"
)

// The fixture: node-a runs alpha/web and beta/db; gamma/web runs on
// node-b. beta/db admits alpha's pods on 5432 and may send nothing;
// alpha/web may send only to beta/db's sql port.
const (
	nodeA = "node-a"
	nodeB = "node-b"
)

var fixturePolicies = `
metadata: {namespace: beta, name: sql-from-alpha}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
    ports: [{port: 5432}]
---
metadata: {namespace: beta, name: deny-out}
spec: {podSelector: {}, policyTypes: [Egress]}
---
metadata: {namespace: alpha, name: web-to-db}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: db}}}]
    ports: [{port: sql}]`

func pod(ns, name, node, app, ip string, ports ...v1.ContainerPort) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": app}},
		Spec:       v1.PodSpec{NodeName: node, Containers: []v1.Container{{Name: "main", Ports: ports}}},
		Status:     v1.PodStatus{Phase: v1.PodRunning, PodIP: ip, PodIPs: []v1.PodIP{{IP: ip}}},
	}
}

type fixture struct {
	out     compile.Output
	lookup  *Cluster
	namer   *Namer
	clock   *fakeClock
	webEP   uint32 // alpha/web's endpoint
	dbEP    uint32 // beta/db's endpoint
	svcName map[uint32]string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	nss := []*v1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "alpha", Labels: map[string]string{"team": "a"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "beta", Labels: map[string]string{"team": "b"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "gamma", Labels: map[string]string{"team": "c"}}},
	}
	pods := []*v1.Pod{
		pod("alpha", "web", nodeA, "web", "10.0.1.10"),
		pod("beta", "db", nodeA, "db", "10.0.2.11", v1.ContainerPort{Name: "sql", ContainerPort: 5432, Protocol: v1.ProtocolTCP}),
		pod("gamma", "web", nodeB, "web", "10.0.3.10"),
	}
	hostPod := pod("kube-system", "agent", nodeA, "agent", "192.168.0.1")
	hostPod.Spec.HostNetwork = true
	var policies []*networkingv1.NetworkPolicy
	for doc := range strings.SplitSeq(fixturePolicies, "\n---\n") {
		np := &networkingv1.NetworkPolicy{}
		if err := yaml.UnmarshalStrict([]byte(doc), np); err != nil {
			t.Fatal(err)
		}
		policies = append(policies, np)
	}
	f := &fixture{svcName: map[uint32]string{7: "beta/db:sql"}}
	f.out = compile.Compile(compile.Input{NodeName: nodeA, HostAddrs: []netip.Addr{netip.MustParseAddr("192.168.0.1")},
		Pods: pods, Namespaces: nss, Policies: policies}, compile.NewAllocator())
	if len(f.out.Errors) > 0 {
		t.Fatal(f.out.Errors)
	}
	f.webEP = f.out.Endpoints[netip.MustParseAddr("10.0.1.10")].ID
	f.dbEP = f.out.Endpoints[netip.MustParseAddr("10.0.2.11")].ID

	objs := []runtime.Object{hostPod}
	for _, p := range pods {
		objs = append(objs, p)
	}
	objs = append(objs,
		&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeA}, Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.0.1"}}}},
		&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeB}, Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.0.2"}}}})
	factory := informers.NewSharedInformerFactory(fake.NewClientset(objs...), 0)
	var err error
	f.lookup, err = NewCluster(factory, func() *compile.Output { return &f.out }, func(id uint32) string { return f.svcName[id] })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	f.clock = &fakeClock{now: time.Date(2026, 12, 1, 6, 0, 0, 0, time.UTC), mono: 1000 * uint64(time.Second)}
	f.namer = NewNamer(nodeA, f.lookup, f.clock)
	return f
}

type fakeClock struct {
	now  time.Time
	mono uint64
}

func (c *fakeClock) Now() time.Time    { return c.now }
func (c *fakeClock) Monotonic() uint64 { return c.mono }

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestNamePolicyDrop(t *testing.T) {
	f := newFixture(t)
	// gamma/web (another node) to beta/db: not in team a, dropped at
	// to_pod by the ingress policy.
	fl := f.namer.Name(Event{
		Time: f.clock.mono - uint64(1500*time.Millisecond), Type: EventDrop, Hook: uint8(bpf.HookToPod), Proto: bpf.ProtoTCP,
		Dir: bpf.PolicyIngress, Reason: uint16(bpf.DropPolicyIngress), Flags: FlagPolicy | FlagIsolated,
		Src: ap("10.0.3.10:40000"), Dst: ap("10.0.2.11:5432"), Endpoint: f.dbEP, Identity: f.out.IPCache[netip.MustParseAddr("10.0.3.10")],
		Suppressed: 3,
	})
	want := observeapi.Flow{
		Time: f.clock.now.Add(-1500 * time.Millisecond), Node: nodeA, Verdict: observeapi.VerdictDropped, Reason: "policy_ingress",
		Hook: "to_pod", Direction: "ingress", Proto: "tcp",
		Src:      observeapi.Addr{IP: "10.0.3.10", Port: 40000, Pod: "gamma/web"},
		Dst:      observeapi.Addr{IP: "10.0.2.11", Port: 5432, Pod: "beta/db"},
		Policies: []string{"beta/sql-from-alpha"}, Suppressed: 3,
	}
	checkFlow(t, fl, want)

	// beta/db's own egress to the outside: dropped by deny-out.
	fl = f.namer.Name(Event{
		Time: f.clock.mono, Type: EventDrop, Hook: uint8(bpf.HookFromPod), Proto: bpf.ProtoUDP,
		Dir: bpf.PolicyEgress, Reason: uint16(bpf.DropPolicyEgress), Flags: FlagPolicy | FlagIsolated,
		Src: ap("10.0.2.11:5353"), Dst: ap("192.168.0.2:53"), Endpoint: f.dbEP,
	})
	want = observeapi.Flow{
		Time: f.clock.now, Node: nodeA, Verdict: observeapi.VerdictDropped, Reason: "policy_egress",
		Hook: "from_pod", Direction: "egress", Proto: "udp",
		Src:      observeapi.Addr{IP: "10.0.2.11", Port: 5353, Pod: "beta/db"},
		Dst:      observeapi.Addr{IP: "192.168.0.2", Port: 53, Node: nodeB},
		Policies: []string{"beta/deny-out"},
	}
	checkFlow(t, fl, want)
}

func TestNameAllowedFlow(t *testing.T) {
	f := newFixture(t)
	fl := f.namer.Name(Event{
		Time: f.clock.mono, Type: EventTrace, Reason: TracePolicy, Hook: uint8(bpf.HookToPod), Proto: bpf.ProtoTCP,
		Dir: bpf.PolicyIngress, Flags: FlagPolicy | FlagIsolated, Src: ap("10.0.1.10:40000"), Dst: ap("10.0.2.11:5432"),
		Endpoint: f.dbEP, Identity: f.out.IPCache[netip.MustParseAddr("10.0.1.10")], Matched: f.out.IPCache[netip.MustParseAddr("10.0.1.10")],
	})
	want := observeapi.Flow{
		Time: f.clock.now, Node: nodeA, Verdict: observeapi.VerdictForwarded, Hook: "to_pod", Direction: "ingress", Proto: "tcp",
		Src:      observeapi.Addr{IP: "10.0.1.10", Port: 40000, Pod: "alpha/web"},
		Dst:      observeapi.Addr{IP: "10.0.2.11", Port: 5432, Pod: "beta/db"},
		Policies: []string{"beta/sql-from-alpha[ingress 0]"},
	}
	checkFlow(t, fl, want)

	// The node itself is let in without a rule: no policy to name.
	fl = f.namer.Name(Event{
		Time: f.clock.mono, Type: EventTrace, Reason: TracePolicy, Hook: uint8(bpf.HookToPod), Proto: bpf.ProtoTCP,
		Dir: bpf.PolicyIngress, Flags: FlagPolicy | FlagIsolated, Src: ap("192.168.0.1:40000"), Dst: ap("10.0.2.11:5432"),
		Endpoint: f.dbEP, Identity: bpf.IdentityHost, Matched: bpf.IdentityHost,
	})
	if fl.Policies != nil || fl.Src.Node != nodeA || fl.Src.Pod != "" {
		t.Errorf("host to beta/db: %+v, want the node named and no policy", fl)
	}
}

func TestNameServiceFlow(t *testing.T) {
	f := newFixture(t)
	// alpha/web connects to beta/db's Service; from_pod picks beta/db and
	// judges the flow with alpha/web's egress policy (a named port).
	fl := f.namer.Name(Event{
		Time: f.clock.mono, Type: EventTrace, Reason: TraceService, Hook: uint8(bpf.HookFromPod), Proto: bpf.ProtoTCP,
		Dir: bpf.PolicyEgress, Flags: FlagPolicy | FlagIsolated, Src: ap("10.0.1.10:40000"), Dst: ap("10.96.0.10:80"),
		NAT: ap("10.0.2.11:5432"), SvcID: 7, BackendID: 3, Endpoint: f.webEP,
		Identity: f.out.IPCache[netip.MustParseAddr("10.0.2.11")], Matched: f.out.IPCache[netip.MustParseAddr("10.0.2.11")],
	})
	want := observeapi.Flow{
		Time: f.clock.now, Node: nodeA, Verdict: observeapi.VerdictTranslated, Hook: "from_pod", Direction: "egress", Proto: "tcp",
		Src:      observeapi.Addr{IP: "10.0.1.10", Port: 40000, Pod: "alpha/web"},
		Dst:      observeapi.Addr{IP: "10.96.0.10", Port: 80},
		Service:  "beta/db:sql",
		Backend:  &observeapi.Addr{IP: "10.0.2.11", Port: 5432, Pod: "beta/db"},
		Policies: []string{"alpha/web-to-db[egress 0]"},
	}
	checkFlow(t, fl, want)

	// The same without policy (alpha/web not isolated): translated only.
	fl = f.namer.Name(Event{
		Time: f.clock.mono, Type: EventTrace, Reason: TraceService, Hook: uint8(bpf.HookFromNetdev), Proto: bpf.ProtoUDP,
		Src: ap("192.168.0.2:40000"), Dst: ap("192.168.0.1:30053"), NAT: ap("10.0.2.11:53"), SvcID: 8,
	})
	if fl.Verdict != observeapi.VerdictTranslated || fl.Service != "" || fl.Backend == nil || fl.Backend.Pod != "beta/db" ||
		fl.Direction != "" || fl.Policies != nil || fl.Src.Node != nodeB || fl.Dst.Node != nodeA {
		t.Errorf("NodePort flow of an unknown service: %+v", fl)
	}

	// Translated at alpha/web's socket: the hook says so.
	fl = f.namer.Name(Event{
		Time: f.clock.mono, Type: EventTrace, Reason: TraceService, Hook: uint8(bpf.HookFromPod), Proto: bpf.ProtoTCP,
		Flags: FlagSocket, Src: ap("10.0.1.10:0"), Dst: ap("10.96.0.10:80"), NAT: ap("10.0.2.11:5432"), SvcID: 7,
	})
	if fl.Verdict != observeapi.VerdictTranslated || fl.Hook != HookSocket || fl.Src.Pod != "alpha/web" || fl.Service != "beta/db:sql" ||
		fl.Backend == nil || fl.Backend.Pod != "beta/db" || fl.Direction != "" {
		t.Errorf("flow translated at the socket: %+v", fl)
	}
}

func TestWallClock(t *testing.T) {
	c := &fakeClock{now: time.Date(2026, 12, 1, 6, 0, 0, 0, time.UTC), mono: 5 * uint64(time.Second)}
	n := NewNamer(nodeA, &Cluster{policy: func() *compile.Output { return nil }}, c)
	for _, tc := range []struct {
		mono uint64
		want time.Time
	}{
		{5 * uint64(time.Second), c.now},
		{4*uint64(time.Second) + 1, c.now.Add(-time.Second + 1)},
		{6 * uint64(time.Second), c.now.Add(time.Second)}, // read after the clocks: later
	} {
		if got := n.wall(tc.mono); !got.Equal(tc.want) {
			t.Errorf("monotonic %d: %v, want %v", tc.mono, got, tc.want)
		}
	}
}

func checkFlow(t *testing.T, got, want observeapi.Flow) {
	t.Helper()
	if !got.Time.Equal(want.Time) {
		t.Errorf("time %v, want %v", got.Time, want.Time)
	}
	got.Time, want.Time = time.Time{}, time.Time{}
	if (got.Backend == nil) != (want.Backend == nil) || (got.Backend != nil && *got.Backend != *want.Backend) {
		t.Errorf("backend %+v, want %+v", got.Backend, want.Backend)
	}
	got.Backend, want.Backend = nil, nil
	if !slices.Equal(got.Policies, want.Policies) {
		t.Errorf("policies %q, want %q", got.Policies, want.Policies)
	}
	got.Policies, want.Policies = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("flow\n%+v\nwant\n%+v", got, want)
	}
}

// An address two pods report (a finished or terminating pod and its
// successor) names the live one; a host-network pod's address is its
// node's.
func TestPodByAddress(t *testing.T) {
	done := pod("aaa", "done", nodeA, "x", "10.0.9.1")
	done.Status.Phase = v1.PodSucceeded
	leaving := pod("aaa", "leaving", nodeA, "x", "10.0.9.1")
	leaving.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	live := pod("zzz", "live", nodeA, "x", "10.0.9.1")
	host := pod("kube-system", "agent", nodeA, "agent", "192.168.0.1")
	host.Spec.HostNetwork = true
	v6 := pod("six", "pod", nodeA, "x", "fd00::9:1")
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeA}, Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.0.1"}}}}
	factory := informers.NewSharedInformerFactory(fake.NewClientset(done, leaving, live, host, v6, node), 0)
	c, err := NewCluster(factory, func() *compile.Output { return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	for addr, want := range map[string]string{"10.0.9.1": "zzz/live", "192.168.0.1": "", "fd00::9:1": "six/pod", "::ffff:10.0.9.1": "zzz/live", "10.0.9.2": ""} {
		if got := c.Pod(netip.MustParseAddr(addr)); got != want {
			t.Errorf("pod at %s: %q, want %q", addr, got, want)
		}
	}
	if got := c.Node(netip.MustParseAddr("192.168.0.1")); got != nodeA {
		t.Errorf("node at 192.168.0.1: %q", got)
	}
	if c.Service(1) != "" || c.Isolating(1, bpf.PolicyIngress) != nil || c.Allowing(1, bpf.PolicyIngress, netip.MustParseAddr("10.0.9.1"), 6, 80, 0) != nil {
		t.Errorf("names without a service controller or compiled policy")
	}
}
