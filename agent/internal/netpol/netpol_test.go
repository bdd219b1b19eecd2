package netpol

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/sluice-net/sluice/agent/internal/agenttest"
	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/netpol/compile"
	"github.com/sluice-net/sluice/agent/internal/netpol/mapsync"
	"github.com/sluice-net/sluice/bpf"
)

// The API and the maps are faked: what is under test is the wiring from
// informer events to writes, and the gate the agent holds pods behind.

// fakeWriter records every Output it is asked to apply. With hold set,
// Apply does not return until hold is closed.
type fakeWriter struct {
	hold   chan struct{}
	mu     sync.Mutex
	writes []compile.Output
	err    error // what Apply returns
}

func (w *fakeWriter) Apply(out compile.Output) (mapsync.Stats, error) {
	w.mu.Lock()
	w.writes = append(w.writes, out)
	err := w.err
	w.mu.Unlock()
	if w.hold != nil {
		<-w.hold
	}
	return mapsync.Stats{}, err
}

// written returns the number of Apply calls so far and the last Output.
// Hints reports empty maps: the controller starts as on a fresh node.
func (w *fakeWriter) Hints() (compile.Hints, error) { return compile.Hints{}, nil }

func (w *fakeWriter) written() (int, compile.Output) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.writes) == 0 {
		return 0, compile.Output{}
	}
	return len(w.writes), w.writes[len(w.writes)-1]
}

// logRecorder keeps every log line as "message key=value ...": the
// controller logs each event it acts on, which tells a test, in event
// order, which updates requested a sync.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	line := rec.Message
	rec.Attrs(func(a slog.Attr) bool {
		line += " " + a.String()
		return true
	})
	r.mu.Lock()
	r.lines = append(r.lines, line)
	r.mu.Unlock()
	return nil
}

func (r *logRecorder) logged(line string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.lines, line)
}

type harness struct {
	client  *fake.Clientset
	factory informers.SharedInformerFactory
	ctrl    *Controller
	writer  *fakeWriter
	logs    *logRecorder
	metrics *metrics.Metrics
	events  *record.FakeRecorder
}

// newHarness builds a controller for node-a over a fake API holding objs.
// Nothing runs until start.
func newHarness(t *testing.T, writer *fakeWriter, objs ...runtime.Object) *harness {
	t.Helper()
	h := &harness{client: fake.NewClientset(objs...), writer: writer, logs: &logRecorder{}, metrics: metrics.New(), events: record.NewFakeRecorder(100)}
	h.factory = informers.NewSharedInformerFactory(h.client, 0)
	// MinSync 0 on a clock that never moves: every request syncs at once,
	// and no periodic or retry sync ever adds to the count of writes.
	ctrl, err := New(slog.New(h.logs), h.factory, writer, h.metrics, Options{
		NodeName: "node-a", MaxSync: time.Hour, Clock: clocktesting.NewFakeClock(time.Unix(1000, 0)), Recorder: h.events,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.ctrl = ctrl
	return h
}

// run starts the controller, and the informers unless told not to.
func (h *harness) run(t *testing.T, startInformers bool) (startFactory func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = h.ctrl.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; h.factory.Shutdown() })
	startFactory = func() { h.factory.Start(ctx.Done()) }
	if startInformers {
		startFactory()
	}
	return startFactory
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// firstSync waits for the controller's first sync.
func (h *harness) firstSync(t *testing.T) {
	t.Helper()
	eventually(t, "the first sync", func() bool { return closed(h.ctrl.FirstSync()) })
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func namespace(name string) *v1.Namespace {
	return &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/metadata.name": name}}}
}

func pod(name, node, ip string, lbls map[string]string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: lbls},
		Spec:       v1.PodSpec{NodeName: node},
		Status:     v1.PodStatus{Phase: v1.PodRunning, PodIP: ip, PodIPs: []v1.PodIP{{IP: ip}}},
	}
}

// A web pod on this node and a client pod on another.
func cluster() []runtime.Object {
	return []runtime.Object{
		namespace("default"),
		pod("web", "node-a", "10.244.0.5", map[string]string{"app": "web"}),
		pod("client", "node-b", "10.244.1.7", map[string]string{"app": "client"}),
	}
}

func TestFirstSyncWaitsForCachesAndTheFirstWrite(t *testing.T) {
	hold := make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	h := newHarness(t, &fakeWriter{hold: hold}, cluster()...)
	startInformers := h.run(t, false)
	// Cleanups run last first: a failed test must not leave Run stuck in
	// a write when its own cleanup waits for it to return.
	t.Cleanup(release)
	eventually(t, "Run to wait for the caches", func() bool {
		return h.logs.logged("waiting for Pods, Namespaces and NetworkPolicies to sync from the API server")
	})
	if closed(h.ctrl.FirstSync()) {
		t.Fatal("FirstSync closed before the informer caches synced")
	}
	startInformers()
	eventually(t, "the first write", func() bool { n, _ := h.writer.written(); return n == 1 })
	if closed(h.ctrl.FirstSync()) {
		t.Fatal("FirstSync closed while the first write was still going on")
	}
	web, client := netip.MustParseAddr("10.244.0.5"), netip.MustParseAddr("10.244.1.7")
	if _, out := h.writer.written(); out.IPCache[web] == 0 || out.IPCache[client] == 0 || len(out.Endpoints) != 1 {
		t.Errorf("the first write was compiled from incomplete caches: ipcache %v, endpoints %v", out.IPCache, out.Endpoints)
	}
	release()
	h.firstSync(t)
}

func TestNetworkPolicyIsWritten(t *testing.T) {
	h := newHarness(t, &fakeWriter{}, cluster()...)
	h.run(t, true)
	h.firstSync(t)

	tcp, port := v1.ProtocolTCP, intstr.FromInt32(8080)
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-from-client"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	}
	if _, err := h.client.NetworkingV1().NetworkPolicies("default").Create(context.Background(), np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web, client := netip.MustParseAddr("10.244.0.5"), netip.MustParseAddr("10.244.1.7")
	eventually(t, "a write isolating web and allowing client on TCP 8080", func() bool {
		_, out := h.writer.written()
		ep := out.Endpoints[web]
		rule := compile.Rule{Endpoint: ep.ID, Remote: out.IPCache[client], Dir: compile.Ingress, Proto: bpf.ProtoTCP, Port: 8080, PortBits: 16}
		_, allowed := out.Rules[rule]
		return ep.IngressIsolated && allowed
	})
}

// TestFullPolicyMapIsReported: a full policy map is counted at every sync
// that meets it, and logged with a Warning Event on the Node once until it
// fits again.
func TestFullPolicyMapIsReported(t *testing.T) {
	full := &mapsync.FullError{Map: "sluice_policy_v1", Label: "policy", Capacity: 4, Setting: "maxPolicyRules", Unwritten: 2}
	w := &fakeWriter{err: errors.Join(full)}
	h := newHarness(t, w, cluster()...)
	h.run(t, true)
	h.firstSync(t)
	sync := func(ns string) {
		t.Helper()
		n, _ := w.written()
		if _, err := h.client.CoreV1().Namespaces().Create(context.Background(), namespace(ns), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "a sync after namespace "+ns, func() bool { m, _ := w.written(); return m > n })
	}
	sync("a")
	sync("b")
	eventually(t, "three syncs counted", func() bool { return agenttest.MetricValue(t, h.metrics, "sluice_map_full_total", "policy") == 3 })
	events := agenttest.Events(h.events)
	if len(events) != 1 || !strings.Contains(events[0], "Warning MapFull") || !strings.Contains(events[0], "sluice_policy_v1") ||
		!strings.Contains(events[0], "maxPolicyRules") {
		t.Errorf("events %q: want one Warning MapFull naming sluice_policy_v1 and maxPolicyRules", events)
	}
	w.mu.Lock()
	w.err = nil
	w.mu.Unlock()
	sync("c")
	w.mu.Lock()
	w.err = errors.Join(full)
	w.mu.Unlock()
	sync("d")
	eventually(t, "the map full again, reported again", func() bool { return len(agenttest.Events(h.events)) == 1 })
}

func TestPodStatusUpdateDoesNotSync(t *testing.T) {
	h := newHarness(t, &fakeWriter{}, cluster()...)
	h.run(t, true)
	h.firstSync(t)
	if n, _ := h.writer.written(); n != 1 {
		t.Fatalf("%d writes before any change, want 1", n)
	}
	ctx := context.Background()

	client, err := h.client.CoreV1().Pods("default").Get(ctx, "client", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	client.Status.Conditions = []v1.PodCondition{{Type: v1.PodReady, Status: v1.ConditionTrue, LastProbeTime: metav1.Now()}}
	if _, err := h.client.CoreV1().Pods("default").UpdateStatus(ctx, client, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Then a change that matters. The handler sees Pod events in order,
	// so once it has acted on this one it has judged the status update.
	web, err := h.client.CoreV1().Pods("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	web.Labels["version"] = "v2"
	if _, err := h.client.CoreV1().Pods("default").Update(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the label change to be acted on", func() bool { return h.logs.logged("Pod updated object=default/web") })
	eventually(t, "the label change to be written", func() bool { n, _ := h.writer.written(); return n >= 2 })
	if h.logs.logged("Pod updated object=default/client") {
		t.Error("a status-only Pod update requested a NetworkPolicy sync")
	}
	if n, _ := h.writer.written(); n != 2 {
		t.Errorf("%d writes after a status update and a label change, want 2", n)
	}
}

func TestPodChangeMatters(t *testing.T) {
	base := pod("p", "node-a", "10.244.0.5", map[string]string{"app": "web"})
	for _, c := range []struct {
		name   string
		change func(*v1.Pod)
		want   bool
	}{
		{"probe", func(p *v1.Pod) {
			p.Status.Conditions = []v1.PodCondition{{Type: v1.PodReady, Status: v1.ConditionTrue, LastProbeTime: metav1.Now()}}
		}, false},
		{"annotation", func(p *v1.Pod) { p.Annotations = map[string]string{"a": "b"} }, false},
		{"labels", func(p *v1.Pod) { p.Labels = map[string]string{"app": "db"} }, true},
		{"podIPs", func(p *v1.Pod) { p.Status.PodIPs = append(p.Status.PodIPs, v1.PodIP{IP: "fd00::5"}) }, true},
		{"podIP", func(p *v1.Pod) { p.Status.PodIP = "10.244.0.6" }, true},
		{"node", func(p *v1.Pod) { p.Spec.NodeName = "node-b" }, true},
		{"hostNetwork", func(p *v1.Pod) { p.Spec.HostNetwork = true }, true},
		{"phase", func(p *v1.Pod) { p.Status.Phase = v1.PodSucceeded }, true},
		{"deletion", func(p *v1.Pod) { now := metav1.Now(); p.DeletionTimestamp = &now }, true},
	} {
		cur := base.DeepCopy()
		c.change(cur)
		if got := podChangeMatters(base, cur); got != c.want {
			t.Errorf("%s: podChangeMatters = %v, want %v", c.name, got, c.want)
		}
	}
}
