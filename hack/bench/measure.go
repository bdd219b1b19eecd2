package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

func service(name string, selector map[string]string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1.ServiceSpec{Selector: selector,
			Ports: []v1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: v1.ProtocolTCP}}},
	}
}

// slice is a manually managed EndpointSlice of a selectorless Service.
func slice(svc string, addrs ...string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svc, Labels: map[string]string{discovery.LabelServiceName: svc, discovery.LabelManagedBy: "sluice-bench"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080)), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{a}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}})
	}
	return s
}

// grow brings the Service count to n: fillers of 10 endpoints each (the
// addresses need no pod: nothing connects to them), then one probe
// Service per implementation, created last. The three service proxies are
// frozen (SIGSTOP) while the API server takes the objects, which is slow
// here and would otherwise be most of what is measured, and thawed
// together: it returns, per implementation, the time from the thaw to the
// probe Service answering from that node's client.
func (b *bench) grow(ctx context.Context, from, n int) (map[string]float64, error) {
	pids, err := proxyPIDs()
	if err != nil {
		return nil, err
	}
	thaw, err := freeze(pids)
	defer thaw()
	if err != nil {
		return nil, err
	}
	for _, impl := range impls {
		err := b.client.CoreV1().Services(ns).Delete(ctx, "probe-"+impl, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, err
		}
	}
	fillers := max(n-len(impls), 0)
	created := time.Now()
	work := make(chan int)
	errc := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				name := fillerBase + strconv.Itoa(i)
				if _, err := b.client.CoreV1().Services(ns).Create(ctx, service(name, nil), metav1.CreateOptions{}); err != nil {
					errc <- err
					return
				}
				addrs := make([]string, 10)
				for j := range addrs {
					addrs[j] = fmt.Sprintf("10.%d.%d.%d", 200+j, i>>8&255, i&255)
				}
				if _, err := b.client.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice(name, addrs...), metav1.CreateOptions{}); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	for i := from; i < fillers; i++ {
		select {
		case work <- i:
		case err := <-errc:
			close(work)
			wg.Wait()
			return nil, fmt.Errorf("create filler Services: %w", err)
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		return nil, fmt.Errorf("create filler Services: %w", err)
	default:
	}
	vips := map[string]string{}
	for _, impl := range impls {
		svc, err := b.client.CoreV1().Services(ns).Create(ctx, service("probe-"+impl, map[string]string{"bench": impl}), metav1.CreateOptions{})
		if err != nil {
			return nil, err
		}
		vips[impl] = svc.Spec.ClusterIP
	}
	fmt.Printf("    %d Services created in %.1fs with the proxies frozen; thawing them\n", n, time.Since(created).Seconds())
	start := time.Now()
	thaw()
	out := map[string]float64{}
	var mu sync.Mutex
	var wg2 sync.WaitGroup
	for _, impl := range impls {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			for deadline := time.Now().Add(b.o.syncTimeout); ; {
				_, err := b.exec(ctx, "client-"+impl, "curl", "-s", "--max-time", "1", "-o", "/dev/null", "-f", "http://"+vips[impl]+"/hostname")
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					// Recorded, not fatal: the other implementations'
					// figures at this scale still count.
					fmt.Printf("    %-8s not answering after %v: %v\n", impl, b.o.syncTimeout, err)
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
			mu.Lock()
			out[impl] = time.Since(start).Seconds()
			mu.Unlock()
			fmt.Printf("    %-8s answering after %.2fs\n", impl, time.Since(start).Seconds())
		}()
	}
	wg2.Wait()
	return out, nil
}

// datapath measures connections per second and request latency from the
// implementation's client to its probe Service, and to a backend's pod IP
// directly (the limit on that node).
func (b *bench) datapath(ctx context.Context, impl string, r *ImplResult, podIP bool) error {
	var target string
	if podIP {
		ip, err := b.podIP(ctx, "be-"+impl+"-0")
		if err != nil {
			return err
		}
		target = ip + ":8080"
	} else {
		svc, err := b.client.CoreV1().Services(ns).Get(ctx, "probe-"+impl, metav1.GetOptions{})
		if err != nil {
			return err
		}
		target = svc.Spec.ClusterIP + ":80"
		r.ProbeServiceVIP = svc.Spec.ClusterIP
	}
	for range b.o.repeat {
		out, err := b.exec(ctx, "client-"+impl, b.clientBin, "-mode", "conn", "-target", target,
			"-duration", b.o.duration.String(), "-concurrency", "2")
		if err != nil {
			return err
		}
		var c struct {
			Connections, Errors int
			ConnPerSec          float64
			P50us, P99us        float64
		}
		if err := json.Unmarshal([]byte(out), &c); err != nil {
			return fmt.Errorf("benchclient output %q: %w", out, err)
		}
		if podIP {
			r.PodIPConnPerSec = append(r.PodIPConnPerSec, c.ConnPerSec)
		} else {
			r.ConnPerSec = append(r.ConnPerSec, c.ConnPerSec)
			r.P50us, r.P99us = append(r.P50us, c.P50us), append(r.P99us, c.P99us)
			r.ConnErrors += c.Errors
		}
	}
	what := "ClusterIP"
	vals := r.ConnPerSec
	if podIP {
		what, vals = "pod IP", r.PodIPConnPerSec
	}
	fmt.Printf("    %-8s %-9s %6.0f conn/s (median of %d)\n", impl, what, median(vals), len(vals))
	return nil
}

const iperfPort = 5201

// iperfServer is the backend that runs iperf3's server during a
// throughput run; the implementation's iperf Service selects it alone.
func iperfServer(impl string) string { return "be-" + impl + "-0" }

// throughput measures one TCP stream from the implementation's client to
// its iperf Service, or to the server's pod IP directly (the limit). The
// server answers one test and exits, so nothing outlives a run.
func (b *bench) throughput(ctx context.Context, impl string, r *ImplResult, podIP bool) error {
	target := ""
	if podIP {
		ip, err := b.podIP(ctx, iperfServer(impl))
		if err != nil {
			return err
		}
		target = ip
	} else {
		svc, err := b.client.CoreV1().Services(ns).Get(ctx, "iperf-"+impl, metav1.GetOptions{})
		if err != nil {
			return err
		}
		target = svc.Spec.ClusterIP
	}
	secs := strconv.Itoa(max(1, int(b.o.duration.Seconds())))
	for range b.o.tputRepeat {
		server := make(chan error, 1)
		go func() {
			_, err := b.exec(ctx, iperfServer(impl), "iperf3", "--server", "--one-off", "--port", strconv.Itoa(iperfPort))
			server <- err
		}()
		// iperf3 3.12 exits 0 even when it cannot connect (the server may
		// not be listening yet): the JSON's error field says so.
		var res iperfResult
		var err error
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			res, err = b.iperfClient(ctx, impl, target, secs)
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("%s: iperf3 to %s: %w", impl, target, err)
		}
		select {
		case err := <-server:
			if err != nil {
				return fmt.Errorf("%s: iperf3 server: %w", impl, err)
			}
		case <-time.After(30 * time.Second):
			return fmt.Errorf("%s: the iperf3 server did not exit after its one test", impl)
		}
		gbps := res.End.SumReceived.BitsPerSecond / 1e9
		if podIP {
			r.PodIPGbps = append(r.PodIPGbps, gbps)
		} else {
			r.Gbps = append(r.Gbps, gbps)
		}
	}
	what, vals := "ClusterIP", r.Gbps
	if podIP {
		what, vals = "pod IP", r.PodIPGbps
	}
	fmt.Printf("    %-8s %-9s %6.2f Gbit/s iperf3 (median of %d)\n", impl, what, median(vals), len(vals))
	return nil
}

type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

func (b *bench) iperfClient(ctx context.Context, impl, target, secs string) (iperfResult, error) {
	var res iperfResult
	out, err := b.exec(ctx, "client-"+impl, "iperf3", "--client", target, "--port", strconv.Itoa(iperfPort), "--time", secs, "--json")
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return res, fmt.Errorf("iperf3 output %.200q: %w", out, err)
	}
	if res.Error != "" {
		return res, errors.New(res.Error)
	}
	if res.End.SumReceived.BitsPerSecond == 0 {
		return res, fmt.Errorf("iperf3 measured nothing: %.200q", out)
	}
	return res, nil
}

// churn times EndpointSlice changes: a selectorless Service is switched
// between the node's two backends while the client, asking on a new
// connection every few milliseconds, reports when the answer changes.
func (b *bench) churn(ctx context.Context, impl string, r *ImplResult) error {
	name := "churn-" + impl
	ips := make([]string, 2)
	for i := range ips {
		ip, err := b.podIP(ctx, fmt.Sprintf("be-%s-%d", impl, i))
		if err != nil {
			return err
		}
		ips[i] = ip
	}
	svcs := b.client.CoreV1().Services(ns)
	slices := b.client.DiscoveryV1().EndpointSlices(ns)
	_ = svcs.Delete(ctx, name, metav1.DeleteOptions{})
	_ = slices.Delete(ctx, name, metav1.DeleteOptions{})
	svc, err := svcs.Create(ctx, service(name, nil), metav1.CreateOptions{})
	if err != nil {
		return err
	}
	if _, err := slices.Create(ctx, slice(name, ips[0]), metav1.CreateOptions{}); err != nil {
		return err
	}
	vip := svc.Spec.ClusterIP
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if _, err := b.exec(ctx, "client-"+impl, "curl", "-s", "-f", "--max-time", "1", "-o", "/dev/null", "http://"+vip+"/hostname"); err == nil {
			break
		} else if time.Now().After(deadline) {
			return fmt.Errorf("%s: churn Service never answered: %w", impl, err)
		}
	}
	// Every proxy here batches changes for at least 1 s (syncMinInterval,
	// --iptables-min-sync-period, --nftables-min-sync-period): changes
	// closer than that would be folded together.
	const gap = 1200 * time.Millisecond
	watchFor := time.Duration(b.o.changes+4) * gap
	cmd := exec.CommandContext(ctx, b.driver, "exec", ns+"/client-"+impl, "--", b.clientBin, "-mode", "watch", "-target", vip+":80", "-for", watchFor.String())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	type seen struct {
		at   time.Time
		host string
	}
	var lines []seen
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 2 {
				continue
			}
			ns, err := strconv.ParseInt(f[0], 10, 64)
			if err == nil {
				lines = append(lines, seen{time.Unix(0, ns), f[1]})
			}
		}
	}()
	time.Sleep(2 * gap)
	type change struct {
		at   time.Time
		host string
	}
	var changes []change
	for i := range b.o.changes {
		to := (i + 1) % 2
		cur, err := slices.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Endpoints = slice(name, ips[to]).Endpoints
		at := time.Now()
		if _, err := slices.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			return err
		}
		changes = append(changes, change{at, fmt.Sprintf("be-%s-%d", impl, to)})
		time.Sleep(gap)
	}
	<-done
	_ = cmd.Wait()
	var lat []float64
	for i, c := range changes {
		next := time.Now().Add(time.Hour)
		if i+1 < len(changes) {
			next = changes[i+1].at
		}
		for _, l := range lines {
			if l.at.After(c.at) && l.at.Before(next) && l.host == c.host {
				lat = append(lat, float64(l.at.Sub(c.at).Microseconds())/1000)
				break
			}
		}
	}
	r.ChangesSeen = len(lat)
	r.ChangeP50ms, r.ChangeP99ms = percentile(lat, 0.5), percentile(lat, 0.99)
	fmt.Printf("    %-8s EndpointSlice change to datapath: p50 %.0f ms, p99 %.0f ms (%d of %d changes seen)\n",
		impl, r.ChangeP50ms, r.ChangeP99ms, len(lat), len(changes))
	_ = svcs.Delete(ctx, name, metav1.DeleteOptions{})
	_ = slices.Delete(ctx, name, metav1.DeleteOptions{})
	return nil
}

// freeze stops the proxies' process groups (a kube-proxy's running
// iptables-restore with it) and returns what resumes them; a daemon of the
// local cluster leads its own process group.
func freeze(pids map[string]int) (thaw func(), err error) {
	thaw = func() {
		for _, pid := range pids {
			_ = syscall.Kill(-pid, syscall.SIGCONT)
		}
	}
	for _, pid := range pids {
		if err := syscall.Kill(-pid, syscall.SIGSTOP); err != nil {
			return thaw, fmt.Errorf("freeze process group %d: %w", pid, err)
		}
	}
	return thaw, nil
}

// proxyName is the local cluster's name for the implementation's process.
func proxyName(impl string) string {
	if impl == "sluice" {
		return "agent-" + nodeOf(impl)
	}
	return "kube-proxy-" + nodeOf(impl)
}

// proxyPIDs are the PIDs of the three service proxies, from the local
// cluster's state.
func proxyPIDs() (map[string]int, error) {
	data, err := os.ReadFile(stateDir + "/state.json")
	if err != nil {
		return nil, err
	}
	var st struct {
		Daemons map[string]struct{ PID int } `json:"daemons"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, impl := range impls {
		pid := st.Daemons[proxyName(impl)].PID
		if pid <= 0 {
			return nil, fmt.Errorf("no PID for %s in the local cluster's state", proxyName(impl))
		}
		out[impl] = pid
	}
	return out, nil
}

// resources reads the RSS and CPU time of the node's service proxy.
func (b *bench) resources(impl string, r *ImplResult) {
	pids, err := proxyPIDs()
	if err != nil {
		return
	}
	pid := pids[impl]
	r.ProcessName = proxyName(impl)
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				r.RSSMiB = kb / 1024
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(b)
		f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
		if len(f) > 12 {
			ut, _ := strconv.ParseFloat(f[11], 64)
			stime, _ := strconv.ParseFloat(f[12], 64)
			r.CPUSeconds = (ut + stime) / 100 // USER_HZ
		}
	}
}

func median(v []float64) float64 { return percentile(v, 0.5) }

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1)+0.5)]
}
