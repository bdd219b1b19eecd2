package service

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/service/compile"
	"github.com/sluice-net/sluice/agent/internal/service/mapsync"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
)

const (
	benchServices  = 10000
	benchEndpoints = 10
)

func benchObjects(n, eps int) ([]*v1.Service, []*discovery.EndpointSlice) {
	var svcs []*v1.Service
	var sls []*discovery.EndpointSlice
	name, port, proto := "http", int32(8080), v1.ProtocolTCP
	for i := range n {
		ip := fmt.Sprintf("10.%d.%d.%d", 96+i>>16, (i>>8)&0xff, i&0xff)
		svcs = append(svcs, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "svc-" + strconv.Itoa(i)},
			Spec: v1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip},
				Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
		})
		s := &discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "bench", Name: "svc-" + strconv.Itoa(i) + "-1", Labels: map[string]string{discovery.LabelServiceName: "svc-" + strconv.Itoa(i)}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       []discovery.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
		}
		for j := range eps {
			s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{fmt.Sprintf("10.%d.%d.%d", 128+j, (i>>8)&0xff, i&0xff)}})
		}
		sls = append(sls, s)
	}
	return svcs, sls
}

func benchDatapath(b *testing.B) *bpf.Datapath {
	b.Helper()
	// The default table size: this is the agent as shipped.
	return bpftest.Load(b, bpf.Config{MaglevSize: bpf.DefaultConfig().MaglevSize, MaxBackends: 1 << 18})
}

func rssMiB() float64 {
	data, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.Atoi(strings.Fields(l)[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

// BenchmarkColdSync compiles 10,000 Services of 10 endpoints each and
// writes them into empty maps: the agent's first sync on a fresh node.
//
//	go test -run '^$' -bench ColdSync -benchtime 1x ./agent/internal/service/
func BenchmarkColdSync(b *testing.B) {
	svcs, sls := benchObjects(benchServices, benchEndpoints)
	node := compile.Node{Name: "node-a"}
	for range b.N {
		b.StopTimer()
		dp := benchDatapath(b)
		w, err := mapsync.New(dp)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		desired, _, errs := compile.Compile(svcs, sls, node)
		compiled := time.Since(start)
		st, err := w.Sync(desired)
		if err != nil || len(errs) > 0 {
			b.Fatal(err, errs)
		}
		b.ReportMetric(compiled.Seconds(), "compile-s")
		b.ReportMetric(time.Since(start).Seconds(), "compile+apply-s")
		if st.Services != benchServices || st.Backends != benchServices*benchEndpoints {
			b.Fatalf("programmed %+v", st)
		}
		b.StopTimer()
		b.ReportMetric(maglevMemoryMiB(b, dp), "maglev-kernel-MiB")
		b.StartTimer()
	}
}

// maglevMemoryMiB is the kernel's memory accounting (memlock) of every
// Maglev table map.
func maglevMemoryMiB(b *testing.B, dp *bpf.Datapath) float64 {
	var total uint64
	for _, m := range dp.MaglevMaps {
		info, err := m.Info()
		if err != nil {
			b.Fatal(err)
		}
		ml, ok := info.Memlock()
		if !ok {
			b.Skip("the kernel does not report map memory")
		}
		total += ml
	}
	return float64(total) / (1 << 20)
}

// BenchmarkChangeToDatapath measures, with 10,000 Services of 10 endpoints
// programmed, the time from an EndpointSlice update reaching the informer
// to the datapath holding it, under 100 changes per second, through the
// agent's real informer -> runner -> compile -> write path (the API server
// is faked). It reports p50/p99 and the process RSS at that size.
//
//	go test -run '^$' -bench ChangeToDatapath -benchtime 1x ./agent/internal/service/
func BenchmarkChangeToDatapath(b *testing.B) {
	svcs, sls := benchObjects(benchServices, benchEndpoints)
	objs := []k8sruntime.Object{&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Spec: v1.NodeSpec{PodCIDRs: []string{"10.244.0.0/24"}}}}
	for _, s := range svcs {
		objs = append(objs, s)
	}
	for _, s := range sls {
		objs = append(objs, s)
	}
	client := fake.NewClientset(objs...)
	dp := benchDatapath(b)
	w, err := mapsync.New(dp)
	if err != nil {
		b.Fatal(err)
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	ctrl, err := New(slog.New(slog.NewTextHandler(io.Discard, nil)), factory, w, metrics.New(), Options{
		NodeName: "node-a", NodeStateFile: filepath.Join(b.TempDir(), "node.json"),
		MinSync: 10 * time.Millisecond, MaxSync: time.Hour,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	go func() { _ = ctrl.Run(ctx) }()
	start := time.Now()
	for ok, _ := ctrl.Ready(); !ok; ok, _ = ctrl.Ready() {
		time.Sleep(10 * time.Millisecond)
	}
	b.ReportMetric(time.Since(start).Seconds(), "cold-start-s")

	const changes = 100
	var lat []time.Duration
	b.ResetTimer()
	for i := range changes {
		// Toggle the last endpoint of service i: 9 or 10 backends.
		s := sls[i].DeepCopy()
		want := uint32(benchEndpoints - 1)
		s.Endpoints = s.Endpoints[:benchEndpoints-1]
		t0 := time.Now()
		if _, err := client.DiscoveryV1().EndpointSlices("bench").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		vip := svcs[i].Spec.ClusterIP + ":80"
		for n, _ := backendCount(dp, vip); n != want; n, _ = backendCount(dp, vip) {
			if time.Since(t0) > 10*time.Second {
				b.Fatalf("change %d not applied", i)
			}
			time.Sleep(100 * time.Microsecond)
		}
		lat = append(lat, time.Since(t0))
		// Pace at 100 changes per second.
		if d := 10*time.Millisecond - time.Since(t0); d > 0 {
			time.Sleep(d)
		}
	}
	b.StopTimer()
	if os.Getenv("SLUICE_BENCH_DEBUG") != "" {
		b.Logf("latencies in order: %v", lat)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(rssMiB(), "rss-MiB")
	// The fake API server and this test hold their own copies of the
	// 20,000 objects; the agent's share is its informer caches plus the
	// writer's state, measured as live heap.
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "live-heap-MiB")
}
