// Command bench measures Sluice side by side with kube-proxy (iptables and
// nftables modes) and with the limit (pod to pod without a Service), in one
// run on one machine: a local cluster of three nodes, one per
// implementation, all fed the same Services and EndpointSlices by one API
// server. It writes a JSON file of results and the tables of
// docs/benchmarks.md (between the "bench:" markers).
//
//	go run ./hack/bench [-quick] [-scales 100,1000,10000]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

const (
	stateDir   = "/run/sluice-localcluster"
	ns         = "bench"
	agnhost    = "registry.k8s.io/e2e-test-images/agnhost:2.53"
	fillerBase = "filler-"
)

// The three nodes, in the order localcluster creates them.
var impls = []string{"sluice", "iptables", "nftables"}

func nodeOf(impl string) string { return fmt.Sprintf("node-%d", slices.Index(impls, impl)+1) }

type options struct {
	scales        []int
	syncTimeout   time.Duration
	repeat        int
	tputRepeat    int // iperf3 runs per throughput figure
	duration      time.Duration
	changes       int
	changeTimeout time.Duration
	out, doc      string
}

func main() {
	quick := flag.Bool("quick", false, "the 1,000-Service point only, short runs: ratios in a few minutes")
	scalesFlag := flag.String("scales", "100,1000,10000", "Service counts to measure at, ascending")
	repeat := flag.Int("repeat", 3, "runs per datapath figure (median and spread are reported)")
	duration := flag.Duration("duration", 5*time.Second, "length of one connection-rate run")
	changes := flag.Int("changes", 100, "EndpointSlice changes timed per implementation and scale")
	changeTimeout := flag.Duration("change-timeout", 30*time.Second, "how long one EndpointSlice change is waited for before it counts as not seen")
	syncTimeout := flag.Duration("sync-timeout", 8*time.Minute, "how long an implementation may take to answer on the last Service")
	out := flag.String("out", "docs/bench/results.json", "JSON results")
	doc := flag.String("doc", "docs/benchmarks.md", "document whose bench: section is regenerated (empty: none)")
	fromJSON := flag.String("from-json", "", "measure nothing: regenerate the document and plots from this results file")
	flag.Parse()
	o := options{repeat: *repeat, tputRepeat: *repeat, duration: *duration, changes: *changes, changeTimeout: *changeTimeout, out: *out, doc: *doc, syncTimeout: *syncTimeout}
	for _, s := range strings.Split(*scalesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fatal(fmt.Errorf("-scales: %q is not a positive number", s))
		}
		o.scales = append(o.scales, n)
	}
	if *quick {
		o.scales, o.repeat, o.tputRepeat, o.duration, o.changes, o.doc = []int{1000}, 3, 1, 3*time.Second, 20, ""
		o.out = filepath.Join(os.TempDir(), "sluice-bench-quick.json")
	}
	if *fromJSON != "" {
		if err := report(*fromJSON, *doc); err != nil {
			fatal(err)
		}
		return
	}
	if os.Geteuid() != 0 {
		fatal(errors.New("run as root (it brings up the local cluster)"))
	}
	if err := run(o); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "bench: %v\n", err)
	os.Exit(1)
}

func step(format string, a ...any) { fmt.Printf("==> "+format+"\n", a...) }

func run(o options) error {
	lc := func(args ...string) error {
		cmd := exec.Command("go", append([]string{"run", "./hack/localcluster"}, args...)...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		return cmd.Run()
	}
	step("building the load generator")
	clientBin := filepath.Join(os.TempDir(), "sluice-benchclient")
	if b, err := exec.Command("go", "build", "-o", clientBin, "./hack/bench/benchclient").CombinedOutput(); err != nil {
		return fmt.Errorf("build benchclient: %v\n%s", err, b)
	}
	step("a local cluster with one node per implementation: %s", strings.Join(impls, ", "))
	if err := lc("down"); err != nil {
		return err
	}
	if err := lc("up", "--nodes", "3", "--proxies", strings.Join(impls, ",")); err != nil {
		return err
	}
	var b *bench
	defer func() {
		step("removing the local cluster")
		_ = lc("down")
		if b != nil {
			b.memcg.remove() // empty now
		}
	}()
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(stateDir, "admin.kubeconfig"))
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 1000, 2000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	b = &bench{o: o, client: client, clientBin: clientBin, driver: filepath.Join(stateDir, "bin", "localcluster")}
	b.adoptProxies()
	res, err := b.measure(context.Background())
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(o.out, data, 0o644); err != nil {
		return err
	}
	step("results in %s", o.out)
	fmt.Print(summary(res))
	if o.doc != "" {
		if err := writeDoc(o.doc, filepath.Dir(o.out), res); err != nil {
			return err
		}
		step("tables and plots regenerated in %s", o.doc)
	}
	return nil
}

// report regenerates the document's tables and plots from a results file;
// the plots go next to it.
func report(resultsFile, doc string) error {
	data, err := os.ReadFile(resultsFile)
	if err != nil {
		return err
	}
	var res Results
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("%s: %w", resultsFile, err)
	}
	fmt.Print(summary(&res))
	if doc == "" {
		return nil
	}
	if err := writeDoc(doc, filepath.Dir(resultsFile), &res); err != nil {
		return err
	}
	step("tables and plots regenerated in %s", doc)
	return nil
}

type bench struct {
	o         options
	client    kubernetes.Interface
	clientBin string
	driver    string
	memcg     *memcgs // nil: kernel memory not measured
}

// Results are one run's figures.
type Results struct {
	Machine string        `json:"machine"`
	Date    string        `json:"date"`
	Repeat  int           `json:"repeat"`
	Seconds float64       `json:"runSeconds"`
	Scales  []ScaleResult `json:"scales"`
}

// ScaleResult holds every figure at one Service count, by implementation
// ("sluice", "iptables", "nftables").
type ScaleResult struct {
	Services int                    `json:"services"`
	Impl     map[string]*ImplResult `json:"impl"`
	Orders   [][]string             `json:"orders,omitempty"` // the implementations' order in each repeat
}

// ImplResult is one implementation's figures at one scale.
type ImplResult struct {
	ConnPerSec      []float64 `json:"connPerSec"`      // one per repeat
	PodIPConnPerSec []float64 `json:"podIPConnPerSec"` // the limit on the same node
	// LimitBackends is how many backend pod IPs the limit runs take in
	// turn: the ClusterIP's two since this field exists; 0 in older
	// results, whose limit ran against the first backend alone.
	LimitBackends   int       `json:"limitBackends,omitempty"`
	P50us           []float64 `json:"p50us,omitempty"`
	P99us           []float64 `json:"p99us,omitempty"`
	ConnErrors      int       `json:"connErrors"`
	Gbps            []float64 `json:"gbps,omitempty"`            // iperf3 through the iperf Service
	PodIPGbps       []float64 `json:"podIPGbps,omitempty"`       // iperf3 to the server's pod IP
	SyncSeconds     float64   `json:"syncSeconds,omitempty"`     // thaw to the last Service answering
	SyncTimedOut    bool      `json:"syncTimedOut,omitempty"`    // not answering within -sync-timeout
	ChangeP50ms     float64   `json:"changeP50ms,omitempty"`     // EndpointSlice change to the datapath using it
	ChangeP99ms     float64   `json:"changeP99ms,omitempty"`     // (a timed-out change counts at the timeout)
	ChangesSeen     int       `json:"changesSeen,omitempty"`     // of ChangesMade (older results: of -changes)
	ChangesMade     int       `json:"changesMade,omitempty"`     //
	ChangeTimeoutMs float64   `json:"changeTimeoutMs,omitempty"` // how long one change was waited for
	RSSMiB          float64   `json:"rssMiB,omitempty"`          // agent or kube-proxy
	CPUSeconds      float64   `json:"cpuSeconds,omitempty"`      // since start, the daemon's own
	ChildCPUSeconds *float64  `json:"childCpuSeconds,omitempty"` // since start, its children's (nil: not measured)
	// Kernel memory beside the RSS (resources.go): the pinned BPF maps for
	// Sluice, conntrack and rules for kube-proxy, and for both what the
	// daemon charged to a memory cgroup of its own. nil: not measured.
	KernelMiB        *float64 `json:"kernelMiB,omitempty"`
	MapMiB           float64  `json:"mapMiB,omitempty"`           // Sluice: pinned BPF maps (memlock)
	Maps             int      `json:"maps,omitempty"`             //
	ConntrackEntries int      `json:"conntrackEntries,omitempty"` // kube-proxy: the node's nf_conntrack
	ConntrackMiB     float64  `json:"conntrackMiB,omitempty"`     //
	CgroupKernelMiB  float64  `json:"cgroupKernelMiB,omitempty"`  // charged to the daemon's own memory cgroup
	ProcessName      string   `json:"process,omitempty"`          //
	ProbeServiceVIP  string   `json:"probeServiceVIP,omitempty"`  //
}

func (b *bench) measure(ctx context.Context) (*Results, error) {
	start := time.Now()
	res := &Results{Machine: machine(), Date: start.UTC().Format("2006-01-02"), Repeat: b.o.repeat}
	if err := b.setup(ctx); err != nil {
		return nil, err
	}
	existing := 0
	for _, n := range b.o.scales {
		sr := ScaleResult{Services: n, Impl: map[string]*ImplResult{}}
		step("%d Services x 10 endpoints", n)
		sync, err := b.grow(ctx, existing, n)
		if err != nil {
			return nil, err
		}
		existing = n
		var answering []string
		for _, impl := range impls {
			s, ok := sync[impl]
			if !ok {
				s = b.o.syncTimeout.Seconds() // a lower bound
			}
			sr.Impl[impl] = &ImplResult{SyncSeconds: s, SyncTimedOut: !ok}
			if ok { // else its datapath never programmed the probe Service
				answering = append(answering, impl)
			}
		}
		// The datapath runs go round the implementations, each alone, in
		// an order rotated per repeat, so that whatever drifts during the
		// run (the machine's other load, caches, conntrack filling) does
		// not always favour the same one.
		for rep := range b.o.repeat {
			order := rotation(answering, rep)
			sr.Orders = append(sr.Orders, order)
			fmt.Printf("    repeat %d of %d: %s\n", rep+1, b.o.repeat, strings.Join(order, ", "))
			for _, impl := range order {
				err := b.alone(impl, func() error { return b.datapathRepeat(ctx, impl, sr.Impl[impl], rep) })
				if err != nil {
					return nil, err
				}
			}
		}
		for _, impl := range answering {
			r := sr.Impl[impl]
			fmt.Printf("    %-8s ClusterIP %6.0f conn/s, pod IP %6.0f conn/s, ClusterIP %.2f Gbit/s, pod IP %.2f Gbit/s (medians)\n",
				impl, median(r.ConnPerSec), median(r.PodIPConnPerSec), median(r.Gbps), median(r.PodIPGbps))
		}
		for _, impl := range answering {
			err := b.alone(impl, func() error {
				if err := b.churn(ctx, impl, sr.Impl[impl]); err != nil {
					return err
				}
				b.resources(impl, sr.Impl[impl])
				return nil
			})
			if err != nil {
				return nil, err
			}
		}
		res.Scales = append(res.Scales, sr)
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// rotation is the order of the implementations in repeat rep: the list
// turned left rep times (sluice, iptables, nftables; then iptables,
// nftables, sluice; ...).
func rotation(list []string, rep int) []string {
	if len(list) == 0 {
		return nil
	}
	k := rep % len(list)
	return append(slices.Clone(list[k:]), list[:k]...)
}

// alone runs fn with the other two proxies frozen: on a small machine a
// kube-proxy still catching up (iptables-restore at 10,000 Services runs
// for minutes) would otherwise take CPU from the one measured.
func (b *bench) alone(impl string, fn func() error) error {
	pids, err := proxyPIDs()
	if err != nil {
		return err
	}
	delete(pids, impl)
	thaw, err := freeze(pids)
	defer thaw()
	if err != nil {
		return err
	}
	return fn()
}

// datapathRepeat is one repeat of an implementation's datapath figures:
// connection rate through the ClusterIP and to the pod IPs (which goes
// first alternates), then, for the first tputRepeat repeats, throughput.
func (b *bench) datapathRepeat(ctx context.Context, impl string, r *ImplResult, rep int) error {
	for _, podIP := range []bool{rep%2 == 1, rep%2 == 0} {
		if err := b.datapath(ctx, impl, r, podIP); err != nil {
			return err
		}
	}
	if rep >= b.o.tputRepeat {
		return nil
	}
	for _, podIP := range []bool{rep%2 == 1, rep%2 == 0} {
		if err := b.throughput(ctx, impl, r, podIP); err != nil {
			return err
		}
	}
	return nil
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%s, %d CPUs, Linux %s", model, numCPU(), strings.TrimSpace(string(kernel)))
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "\nprocessor") + 1
}

// setup creates, on every node, two backends and a client, and a Service
// for iperf3 in front of the first backend.
func (b *bench) setup(ctx context.Context) error {
	step("backends and a client on every node")
	if _, err := b.client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(250 * time.Millisecond) {
		if _, err := b.client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		} else if time.Now().After(deadline) {
			return fmt.Errorf("namespace %s has no default ServiceAccount: %w", ns, err)
		}
	}
	var names []string
	for _, impl := range impls {
		for _, name := range []string{"be-" + impl + "-0", "be-" + impl + "-1", "client-" + impl} {
			labels := map[string]string{}
			if strings.HasPrefix(name, "be-") {
				labels["bench"] = impl
			}
			if name == iperfServer(impl) {
				labels["iperf"] = impl
			}
			pod := &v1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
				Spec: v1.PodSpec{
					NodeName: nodeOf(impl), AutomountServiceAccountToken: ptr.To(false),
					Containers: []v1.Container{{Name: "netexec", Image: agnhost, Args: []string{"netexec", "--http-port=8080"},
						ReadinessProbe: &v1.Probe{PeriodSeconds: 1, ProbeHandler: v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromInt32(8080)}}}}},
				},
			}
			if _, err := b.client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				return err
			}
			names = append(names, name)
		}
	}
	for _, impl := range impls {
		svc := &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "iperf-" + impl},
			Spec: v1.ServiceSpec{Selector: map[string]string{"iperf": impl},
				Ports: []v1.ServicePort{{Name: "iperf", Port: iperfPort, Protocol: v1.ProtocolTCP}}},
		}
		if _, err := b.client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	for _, name := range names {
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(250 * time.Millisecond) {
			p, err := b.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err == nil && p.Status.PodIP != "" && podReady(p) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("pod %s not ready after 2m", name)
			}
		}
	}
	return nil
}

func podReady(p *v1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

func (b *bench) podIP(ctx context.Context, name string) (string, error) {
	p, err := b.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	return p.Status.PodIP, nil
}

// exec runs the load generator (or another command) in a pod.
func (b *bench) exec(ctx context.Context, pod string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, b.driver, append([]string{"exec", ns + "/" + pod, "--"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("exec in %s: %w: %s", pod, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}
