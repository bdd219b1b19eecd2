package service

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/sluice-net/sluice/agent/internal/agenttest"
	"github.com/sluice-net/sluice/agent/internal/healthcheck"
	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/proxyhealth"
	"github.com/sluice-net/sluice/agent/internal/service/mapsync"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
	"github.com/sluice-net/sluice/internal/nodestate"
)

// The API is faked here (the wiring from informer events to the maps is
// under test); the maps and programs are real.
func setup(t *testing.T) (*fake.Clientset, *bpf.Datapath, *Controller, string) {
	return setupWith(t, nil)
}

func setupWith(t *testing.T, hc *healthcheck.Server) (*fake.Clientset, *bpf.Datapath, *Controller, string) {
	t.Helper()
	return setupOpts(t, bpf.Config{MaxServices: 1024, MaxBackends: 4096}, metrics.New(), Options{HealthChecks: hc})
}

// setupOpts runs a controller on a datapath of cfg's sizes with opts
// (node, state file and sync intervals filled in).
func setupOpts(t *testing.T, cfg bpf.Config, m *metrics.Metrics, opts Options) (*fake.Clientset, *bpf.Datapath, *Controller, string) {
	t.Helper()
	return setupCluster(t, cfg, m, opts)
}

// setupCluster is setupOpts on a cluster that already holds objs when the
// controller starts.
func setupCluster(t *testing.T, cfg bpf.Config, m *metrics.Metrics, opts Options, objs ...runtime.Object) (*fake.Clientset, *bpf.Datapath, *Controller, string) {
	t.Helper()
	dp := bpftest.Load(t, cfg)
	w, err := mapsync.New(dp)
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset(append([]runtime.Object{&v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
		Spec:       v1.NodeSpec{PodCIDRs: []string{"10.244.0.0/24"}},
		Status:     v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.1.10"}}},
	}}, objs...)...)
	state := filepath.Join(t.TempDir(), "node.json")
	factory := informers.NewSharedInformerFactory(client, 0)
	opts.NodeName, opts.NodeStateFile, opts.MinSync, opts.MaxSync = "node-a", state, 10*time.Millisecond, time.Hour
	ctrl, err := New(slog.New(slog.NewTextHandler(io.Discard, nil)), factory, w, m, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	done := make(chan struct{})
	go func() { _ = ctrl.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return client, dp, ctrl, state
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func backendCount(dp *bpf.Datapath, vip string) (uint32, bool) {
	ap := netip.MustParseAddrPort(vip)
	var v bpf.ServiceValue
	if err := dp.Services.Lookup(bpf.ServiceKey{Addr: bpf.Addr(ap.Addr()), Port: bpf.Port(ap.Port()), Proto: bpf.ProtoTCP}, &v); err != nil {
		return 0, false
	}
	return v.BackendCount, true
}

func TestServicesFollowTheAPI(t *testing.T) {
	client, dp, ctrl, state := setup(t)
	ctx := context.Background()

	eventually(t, "readiness", func() bool { ok, _ := ctrl.Ready(); return ok })
	s, err := nodestate.Read(state)
	if err != nil || len(s.PodCIDRs) != 1 || s.PodCIDRs[0] != "10.244.0.0/24" {
		t.Fatalf("node state: %+v, %v", s, err)
	}
	// The datapath knows the node's pod CIDR too: no packet from outside
	// may claim it.
	var cidr bpf.NodeCIDR
	if err := dp.NodeCIDRs.Lookup(uint32(0), &cidr); err != nil || bpf.PrefixFrom(bpf.CIDRKey{Prefixlen: cidr.Prefixlen, Addr: cidr.Addr}) != netip.MustParsePrefix("10.244.0.0/24") {
		t.Errorf("node pod CIDR in the datapath: %+v, %v; want 10.244.0.0/24", cidr, err)
	}

	if _, err := client.CoreV1().Services("ns").Create(ctx, webService("web", "10.96.0.10", time.Time{}).svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the service to reject (no endpoints yet)", func() bool { n, ok := backendCount(dp, "10.96.0.10:80"); return ok && n == 0 })

	name, port, proto := "http", int32(8080), v1.ProtocolTCP
	slice := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-1", Labels: map[string]string{discovery.LabelServiceName: "web"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
		Endpoints:   []discovery.Endpoint{{Addresses: []string{"10.244.1.5"}}, {Addresses: []string{"10.244.1.6"}}},
	}
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "two backends", func() bool { n, _ := backendCount(dp, "10.96.0.10:80"); return n == 2 })

	slice.Endpoints = slice.Endpoints[:1]
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "one backend", func() bool { n, _ := backendCount(dp, "10.96.0.10:80"); return n == 1 })

	if err := client.CoreV1().Services("ns").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the service to go", func() bool { _, ok := backendCount(dp, "10.96.0.10:80"); return !ok })
}

// TestHealthCheckNodePort: a LoadBalancer Service with
// externalTrafficPolicy Local gets its health check port, answering 503
// until this node has an endpoint and 200 after.
func TestHealthCheckNodePort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	hc := healthcheck.New(slog.New(slog.NewTextHandler(io.Discard, nil)), "127.0.0.1")
	defer hc.Close()
	client, _, _, _ := setupWith(t, hc)
	ctx := context.Background()
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "lb"},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.20", ClusterIPs: []string{"10.96.0.20"},
			ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal, HealthCheckNodePort: int32(port),
			Ports: []v1.ServicePort{{Name: "http", Port: 80, NodePort: 30080, Protocol: v1.ProtocolTCP}}},
	}
	if _, err := client.CoreV1().Services("ns").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	status := func() int {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	eventually(t, "503 without local endpoints", func() bool { return status() == 503 })
	name, tport, proto, self := "http", int32(8080), v1.ProtocolTCP, "node-a"
	slice := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "lb-1", Labels: map[string]string{discovery.LabelServiceName: "lb"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &name, Port: &tport, Protocol: &proto}},
		Endpoints:   []discovery.Endpoint{{Addresses: []string{"10.244.0.5"}, NodeName: &self}},
	}
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "200 with a local endpoint", func() bool { return status() == 200 })
}

func TestNodeChangeMatters(t *testing.T) {
	base := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{v1.LabelTopologyZone: "a"}},
		Spec:       v1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}},
		Status:     v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.0.1"}}},
	}
	for _, c := range []struct {
		name   string
		change func(*v1.Node)
		want   bool
	}{
		{"heartbeat", func(n *v1.Node) {
			n.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
		}, false},
		{"zone", func(n *v1.Node) { n.Labels = map[string]string{v1.LabelTopologyZone: "b"} }, true},
		{"address", func(n *v1.Node) { n.Status.Addresses[0].Address = "192.168.0.2" }, true},
		{"pod CIDRs", func(n *v1.Node) { n.Spec.PodCIDRs = append(n.Spec.PodCIDRs, "fd00::/64") }, true},
	} {
		cur := base.DeepCopy()
		c.change(cur)
		if got := nodeChangeMatters(base, cur); got != c.want {
			t.Errorf("%s: nodeChangeMatters = %v, want %v", c.name, got, c.want)
		}
	}
}

// testService is a Service and its EndpointSlice.
type testService struct {
	svc   *v1.Service
	slice *discovery.EndpointSlice
}

// webService is a ClusterIP Service on vip:80 created at created, and its
// EndpointSlice of ready endpoints on port 8080.
func webService(name, vip string, created time.Time, eps ...string) testService {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, CreationTimestamp: metav1.NewTime(created)},
		Spec: v1.ServiceSpec{ClusterIP: vip, ClusterIPs: []string{vip},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
	pn, port, proto := "http", int32(8080), v1.ProtocolTCP
	slice := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name + "-1", Labels: map[string]string{discovery.LabelServiceName: name}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &pn, Port: &port, Protocol: &proto}},
	}
	for _, a := range eps {
		slice.Endpoints = append(slice.Endpoints, discovery.Endpoint{Addresses: []string{a}})
	}
	return testService{svc, slice}
}

func create(t *testing.T, client *fake.Clientset, ts testService) {
	t.Helper()
	ctx := context.Background()
	if _, err := client.CoreV1().Services(ts.svc.Namespace).Create(ctx, ts.svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices(ts.slice.Namespace).Create(ctx, ts.slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestMapFullIsReported: a Service that does not fit in the backend map
// gets one Warning Event naming the map and the setting, the full map is
// counted, the Service that fits stays programmed, and once room is made
// the other one is programmed too.
func TestMapFullIsReported(t *testing.T) {
	rec := record.NewFakeRecorder(100)
	m := metrics.New()
	client, dp, _, _ := setupOpts(t, bpf.Config{MaxServices: 16, MaxBackends: 4}, m, Options{Recorder: rec})
	now := time.Now()
	create(t, client, webService("web", "10.96.0.10", now, "10.244.1.5", "10.244.1.6", "10.244.1.7"))
	eventually(t, "web programmed", func() bool { n, _ := backendCount(dp, "10.96.0.10:80"); return n == 3 })
	create(t, client, webService("big", "10.96.0.11", now, "10.244.2.5", "10.244.2.6", "10.244.2.7"))
	eventually(t, "the full map counted a few times", func() bool {
		return agenttest.MetricValue(t, m, "sluice_map_full_total", "backends") >= 3
	})
	got := agenttest.Events(rec)
	if len(got) != 1 || !strings.Contains(got[0], "Warning MapFull") || !strings.Contains(got[0], "sluice_backends_v2") ||
		!strings.Contains(got[0], "maxBackends") || !strings.Contains(got[0], "10.96.0.11:80") {
		t.Errorf("events %q: want one Warning MapFull naming the frontend, sluice_backends_v2 and maxBackends", got)
	}
	if n, ok := backendCount(dp, "10.96.0.10:80"); !ok || n != 3 {
		t.Errorf("web: %d backends, %v; want it intact", n, ok)
	}
	// Programmed before its endpoints came, it is left as it was: rejecting.
	if n, _ := backendCount(dp, "10.96.0.11:80"); n != 0 {
		t.Errorf("the Service that does not fit has %d backends", n)
	}
	if err := client.CoreV1().Services("ns").Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "big programmed once web is gone", func() bool { n, _ := backendCount(dp, "10.96.0.11:80"); return n == 3 })
}

// TestReadyDespiteFullMap: an agent starting on a cluster where one
// Service does not fit the backend map programs the others and makes the
// node ready for pods; the one that does not fit is reported.
func TestReadyDespiteFullMap(t *testing.T) {
	now := time.Now()
	web := webService("web", "10.96.0.10", now, "10.244.1.5", "10.244.1.6", "10.244.1.7")
	big := webService("big", "10.96.0.11", now.Add(time.Second), "10.244.2.5", "10.244.2.6", "10.244.2.7")
	m := metrics.New()
	_, dp, ctrl, state := setupCluster(t, bpf.Config{MaxServices: 16, MaxBackends: 4}, m, Options{Recorder: record.NewFakeRecorder(100)},
		web.svc, web.slice, big.svc, big.slice)
	eventually(t, "the node ready for pods", func() bool { ok, _ := ctrl.Ready(); return ok })
	if _, err := os.Stat(state); err != nil {
		t.Errorf("node state file: %v", err)
	}
	web3, _ := backendCount(dp, "10.96.0.10:80")
	big3, _ := backendCount(dp, "10.96.0.11:80")
	if web3+big3 != 3 {
		t.Errorf("backends programmed: web %d, big %d; want one of them whole", web3, big3)
	}
	if agenttest.MetricValue(t, m, "sluice_map_full_total", "backends") < 1 {
		t.Errorf("the full map was not counted")
	}
}

// TestFrontendOwner: of two Services claiming one frontend, the older owns
// it, in incremental syncs too: the other gets a FrontendConflict Event,
// and changing or deleting it leaves the owner's entry alone; deleting the
// owner hands the frontend over.
func TestFrontendOwner(t *testing.T) {
	rec := record.NewFakeRecorder(100)
	m := metrics.New()
	client, dp, _, _ := setupOpts(t, bpf.Config{MaxServices: 1024, MaxBackends: 4096}, m, Options{Recorder: rec})
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	owner := webService("old", "10.96.0.10", t0, "10.244.1.5")
	create(t, client, owner)
	eventually(t, "old programmed", func() bool { n, _ := backendCount(dp, "10.96.0.10:80"); return n == 1 })
	claimant := webService("new", "10.96.0.20", t0.Add(time.Hour), "10.244.2.5", "10.244.2.6")
	claimant.svc.Spec.ExternalIPs = []string{"10.96.0.10"}
	create(t, client, claimant)
	eventually(t, "new programmed", func() bool { n, _ := backendCount(dp, "10.96.0.20:80"); return n == 2 })
	if n, _ := backendCount(dp, "10.96.0.10:80"); n != 1 {
		t.Errorf("contested frontend has %d backends, want 1 (the older Service's)", n)
	}
	got := agenttest.Events(rec)
	if len(got) != 1 || !strings.Contains(got[0], "Warning FrontendConflict") || !strings.Contains(got[0], "10.96.0.10:80/6/internal") ||
		!strings.Contains(got[0], "ns/old") {
		t.Errorf("events %q: want one Warning FrontendConflict naming the frontend and the owner", got)
	}
	if v := agenttest.MetricValue(t, m, "sluice_service_frontend_conflicts", ""); v != 1 {
		t.Errorf("sluice_service_frontend_conflicts %v, want 1", v)
	}

	// The loser changes: the owner's entry stays.
	claimant.slice.Endpoints = append(claimant.slice.Endpoints, discovery.Endpoint{Addresses: []string{"10.244.2.7"}})
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(ctx, claimant.slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "new updated", func() bool { n, _ := backendCount(dp, "10.96.0.20:80"); return n == 3 })
	if n, _ := backendCount(dp, "10.96.0.10:80"); n != 1 {
		t.Errorf("after the loser changed, the contested frontend has %d backends, want 1", n)
	}
	// The loser goes: the owner's entry stays.
	if err := client.CoreV1().Services("ns").Delete(ctx, "new", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "new gone", func() bool { _, ok := backendCount(dp, "10.96.0.20:80"); return !ok })
	if n, ok := backendCount(dp, "10.96.0.10:80"); !ok || n != 1 {
		t.Errorf("after the loser went, the contested frontend: %d backends, %v; want the owner's 1", n, ok)
	}
	if v := agenttest.MetricValue(t, m, "sluice_service_frontend_conflicts", ""); v != 0 {
		t.Errorf("sluice_service_frontend_conflicts %v, want 0", v)
	}

	// It comes back and the owner goes: the frontend is handed over.
	claimant.svc.ResourceVersion = ""
	if _, err := client.CoreV1().Services("ns").Create(ctx, claimant.svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "new back", func() bool { n, _ := backendCount(dp, "10.96.0.20:80"); return n == 3 })
	if err := client.CoreV1().Services("ns").Delete(ctx, "old", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the frontend handed to new", func() bool { n, _ := backendCount(dp, "10.96.0.10:80"); return n == 3 })
}

// TestKubeProxyMetrics: the syncs and the EndpointSlice changes they
// program are measured under kube-proxy's names: the network programming
// time runs from the slice's last-change-trigger-time; the health tracker
// hears of the change and of the sync.
func TestKubeProxyMetrics(t *testing.T) {
	m := metrics.New()
	ph := m.RegisterProxyHealth()
	tracker := proxyhealth.New(clock.RealClock{}, proxyhealth.DefaultTimeout, ph.Healthz, ph.Livez)
	client, dp, ctrl, _ := setupOpts(t, bpf.Config{MaxServices: 1024, MaxBackends: 4096}, m, Options{ProxyHealth: tracker})
	ctx := context.Background()
	eventually(t, "readiness", func() bool { ok, _ := ctrl.Ready(); return ok })
	if _, err := client.CoreV1().Services("ns").Create(ctx, webService("web", "10.96.0.10", time.Time{}).svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	name, port, proto := "http", int32(8080), v1.ProtocolTCP
	trigger := time.Now().Add(-3 * time.Second).Truncate(time.Second)
	slice := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-1", Labels: map[string]string{discovery.LabelServiceName: "web"},
			Annotations: map[string]string{v1.EndpointsLastChangeTriggerTime: trigger.Format(time.RFC3339)}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
		Endpoints:   []discovery.Endpoint{{Addresses: []string{"10.244.1.5"}}},
	}
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "one backend", func() bool { n, _ := backendCount(dp, "10.96.0.10:80"); return n == 1 })
	eventually(t, "the change measured", func() bool {
		return histogram(t, m, "kubeproxy_network_programming_duration_seconds").GetSampleCount() == 1
	})
	if h := histogram(t, m, "kubeproxy_network_programming_duration_seconds"); h.GetSampleSum() < 3 || h.GetSampleSum() > 60 {
		t.Errorf("network programming time %.2fs, want from the trigger time 3s ago", h.GetSampleSum())
	}
	if n := histogram(t, m, "kubeproxy_sync_proxy_rules_duration_seconds").GetSampleCount(); n == 0 {
		t.Error("no sync measured as kubeproxy_sync_proxy_rules_duration_seconds")
	}
	rec := httptest.NewRecorder()
	tracker.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("/healthz after the sync: %d %s", rec.Code, rec.Body)
	}
}

// histogram reads one histogram of m by name.
func histogram(t *testing.T, m *metrics.Metrics, name string) *dto.Histogram {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetHistogram()
		}
	}
	t.Fatalf("no histogram %s", name)
	return nil
}

// TestHostPortsFollowPods: a pod of this node with a hostPort gets its
// frontends on the node's address once it has an address, from outside
// and inside; a pod of another node gets none here; deleting the pod
// removes them.
func TestHostPortsFollowPods(t *testing.T) {
	client, dp, ctrl, _ := setup(t)
	ctx := context.Background()
	eventually(t, "readiness", func() bool { ok, _ := ctrl.Ready(); return ok })
	pod := func(name, node string) *v1.Pod {
		return &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
			Spec: v1.PodSpec{NodeName: node, Containers: []v1.Container{{Name: "c", Ports: []v1.ContainerPort{
				{ContainerPort: 8080, HostPort: 8443, Protocol: v1.ProtocolTCP}}}}},
		}
	}
	for _, p := range []*v1.Pod{pod("here", "node-a"), pod("elsewhere", "node-b")} {
		if _, err := client.CoreV1().Pods("ns").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	here := pod("here", "node-a")
	here.Status = v1.PodStatus{Phase: v1.PodRunning, PodIP: "10.244.0.7", PodIPs: []v1.PodIP{{IP: "10.244.0.7"}}}
	if _, err := client.CoreV1().Pods("ns").UpdateStatus(ctx, here, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var v bpf.ServiceValue
	for _, scope := range []uint8{bpf.ScopeInternal, bpf.ScopeExternal} {
		key := bpf.ServiceKey{Addr: bpf.Addr(netip.MustParseAddr("192.168.1.10")), Port: bpf.Port(8443), Proto: bpf.ProtoTCP, Scope: scope}
		eventually(t, "the hostPort's frontend", func() bool { return dp.Services.Lookup(key, &v) == nil && v.BackendCount == 1 })
	}
	var be bpf.BackendValue
	it := dp.Backends.Iterate()
	var id uint32
	found := false
	for it.Next(&id, &be) {
		if be.SvcId == v.Id && bpf.AddrFrom(be.Addr).String() == "10.244.0.7" && bpf.PortFrom(be.Port) == 8080 && be.Flags&bpf.BackendLocal != 0 {
			found = true
		}
	}
	if !found {
		t.Error("the hostPort's backend is not the pod's 10.244.0.7:8080 on this node")
	}
	if n := len(ctrl.Programmed()); n != 2 {
		t.Errorf("%d frontends programmed, want the pod's 2 (none for the pod of another node)", n)
	}
	if err := client.CoreV1().Pods("ns").Delete(ctx, "here", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the hostPort's frontends to go", func() bool { return len(ctrl.Programmed()) == 0 })
}
