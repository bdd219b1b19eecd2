package flows

import (
	"context"
	"fmt"
	"net"
	"net/netip"
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

	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/netpol/compile"
	"github.com/sluice-net/sluice/agent/internal/netpol/mapsync"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
	"github.com/sluice-net/sluice/internal/observeapi"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

// TestDatapathFlowsNamed: real packets between two pod namespaces behind
// the datapath, policy compiled and written by the agent's own compiler
// and writer: a connection the policy denies comes out of the ring as a
// dropped flow naming both pods, the reason and the isolating policy; once
// a policy admits it, as a forwarded flow naming the rule.
func TestDatapathFlowsNamed(t *testing.T) {
	dp := bpftest.Load(t, bpf.Config{})
	node := netnstest.New(t, "sl-flownode")
	node.Sysctl(t, "net.ipv4.ip_forward=1")
	type netPod struct {
		pod *v1.Pod
		ns  *netnstest.NS
		dev string
	}
	var pods []netPod
	for i, name := range []string{"alpha/client", "beta/web"} {
		ns, n, _ := strings.Cut(name, "/")
		addr := fmt.Sprintf("10.201.%d.2", i+1)
		p := netPod{pod: pod(ns, n, "node-a", n, addr), ns: netnstest.New(t, "sl-flowpod"), dev: fmt.Sprintf("hflow%d", i+1)}
		node.VethPair(t, p.dev, p.ns, "eth0")
		node.IP(t, "addr", "add", fmt.Sprintf("10.201.%d.1/24", i+1), "dev", p.dev)
		p.ns.IP(t, "addr", "add", addr+"/24", "dev", "eth0")
		p.ns.IP(t, "route", "add", "default", "via", fmt.Sprintf("10.201.%d.1", i+1))
		node.Do(t, func() {
			if err := dp.AttachPod(p.dev, bpf.AttachAuto); err != nil {
				t.Fatalf("attach %s: %v", p.dev, err)
			}
			l, err := net.InterfaceByName(p.dev)
			if err != nil {
				t.Fatal(err)
			}
			if err := dp.RecordEndpoint(uint32(l.Index), []netip.Addr{netip.MustParseAddr(addr)}, bpf.EndpointValue{}); err != nil {
				t.Fatal(err)
			}
		})
		pods = append(pods, p)
	}
	client, web := pods[0], pods[1]
	web.ns.ServeWhoAmI(t, 8080)

	nss := []*v1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "alpha", Labels: map[string]string{"team": "a"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "beta", Labels: map[string]string{"team": "b"}}},
	}
	var out compile.Output
	alloc, writer := compile.NewAllocator(), mapsync.New(dp)
	apply := func(policies string) {
		t.Helper()
		var nps []*networkingv1.NetworkPolicy
		for doc := range strings.SplitSeq(policies, "\n---\n") {
			np := &networkingv1.NetworkPolicy{}
			if err := yaml.UnmarshalStrict([]byte(doc), np); err != nil {
				t.Fatal(err)
			}
			nps = append(nps, np)
		}
		out = compile.Compile(compile.Input{NodeName: "node-a", HostAddrs: []netip.Addr{netip.MustParseAddr("10.201.1.1"), netip.MustParseAddr("10.201.2.1")},
			Pods: []*v1.Pod{client.pod, web.pod}, Namespaces: nss, Policies: nps}, alloc)
		if _, err := writer.Apply(out); err != nil || len(out.Errors) > 0 {
			t.Fatalf("write policy: %v %v", err, out.Errors)
		}
	}
	apply(`
metadata: {namespace: beta, name: web-from-team-x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: x}}}], ports: [{port: 8080}]}]`)

	factory := informers.NewSharedInformerFactory(fake.NewClientset([]runtime.Object{client.pod, web.pod}...), 0)
	lookup, err := NewCluster(factory, func() *compile.Output { return &out }, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

	r, err := bpf.NewEventReader(dp)
	if err != nil {
		t.Fatal(err)
	}
	store := NewStore(64, nil)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, nil, RingReader{R: r}, NewNamer("node-a", lookup, nil), store, metrics.New().RegisterFlows())
	}()
	_, follow := store.Flows(ctx, observeapi.FlowFilter{Follow: true, Pod: "beta/web"})
	await := func(verdict string) observeapi.Flow {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case fl := <-follow:
				if fl.Verdict == verdict && fl.Dst.Pod == "beta/web" {
					return fl
				}
			case <-timeout:
				t.Fatalf("no %s flow to beta/web", verdict)
			}
		}
	}

	start := time.Now()
	if got := client.ns.WhoAmI(t, "tcp", netip.MustParseAddrPort("10.201.2.2:8080")); !strings.Contains(got, "timeout") {
		t.Fatalf("denied connection: %q, want a timeout", got)
	}
	fl := await(observeapi.VerdictDropped)
	if fl.Reason != "policy_ingress" || fl.Hook != "to_pod" || fl.Direction != "ingress" || fl.Proto != "tcp" ||
		fl.Src.Pod != "alpha/client" || fl.Dst.Pod != "beta/web" || fl.Dst.Port != 8080 || fl.Node != "node-a" ||
		!slices.Equal(fl.Policies, []string{"beta/web-from-team-x"}) {
		t.Errorf("dropped flow %+v", fl)
	}
	if fl.Time.Before(start.Add(-time.Second)) || fl.Time.After(time.Now().Add(time.Second)) {
		t.Errorf("flow time %v, want during the connection (from %v)", fl.Time, start)
	}

	apply(`
metadata: {namespace: beta, name: web-from-team-x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: x}}}], ports: [{port: 8080}]}]
---
metadata: {namespace: beta, name: web-from-alpha}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: client}}}]}]`)
	if got := client.ns.WhoAmI(t, "tcp", netip.MustParseAddrPort("10.201.2.2:8080")); got != "10.201.1.2" {
		t.Fatalf("admitted connection: %q, want the client's address", got)
	}
	fl = await(observeapi.VerdictForwarded)
	if fl.Hook != "to_pod" || fl.Direction != "ingress" || fl.Src.Pod != "alpha/client" ||
		!slices.Equal(fl.Policies, []string{"beta/web-from-alpha[ingress 0]"}) {
		t.Errorf("forwarded flow %+v", fl)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
