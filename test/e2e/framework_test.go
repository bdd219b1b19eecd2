//go:build e2e

package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

const (
	agnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.53"

	// netexec listens on these in every pod; Services forward their own
	// ports to them.
	podHTTPPort = 8080
	podUDPPort  = 8081
	svcHTTPPort = 80
	svcUDPPort  = 81

	// A node may have to pull the agnhost image before a pod gets Ready.
	readyTimeout = 3 * time.Minute
	// The agent programs a change within ~2s; the rest is slack for a
	// loaded machine.
	datapathTimeout = 30 * time.Second
	// Bound driver calls: a wedged kubectl exec must not hang the suite.
	execTimeout    = 30 * time.Second
	restartTimeout = 2 * time.Minute
)

// cluster is what all tests share: the API client, the driver and the
// nodes, sorted by name.
type cluster struct {
	client kubernetes.Interface
	driver string
	nodes  []string
}

var loadCluster = sync.OnceValues(func() (*cluster, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("SLUICE_E2E_KUBECONFIG"))
	if err != nil {
		return nil, fmt.Errorf("load SLUICE_E2E_KUBECONFIG: %w", err)
	}
	cfg.QPS, cfg.Burst = 50, 100 // parallel tests poll pods and EndpointSlices
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	driver := os.Getenv("SLUICE_E2E_DRIVER")
	if driver == "" {
		return nil, errors.New("SLUICE_E2E_DRIVER not set: the suite needs it to run commands in pods and restart agents")
	}
	if driver, err = exec.LookPath(driver); err != nil {
		return nil, fmt.Errorf("SLUICE_E2E_DRIVER (relative paths start at test/e2e): %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var nodes []string
	for _, n := range list.Items {
		nodes = append(nodes, n.Name)
	}
	if len(nodes) < 2 {
		return nil, fmt.Errorf("the suite needs at least 2 nodes, the cluster has %d", len(nodes))
	}
	slices.Sort(nodes)
	return &cluster{client: client, driver: driver, nodes: nodes}, nil
})

// testNS is one test's view of the cluster: a namespace of its own,
// deleted when the test ends, and the IP family its Services, pod
// addresses and node addresses are of (IPv4 unless the test runs in
// both families).
type testNS struct {
	*cluster
	t      *testing.T
	name   string
	family v1.IPFamily
}

// inBothFamilies runs test once per IP family, each in a parallel subtest
// with a namespace of its own. A cluster without IPv6 node addresses
// skips the IPv6 half, saying so.
func inBothFamilies(t *testing.T, test func(t *testing.T, f *testNS)) {
	inFamilies(t, true, test)
}

// inBothFamiliesInTurn is inBothFamilies for tests that disturb the
// cluster (an agent restart): one family after the other.
func inBothFamiliesInTurn(t *testing.T, test func(t *testing.T, f *testNS)) {
	inFamilies(t, false, test)
}

func inFamilies(t *testing.T, parallel bool, test func(t *testing.T, f *testNS)) {
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		t.Run(string(family), func(t *testing.T) {
			if parallel {
				t.Parallel()
			}
			f := newTestNS(t)
			f.family = family
			if family == v1.IPv6Protocol && !f.hasIPv6Nodes() {
				t.Skip("the cluster's nodes have no IPv6 InternalIP: not a dual-stack cluster")
			}
			test(t, f)
		})
	}
}

// hasIPv6Nodes reports whether the first node has an IPv6 InternalIP.
func (f *testNS) hasIPv6Nodes() bool {
	n, err := f.client.CoreV1().Nodes().Get(f.t.Context(), f.nodes[0], metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	for _, a := range n.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil && a.Type == v1.NodeInternalIP && ip.Is6() {
			return true
		}
	}
	return false
}

// ofFamily is the first of addrs in the test's family, or "".
func (f *testNS) ofFamily(addrs ...string) string {
	for _, a := range addrs {
		if ip, err := netip.ParseAddr(a); err == nil && ip.Is6() == (f.family == v1.IPv6Protocol) {
			return a
		}
	}
	return ""
}

// hostPrefix is addr as a prefix of one address (/32 or /128).
func hostPrefix(addr string) string {
	ip := netip.MustParseAddr(addr)
	return netip.PrefixFrom(ip, ip.BitLen()).String()
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	if os.Getenv("SLUICE_E2E_KUBECONFIG") == "" {
		t.Skip("SLUICE_E2E_KUBECONFIG not set: run `make e2e`, or start a cluster with `go run ./hack/localcluster up` and set SLUICE_E2E_KUBECONFIG and SLUICE_E2E_DRIVER (see doc.go)")
	}
	c, err := loadCluster()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := c.client.CoreV1().Namespaces().Create(t.Context(),
		&v1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "sluice-e2e-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	f := &testNS{cluster: c, t: t, name: ns.Name, family: v1.IPv4Protocol}
	t.Logf("namespace %s", f.name)
	t.Cleanup(func() {
		// t.Context is already canceled here.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if t.Failed() {
			f.dumpState(ctx)
		}
		if err := c.client.CoreV1().Namespaces().Delete(ctx, f.name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete namespace %s: %v", f.name, err)
		}
	})
	// Pods are refused until the serviceaccount controller has created
	// the namespace's default ServiceAccount.
	f.eventually("ServiceAccount default", readyTimeout, func(ctx context.Context) error {
		_, err := c.client.CoreV1().ServiceAccounts(f.name).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	return f
}

// eventually calls check every half second until it returns nil, and fails
// the test with check's last error once timeout has passed.
func (f *testNS) eventually(what string, timeout time.Duration, check func(context.Context) error) {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check(f.t.Context())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// driverRun runs the driver with args; the error carries its stderr.
func (f *testNS) driverRun(timeout time.Duration, args ...string) (stdout string, err error) {
	ctx, cancel := context.WithTimeout(f.t.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.driver, args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	// The driver's children (kubectl, nsenter) may hold the pipes open
	// after it is killed.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

// exec runs a command in the pod's network namespace. The error carries
// the command's stderr, where agnhost connect says REFUSED or TIMEOUT.
func (f *testNS) exec(pod string, args ...string) (stdout string, err error) {
	return f.driverRun(execTimeout, append([]string{"exec", f.name + "/" + pod, "--"}, args...)...)
}

func (f *testNS) restartAgent(node string) {
	f.t.Helper()
	if _, err := f.driverRun(restartTimeout, "restart-agent", node); err != nil {
		f.t.Fatalf("restart agent: %v", err)
	}
}

// netexecPod is an agnhost netexec pod pinned to node.
func netexecPod(name, node string, labels map[string]string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       netexecSpec(node),
	}
}

// netexecSpec runs agnhost netexec with extraArgs on node; an empty node
// leaves the choice to the scheduler. The pods are pinned by
// spec.nodeName, never by label: the local cluster's nodes may not carry
// kubernetes.io/hostname.
func netexecSpec(node string, extraArgs ...string) v1.PodSpec {
	return v1.PodSpec{
		NodeName: node,
		// Every node runs the agent, so every node is tested, tainted
		// control-plane nodes included.
		Tolerations: []v1.Toleration{{Operator: v1.TolerationOpExists}},
		// The pods never call the API server.
		AutomountServiceAccountToken: ptr.To(false),
		Containers: []v1.Container{{
			Name:  "netexec",
			Image: agnhostImage,
			Args: append([]string{"netexec",
				"--http-port=" + strconv.Itoa(podHTTPPort),
				"--udp-port=" + strconv.Itoa(podUDPPort)}, extraArgs...),
			Ports: []v1.ContainerPort{
				{Name: "http", ContainerPort: podHTTPPort, Protocol: v1.ProtocolTCP},
				{Name: "udp", ContainerPort: podUDPPort, Protocol: v1.ProtocolUDP},
			},
			ReadinessProbe: &v1.Probe{
				ProbeHandler:  v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromInt32(podHTTPPort)}},
				PeriodSeconds: 1,
			},
		}},
	}
}

// runPods creates the pods, waits until all are Ready and returns their
// IPs of the test's family in the same order.
func (f *testNS) runPods(pods ...*v1.Pod) []string {
	f.t.Helper()
	for _, p := range pods {
		if _, err := f.client.CoreV1().Pods(f.name).Create(f.t.Context(), p, metav1.CreateOptions{}); err != nil {
			f.t.Fatalf("create pod %s: %v", p.Name, err)
		}
	}
	ips := make([]string, len(pods))
	for i, p := range pods {
		f.eventually("pod "+p.Name+" Ready", readyTimeout, func(ctx context.Context) error {
			got, err := f.client.CoreV1().Pods(f.name).Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !podReady(got) || got.Status.PodIP == "" {
				return errors.New(describePod(got))
			}
			ips[i] = f.podIP(got)
			return nil
		})
	}
	return ips
}

// podIP is the pod's address of the test's family; a pod without one
// fails the test.
func (f *testNS) podIP(p *v1.Pod) string {
	f.t.Helper()
	var all []string
	for _, ip := range p.Status.PodIPs {
		all = append(all, ip.IP)
	}
	ip := f.ofFamily(all...)
	if ip == "" {
		f.t.Fatalf("pod %s has no %s address: %v", p.Name, f.family, all)
	}
	return ip
}

func podReady(p *v1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

func describePod(p *v1.Pod) string {
	s := fmt.Sprintf("node %s, phase %s, ip %q, ready %t", p.Spec.NodeName, p.Status.Phase, p.Status.PodIP, podReady(p))
	if p.DeletionTimestamp != nil {
		s += ", terminating"
	}
	for _, c := range p.Status.ContainerStatuses {
		if w := c.State.Waiting; w != nil {
			s += fmt.Sprintf(", %s waiting: %s %s", c.Name, w.Reason, w.Message)
		}
	}
	return s
}

// service is a ClusterIP Service over the pods matching selector, with
// port 80/TCP to netexec's HTTP port and 81/UDP to its UDP port.
func service(name string, selector map[string]string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1.ServiceSpec{
			Selector: selector,
			Ports: []v1.ServicePort{
				{Name: "http", Protocol: v1.ProtocolTCP, Port: svcHTTPPort, TargetPort: intstr.FromInt32(podHTTPPort)},
				{Name: "udp", Protocol: v1.ProtocolUDP, Port: svcUDPPort, TargetPort: intstr.FromInt32(podUDPPort)},
			},
		},
	}
}

// createService creates svc, of the test's family unless it names its
// own, waits until its EndpointSlices list exactly endpoints ready
// endpoints and returns its ClusterIP.
func (f *testNS) createService(svc *v1.Service, endpoints int) string {
	f.t.Helper()
	if len(svc.Spec.IPFamilies) == 0 {
		svc.Spec.IPFamilies = []v1.IPFamily{f.family}
	}
	created, err := f.client.CoreV1().Services(f.name).Create(f.t.Context(), svc, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatalf("create service %s: %v", svc.Name, err)
	}
	f.waitForEndpoints(svc.Name, endpoints)
	return created.Spec.ClusterIP
}

// waitForEndpoints waits until the Service's EndpointSlices exist and list
// exactly want endpoints, all ready: terminating pods have gone too.
func (f *testNS) waitForEndpoints(service string, want int) {
	f.t.Helper()
	what := fmt.Sprintf("%d ready endpoints of Service %s", want, service)
	f.eventually(what, readyTimeout, func(ctx context.Context) error {
		list, err := f.client.DiscoveryV1().EndpointSlices(f.name).List(ctx,
			metav1.ListOptions{LabelSelector: discovery.LabelServiceName + "=" + service})
		if err != nil {
			return err
		}
		if len(list.Items) == 0 {
			return errors.New("no EndpointSlice yet")
		}
		ready, notReady := 0, 0
		for _, s := range list.Items {
			for _, ep := range s.Endpoints {
				// A nil condition means ready.
				if ptr.Deref(ep.Conditions.Ready, true) {
					ready++
				} else {
					notReady++
				}
			}
		}
		if ready != want || notReady != 0 {
			return fmt.Errorf("%d ready and %d not ready endpoints", ready, notReady)
		}
		return nil
	})
}

// dialPort is a protocol netexec's /dial speaks ("http" or "udp") and a
// port to dial.
type dialPort struct {
	proto string
	port  int
}

var (
	podPorts = []dialPort{{"http", podHTTPPort}, {"udp", podUDPPort}}
	svcPorts = []dialPort{{"http", svcHTTPPort}, {"udp", svcUDPPort}}
)

// dialFrom has netexec in the client pod dial host:port once, over "http"
// or "udp", asking for the hostname, and returns the answer.
func (f *testNS) dialFrom(client, proto, host string, port int) (hostname string, err error) {
	query := url.Values{
		"request":  {"hostname"},
		"protocol": {proto},
		"host":     {host},
		"port":     {strconv.Itoa(port)},
		"tries":    {"1"},
	}
	// netexec gives up on the dial after 5s; curl waits longer so that
	// netexec's own error comes back.
	out, err := f.exec(client, "curl", "-s", "--max-time", "10", "http://127.0.0.1:"+strconv.Itoa(podHTTPPort)+"/dial?"+query.Encode())
	if err != nil {
		return "", err
	}
	var answer struct {
		Responses []string `json:"responses"`
		Errors    []string `json:"errors"`
	}
	if err := json.Unmarshal([]byte(out), &answer); err != nil {
		return "", fmt.Errorf("%s dial to %s:%d from %s: unreadable answer %q: %w", proto, host, port, client, out, err)
	}
	if len(answer.Responses) != 1 {
		return "", fmt.Errorf("%s dial to %s:%d from %s failed: %v", proto, host, port, client, answer.Errors)
	}
	return answer.Responses[0], nil
}

// dialEventually retries dialFrom until it answers, to ride out the agent
// programming a Service whose EndpointSlices have just settled, and
// returns the answer.
func (f *testNS) dialEventually(client, proto, host string, port int) string {
	f.t.Helper()
	var hostname string
	f.eventually(fmt.Sprintf("%s answer from %s:%d in %s", proto, host, port, client), datapathTimeout,
		func(context.Context) error {
			var err error
			hostname, err = f.dialFrom(client, proto, host, port)
			return err
		})
	return hostname
}

// dumpState logs the namespace's pods, Services, EndpointSlices and
// events, for a failed test.
func (f *testNS) dumpState(ctx context.Context) {
	t, core := f.t, f.client.CoreV1()
	if pods, err := core.Pods(f.name).List(ctx, metav1.ListOptions{}); err != nil {
		t.Logf("list pods: %v", err)
	} else {
		for _, p := range pods.Items {
			t.Logf("pod %s: %s", p.Name, describePod(&p))
		}
	}
	if svcs, err := core.Services(f.name).List(ctx, metav1.ListOptions{}); err != nil {
		t.Logf("list services: %v", err)
	} else {
		for _, s := range svcs.Items {
			t.Logf("service %s: clusterIP %s, affinity %s", s.Name, s.Spec.ClusterIP, s.Spec.SessionAffinity)
		}
	}
	if list, err := f.client.DiscoveryV1().EndpointSlices(f.name).List(ctx, metav1.ListOptions{}); err != nil {
		t.Logf("list endpointslices: %v", err)
	} else {
		for _, s := range list.Items {
			var eps []string
			for _, ep := range s.Endpoints {
				c := ep.Conditions
				eps = append(eps, fmt.Sprintf("%v ready=%t serving=%t terminating=%t", ep.Addresses,
					ptr.Deref(c.Ready, true), ptr.Deref(c.Serving, true), ptr.Deref(c.Terminating, false)))
			}
			t.Logf("endpointslice %s of service %s: [%s]", s.Name, s.Labels[discovery.LabelServiceName], strings.Join(eps, "; "))
		}
	}
	if events, err := core.Events(f.name).List(ctx, metav1.ListOptions{}); err != nil {
		t.Logf("list events: %v", err)
	} else {
		for _, e := range events.Items {
			t.Logf("event %s/%s: %s: %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
		}
	}
}
