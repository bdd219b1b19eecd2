package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

// datapath runs the load generator once from the implementation's client
// to its probe Service, or to the pod IPs of the same two backends taken in
// turn (the limit on that node).
func (b *bench) datapath(ctx context.Context, impl string, r *ImplResult, podIP bool) error {
	var targets []string
	if podIP {
		for i := range 2 {
			ip, err := b.podIP(ctx, fmt.Sprintf("be-%s-%d", impl, i))
			if err != nil {
				return err
			}
			targets = append(targets, ip+":8080")
		}
		r.LimitBackends = len(targets)
	} else {
		svc, err := b.client.CoreV1().Services(ns).Get(ctx, "probe-"+impl, metav1.GetOptions{})
		if err != nil {
			return err
		}
		targets = []string{svc.Spec.ClusterIP + ":80"}
		r.ProbeServiceVIP = svc.Spec.ClusterIP
	}
	out, err := b.exec(ctx, "client-"+impl, b.clientBin, "-mode", "conn", "-target", strings.Join(targets, ","),
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
	what := "ClusterIP"
	if podIP {
		what = "pod IPs"
		r.PodIPConnPerSec = append(r.PodIPConnPerSec, c.ConnPerSec)
	} else {
		r.ConnPerSec = append(r.ConnPerSec, c.ConnPerSec)
		r.P50us, r.P99us = append(r.P50us, c.P50us), append(r.P99us, c.P99us)
		r.ConnErrors += c.Errors
	}
	fmt.Printf("    %-8s %-9s %6.0f conn/s\n", impl, what, c.ConnPerSec)
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
	what := "ClusterIP"
	if podIP {
		what = "pod IP"
	}
	fmt.Printf("    %-8s %-9s %6.2f Gbit/s iperf3\n", impl, what, gbps)
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
	eps := b.client.DiscoveryV1().EndpointSlices(ns)
	_ = svcs.Delete(ctx, name, metav1.DeleteOptions{})
	_ = eps.Delete(ctx, name, metav1.DeleteOptions{})
	svc, err := svcs.Create(ctx, service(name, nil), metav1.CreateOptions{})
	if err != nil {
		return err
	}
	if _, err := eps.Create(ctx, slice(name, ips[0]), metav1.CreateOptions{}); err != nil {
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
	// closer than that would be folded together. So a change comes at
	// least gap after the one before, and not before that one has been
	// seen or has timed out: each is timed until it is observed, however
	// long that takes within the timeout, never cut short by the next.
	const gap = 1200 * time.Millisecond
	timeout := b.o.changeTimeout
	watchFor := time.Duration(b.o.changes+4) * (gap + timeout)
	cmd := exec.CommandContext(ctx, b.driver, "exec", ns+"/client-"+impl, "--", b.clientBin, "-mode", "watch", "-target", vip+":80", "-for", watchFor.String())
	stdin, err := cmd.StdinPipe() // closed: the watch ends
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	observed := make(chan observation, 64)
	go func() {
		defer close(observed)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if o, ok := parseObservation(sc.Text()); ok {
				observed <- o
			}
		}
	}()
	var lines []observation
	var changes []observation
	stopWatch := func() {
		_ = stdin.Close()
		for o := range observed {
			lines = append(lines, o)
		}
		_ = cmd.Wait()
	}
	drain := func(until time.Time) { // collect lines until the time
		for t := time.NewTimer(time.Until(until)); ; {
			select {
			case o, ok := <-observed:
				if !ok {
					t.Stop()
					return
				}
				lines = append(lines, o)
			case <-t.C:
				return
			}
		}
	}
	drain(time.Now().Add(2 * gap))
	for i := range b.o.changes {
		to := (i + 1) % 2
		cur, err := eps.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			stopWatch()
			return err
		}
		cur.Endpoints = slice(name, ips[to]).Endpoints
		c := observation{at: time.Now(), host: fmt.Sprintf("be-%s-%d", impl, to)}
		if _, err := eps.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			stopWatch()
			return err
		}
		changes = append(changes, c)
		deadline := time.NewTimer(timeout)
		for waiting := true; waiting; {
			select {
			case o, ok := <-observed:
				if !ok {
					deadline.Stop()
					stopWatch()
					return fmt.Errorf("%s: the watching client ended early", impl)
				}
				lines = append(lines, o)
				waiting = o.host != c.host || o.at.Before(c.at)
			case <-deadline.C:
				waiting = false // not seen: timed out, counted as such
			}
		}
		deadline.Stop()
		drain(c.at.Add(gap))
	}
	stopWatch()
	lat, timedOut := matchChanges(changes, lines, timeout)
	r.ChangesMade, r.ChangesSeen, r.ChangeTimeoutMs = len(changes), len(lat), float64(timeout.Milliseconds())
	all := slices.Clone(lat)
	for range timedOut {
		all = append(all, r.ChangeTimeoutMs)
	}
	r.ChangeP50ms, r.ChangeP99ms = percentile(all, 0.5), percentile(all, 0.99)
	fmt.Printf("    %-8s EndpointSlice change to datapath: p50 %.0f ms, p99 %.0f ms (%d of %d changes seen, %d not within %v)\n",
		impl, r.ChangeP50ms, r.ChangeP99ms, len(lat), len(changes), timedOut, timeout)
	_ = svcs.Delete(ctx, name, metav1.DeleteOptions{})
	_ = eps.Delete(ctx, name, metav1.DeleteOptions{})
	return nil
}

// An observation is the client seeing a backend answer (or a change made
// to send it there).
type observation struct {
	at   time.Time
	host string
}

// parseObservation reads a watch line, "UNIXNANO HOSTNAME".
func parseObservation(line string) (observation, bool) {
	f := strings.Fields(line)
	if len(f) != 2 {
		return observation{}, false
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return observation{}, false
	}
	return observation{time.Unix(0, ns), f[1]}, true
}

// matchChanges times each change: to the client's first answer from the
// change's backend after it was made, if within timeout; the next change
// does not cut it short (it comes only after this one was seen). It
// returns the latencies in milliseconds of the changes seen, in order, and
// how many were not seen within the timeout.
func matchChanges(changes, lines []observation, timeout time.Duration) (lat []float64, timedOut int) {
	for _, c := range changes {
		found := false
		for _, l := range lines {
			if l.host == c.host && !l.at.Before(c.at) && l.at.Sub(c.at) <= timeout {
				lat = append(lat, float64(l.at.Sub(c.at).Microseconds())/1000)
				found = true
				break
			}
		}
		if !found {
			timedOut++
		}
	}
	return lat, timedOut
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

// clusterState is what the bench reads of the local cluster's state.
type clusterState struct {
	Daemons map[string]struct{ PID int } `json:"daemons"`
	Nodes   []struct {
		Name string `json:"name"`
		Host struct {
			BPFFS  string `json:"bpffs"`
			Cgroup string `json:"cgroup"`
		} `json:"host"`
	} `json:"nodes"`
}

func readClusterState() (*clusterState, error) {
	data, err := os.ReadFile(stateDir + "/state.json")
	if err != nil {
		return nil, err
	}
	var st clusterState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("the local cluster's state: %w", err)
	}
	return &st, nil
}

// proxyPIDs are the PIDs of the three service proxies, from the local
// cluster's state.
func proxyPIDs() (map[string]int, error) {
	st, err := readClusterState()
	if err != nil {
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

// adoptProxies moves each service proxy into a memory cgroup of its own
// (resources.go); without one, kernel memory is not measured.
func (b *bench) adoptProxies() {
	st, err := readClusterState()
	if err == nil && len(st.Nodes) == 0 {
		err = errors.New("no nodes in the local cluster's state")
	}
	if err == nil {
		b.memcg, err = newMemcgs(filepath.Dir(st.Nodes[0].Host.Cgroup))
	}
	pids, perr := proxyPIDs()
	for _, impl := range impls {
		if err != nil || perr != nil {
			break
		}
		err = b.memcg.adopt(impl, pids[impl])
	}
	if err = errors.Join(err, perr); err != nil {
		fmt.Printf("    kernel memory of the proxies not measured: %v\n", err)
		b.memcg = nil
	}
}

// resources reads the RSS, CPU time and kernel memory of the node's
// service proxy (resources.go says how).
func (b *bench) resources(impl string, r *ImplResult) {
	st, err := readClusterState()
	if err != nil {
		fmt.Printf("    %-8s resources not read: %v\n", impl, err)
		return
	}
	pid := st.Daemons[proxyName(impl)].PID
	r.ProcessName = proxyName(impl)
	r.RSSMiB = procRSSMiB(pid)
	if self, children, err := procCPU(pid); err == nil {
		r.CPUSeconds, r.ChildCPUSeconds = self, &children
	}
	if b.memcg == nil {
		return
	}
	const mib = 1 << 20
	cg, err := b.memcg.kernelBytes(impl)
	if err != nil {
		fmt.Printf("    %-8s kernel memory not read: %v\n", impl, err)
		return
	}
	r.CgroupKernelMiB = float64(cg) / mib
	kernel := r.CgroupKernelMiB
	if impl == "sluice" {
		bpffs := ""
		for _, n := range st.Nodes {
			if n.Name == nodeOf(impl) {
				bpffs = n.Host.BPFFS
			}
		}
		mem, maps, err := mapMemlock(bpffs)
		if err != nil || maps == 0 {
			fmt.Printf("    %-8s BPF map memory not read from %q: %v (%d maps)\n", impl, bpffs, err, maps)
			return
		}
		r.MapMiB, r.Maps = float64(mem)/mib, maps
		kernel += r.MapMiB
	} else {
		n, err := conntrackEntries(pid)
		if err != nil {
			fmt.Printf("    %-8s conntrack not read: %v\n", impl, err)
			return
		}
		r.ConntrackEntries, r.ConntrackMiB = n, float64(n*conntrackObjectSize())/mib
		kernel += r.ConntrackMiB
	}
	r.KernelMiB = &kernel
	fmt.Printf("    %-8s RSS %.0f MiB, kernel %.1f MiB (maps %.1f MiB in %d, conntrack %d entries %.1f MiB, own cgroup %.1f MiB); CPU %.1f s + children %.1f s\n",
		impl, r.RSSMiB, kernel, r.MapMiB, r.Maps, r.ConntrackEntries, r.ConntrackMiB, r.CgroupKernelMiB, r.CPUSeconds, deref(r.ChildCPUSeconds))
}

func deref(p *float64) float64 {
	if p == nil {
		return 0
	}
	return *p
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
