package netpol

import (
	"context"
	"fmt"
	"log/slog"
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
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/netpol/mapsync"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
	"github.com/sluice-net/sluice/internal/endpointapi"
)

// denyAllIngress isolates every pod of namespace default for ingress.
func denyAllIngress() *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny-all"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}
}

// starting is a pod the kubelet is starting: bound, no address yet.
func starting(name string) *v1.Pod {
	p := pod(name, "node-a", "", map[string]string{"app": name})
	p.Status = v1.PodStatus{Phase: v1.PodPending}
	return p
}

// TestEnsureEndpointWritesBeforeAnswering: the CNI plugin's request for a
// pod the API shows without an address returns only after a write that
// isolates the pod at the address the plugin gave it.
func TestEnsureEndpointWritesBeforeAnswering(t *testing.T) {
	objs := append(cluster(), denyAllIngress(), starting("new"))
	h := newHarness(t, &fakeWriter{}, objs...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr := netip.MustParseAddr("10.244.0.9")
	ep := endpointapi.Endpoint{Namespace: "default", Name: "new", ContainerID: "c1", Addrs: []netip.Addr{addr}}
	if err := h.ctrl.EnsureEndpoint(ctx, ep); err == nil || !strings.Contains(err.Error(), "not yet programmed") {
		t.Fatalf("before the first sync: %v, want an error saying policy is not programmed yet", err)
	}
	h.run(t, true)
	h.firstSync(t)
	if n, out := h.writer.written(); out.Endpoints[addr].IngressIsolated {
		t.Fatalf("setup: write %d already has the new pod", n)
	}
	if err := h.ctrl.EnsureEndpoint(ctx, ep); err != nil {
		t.Fatal(err)
	}
	_, out := h.writer.written()
	if got := out.Endpoints[addr]; !got.IngressIsolated {
		t.Errorf("after EnsureEndpoint the last write has the new pod as %+v, want ingress-isolated", got)
	}
	if out.IPCache[addr] == 0 {
		t.Errorf("after EnsureEndpoint the new pod's address has no identity")
	}
}

// TestEnsureEndpointUnknownPod: a pod the agent never sees is refused once
// the caller's deadline passes, naming the pod.
func TestEnsureEndpointUnknownPod(t *testing.T) {
	h := newHarness(t, &fakeWriter{}, cluster()...)
	h.run(t, true)
	h.firstSync(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := h.ctrl.EnsureEndpoint(ctx, endpointapi.Endpoint{Namespace: "default", Name: "ghost", ContainerID: "c2", Addrs: []netip.Addr{netip.MustParseAddr("10.244.0.10")}})
	if err == nil || !strings.Contains(err.Error(), "default/ghost not in the agent's informer cache") {
		t.Fatalf("EnsureEndpoint for an unknown pod: %v, want it refused by name", err)
	}
}

// BenchmarkEnsureEndpoint: what the handshake adds to a pod's start on the
// agent's side: a full compile and write to the real maps, in a cluster of
// 1,000 pods on 10 nodes with 100 policies. Reported as ms per request.
//
//	go test -run '^$' -bench EnsureEndpoint -benchtime 50x ./agent/internal/netpol/
func BenchmarkEnsureEndpoint(b *testing.B) {
	var objs []runtime.Object
	for ns := range 10 {
		objs = append(objs, namespace(fmt.Sprintf("ns-%d", ns)))
	}
	objs = append(objs, namespace("default"))
	for i := range 1000 {
		p := pod(fmt.Sprintf("p-%d", i), fmt.Sprintf("node-%c", 'a'+i%10), fmt.Sprintf("10.244.%d.%d", i%10, 10+i/10), map[string]string{"app": fmt.Sprintf("app-%d", i%20)})
		p.Namespace = fmt.Sprintf("ns-%d", i%10)
		objs = append(objs, p)
	}
	for i := range 100 {
		np := denyAllIngress()
		np.Namespace, np.Name = fmt.Sprintf("ns-%d", i%10), fmt.Sprintf("np-%d", i)
		np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", i%20)}}
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", (i+1)%20)}}}}}}
		objs = append(objs, np)
	}
	for i := range b.N {
		objs = append(objs, starting(fmt.Sprintf("new-%d", i)))
	}
	dp := bpftest.Load(b, bpf.Config{})
	client := fake.NewClientset(objs...)
	factory := informers.NewSharedInformerFactory(client, 0)
	ctrl, err := New(slog.New(slog.DiscardHandler), factory, mapsync.New(dp), metrics.New(), Options{
		NodeName: "node-a", MaxSync: time.Hour, Clock: clocktesting.NewFakeClock(time.Unix(1000, 0)),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = ctrl.Run(ctx) }()
	factory.Start(ctx.Done())
	<-ctrl.FirstSync()
	var took []time.Duration
	b.ResetTimer()
	for i := range b.N {
		ep := endpointapi.Endpoint{Namespace: "default", Name: fmt.Sprintf("new-%d", i), ContainerID: "c",
			Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, 0, byte(200 + i%50)})}}
		start := time.Now()
		if err := ctrl.EnsureEndpoint(ctx, ep); err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "p99-ms")
}
