package main_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-net/sluice/internal/testutil/bpffs"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

// BenchmarkAgentAtScale runs the real agent binary against a real
// kube-apiserver holding 10,000 Services of 10 endpoints each and reports
// the time from start to all of them programmed, and the agent's RSS and
// CPU time at that size. Everything runs in a network namespace of its
// own.
//
//	SLUICE_K8S_BIN=$(hack/build-k8s.sh | tail -1) go test -run '^$' -bench AgentAtScale -benchtime 1x ./agent/
func BenchmarkAgentAtScale(b *testing.B) {
	const services, endpoints = 10000, 10
	bpffs.Require(b)
	ns := netnstest.New(b, "sl-scale")
	ns.IP(b, "link", "set", "lo", "up")
	cp := startControlPlane(b, ns)
	ctx := context.Background()

	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Spec: v1.NodeSpec{PodCIDRs: []string{"10.244.0.0/24"}}}
	if _, err := cp.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	created := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name, port, proto := "http", int32(8080), v1.ProtocolTCP
			for i := w; i < services; i += 16 {
				svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "svc-" + strconv.Itoa(i)},
					Spec: v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}}}
				if _, err := cp.client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
					errs <- err
					return
				}
				s := &discovery.EndpointSlice{
					ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "svc-" + strconv.Itoa(i), Labels: map[string]string{discovery.LabelServiceName: "svc-" + strconv.Itoa(i)}},
					AddressType: discovery.AddressTypeIPv4,
					Ports:       []discovery.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
				}
				for j := range endpoints {
					s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{fmt.Sprintf("10.%d.%d.%d", 128+j, (i>>8)&0xff, i&0xff)}})
				}
				if _, err := cp.client.DiscoveryV1().EndpointSlices("default").Create(ctx, s, metav1.CreateOptions{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.Logf("created %d Services and EndpointSlices in %v", services, time.Since(created).Round(time.Second))

	dir := b.TempDir()
	agentBin := filepath.Join(dir, "sluice-agent")
	if out, err := exec.Command("go", "build", "-o", agentBin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build agent: %v\n%s", err, out)
	}
	b.ResetTimer()
	t0 := time.Now()
	cmd := start(b, ns, dir, "sluice-agent", agentBin, "--kubeconfig", cp.kubeconfig, "--nodeName", "node-a",
		"--bpfRoot", bpffs.Root(b), "--nodeStateFile", filepath.Join(dir, "node.json"), "--maxBackends", "262144",
		"--metricsAddr", "127.0.0.1:9962", "--healthAddr", "127.0.0.1:9963", "--socketLBCgroup", "", "--nativeRouting=false")
	client := ns.HTTPClient(b)
	programmed := func() int {
		resp, err := client.Get("http://127.0.0.1:9962/metrics")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "sluice_services_programmed "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return int(f)
			}
		}
		return -1
	}
	deadline := time.Now().Add(5 * time.Minute)
	for programmed() < services {
		if time.Now().After(deadline) {
			b.Fatalf("agent programmed %d of %d services in 5 minutes", programmed(), services)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.ReportMetric(time.Since(t0).Seconds(), "start-to-programmed-s")
	b.StopTimer()
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(v)[0])
			b.ReportMetric(float64(kb)/1024, "agent-rss-MiB")
		}
	}
	stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
	if f := strings.Fields(string(stat)); len(f) > 15 {
		utime, _ := strconv.Atoi(f[13])
		stime, _ := strconv.Atoi(f[14])
		b.ReportMetric(float64(utime+stime)/100, "agent-cpu-s")
	}
}
