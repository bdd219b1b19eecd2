//go:build e2e

package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/sluice-net/sluice/internal/observeapi"
)

// The `sluice` CLI against the cluster: on a node through the driver
// (`DRIVER sluice NODE ARGS...`: the agent's pod on kind, the node's
// namespace and the agent's socket on the local cluster), and from
// outside with the admin kubeconfig, through the API server's pod proxy.

// flowLatency is how soon a flow must reach `sluice observe --follow`
// after the datapath saw its packet.
const flowLatency = time.Second

// observeTimeout bounds the wait for a flow the test made: the agent
// reads the ring at once, so only a loaded machine makes this long.
const observeTimeout = 10 * time.Second

// sourcePorts hands out client source ports (curl --local-port), so that
// each connection a test makes is known in the flows by its port.
var sourcePorts atomic.Int32

func init() { sourcePorts.Store(int32(20000 + rand.IntN(10000))) }

func nextSourcePort() int { return int(sourcePorts.Add(1)) }

// sluice runs the CLI on node through the driver; the test skips when
// the driver cannot.
func (f *testNS) sluice(node string, args ...string) (string, error) {
	f.t.Helper()
	out, err := f.driverRun(execTimeout, append([]string{"sluice", node}, args...)...)
	if exitCode(err) == driverUnsupported {
		f.t.Skipf("skipped: the driver cannot run the sluice CLI on this cluster: %v", err)
	}
	return out, err
}

// sluiceJSON runs `sluice ARGS -o json` on node and decodes the answer.
func (f *testNS) sluiceJSON(node string, out any, args ...string) error {
	f.t.Helper()
	stdout, err := f.sluice(node, append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(stdout), out); err != nil {
		return fmt.Errorf("sluice %s: unreadable answer %q: %w", strings.Join(args, " "), stdout, err)
	}
	return nil
}

// flows runs `sluice observe ARGS -o json` on node and returns the flows.
func (f *testNS) flows(node string, args ...string) ([]observeapi.Flow, error) {
	f.t.Helper()
	out, err := f.sluice(node, append([]string{"observe", "-o", "json"}, args...)...)
	if err != nil {
		return nil, err
	}
	return decodeFlows(out)
}

func decodeFlows(out string) ([]observeapi.Flow, error) {
	var flows []observeapi.Flow
	err := observeapi.DecodeFlows(strings.NewReader(out), func(fl observeapi.Flow) error {
		flows = append(flows, fl)
		return nil
	})
	return flows, err
}

// awaitFlow polls `sluice observe ARGS` on node until a flow from source
// port srcPort is there, and returns it.
func (f *testNS) awaitFlow(node string, srcPort int, args ...string) observeapi.Flow {
	f.t.Helper()
	var got observeapi.Flow
	f.eventually(fmt.Sprintf("a flow from source port %d in `sluice observe %s` on %s", srcPort, strings.Join(args, " "), node),
		observeTimeout, func(context.Context) error {
			flows, err := f.flows(node, args...)
			if err != nil {
				return err
			}
			for _, fl := range flows {
				if int(fl.Src.Port) == srcPort {
					got = fl
					return nil
				}
			}
			return fmt.Errorf("none among %d flows", len(flows))
		})
	f.t.Logf("flow: %s", describeFlow(got))
	return got
}

func describeFlow(fl observeapi.Flow) string {
	b, _ := json.Marshal(fl)
	return string(b)
}

// curlFrom has curl in the pod fetch url from source port srcPort; the
// error carries curl's exit code (28: a timeout, as a policy drop gives).
func (f *testNS) curlFrom(pod string, srcPort int, maxTime time.Duration, url string) (string, error) {
	return f.exec(pod, "curl", "-sS", "--local-port", strconv.Itoa(srcPort),
		"--max-time", strconv.FormatFloat(maxTime.Seconds(), 'f', 1, 64), url)
}

// arrival is a flow as `sluice observe --follow` printed it, and when.
type arrival struct {
	flow observeapi.Flow
	at   time.Time
}

// follow runs `sluice observe --follow -o json ARGS` on node until the
// test ends; each flow comes on the channel as the CLI prints it.
func (f *testNS) follow(node string, args ...string) <-chan arrival {
	f.t.Helper()
	argv := append([]string{"sluice", node, "observe", "--follow", "-o", "json"}, args...)
	cmd := exec.Command(f.driver, argv...)
	// The driver's children (the CLI, kubectl) go with it: a process
	// group of its own, ended as one.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		f.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		f.t.Fatalf("start %s: %v", strings.Join(argv, " "), err)
	}
	ch := make(chan arrival, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			at := time.Now()
			var fl observeapi.Flow
			if err := json.Unmarshal(sc.Bytes(), &fl); err != nil {
				f.t.Errorf("sluice observe --follow printed %q: %v", sc.Text(), err)
				continue
			}
			ch <- arrival{flow: fl, at: at}
		}
	}()
	f.t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		err := cmd.Wait()
		if f.t.Failed() {
			f.t.Logf("%s: %v; stderr: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
		}
	})
	return ch
}

// nextFrom waits up to timeout for the followed flow from source port
// srcPort.
func nextFrom(ch <-chan arrival, srcPort int, timeout time.Duration) (arrival, error) {
	deadline := time.After(timeout)
	for {
		select {
		case a, ok := <-ch:
			if !ok {
				return arrival{}, errors.New("sluice observe --follow ended")
			}
			if int(a.flow.Src.Port) == srcPort {
				return a, nil
			}
		case <-deadline:
			return arrival{}, fmt.Errorf("no flow from source port %d within %v", srcPort, timeout)
		}
	}
}

// TestObservePolicyVerdicts: a connection a NetworkPolicy denies shows up
// in `sluice observe --verdict dropped` within a second of its packet,
// with both pods, the reason and the policy isolating the server; an
// allowed one shows the rule that allowed it; `sluice policy get` lists
// the peers the policy admits; `sluice endpoint list` shows the node's
// pods and their isolation, `sluice drops` the drops in the last minute.
func TestObservePolicyVerdicts(t *testing.T) {
	t.Parallel()
	f := newTestNS(t)
	a, b := f.nodes[0], f.nodes[1]
	ips := f.runPods(
		netexecPod("server", a, map[string]string{"app": "server"}),
		netexecPod("allowed", b, map[string]string{"role": "allowed"}),
		netexecPod("other", b, map[string]string{"role": "other"}))
	server := "http://" + net.JoinHostPort(ips[0], strconv.Itoa(podHTTPPort)) + "/hostname"
	policy := f.name + "/allow-from-allowed"
	f.applyPolicy(&networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-from-allowed"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "allowed"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromInt32(podHTTPPort))}},
			}},
		},
	})
	serverAddr := net.JoinHostPort(ips[0], strconv.Itoa(podHTTPPort))
	f.expectPolicyDrop("other", serverAddr)
	f.expectReach("allowed", serverAddr)

	// Dropped: followed on the server's node, where ingress policy drops.
	t.Log("dropped: other -> server, followed with sluice observe --follow --verdict dropped")
	followed := f.follow(a, "--verdict", observeapi.VerdictDropped, "--pod", f.name+"/server")
	// The first drop also shows the stream is open: the second one is
	// timed from its packet to its line.
	var got arrival
	for i := range 2 {
		port := nextSourcePort()
		if _, err := f.curlFrom("other", port, 1500*time.Millisecond, server); exitCode(err) != 28 {
			t.Fatalf("other -> server from port %d: %v, want a timeout (curl exit 28): the policy drops it", port, err)
		}
		var err error
		if got, err = nextFrom(followed, port, observeTimeout); err != nil {
			t.Fatalf("attempt %d: %v", i+1, err)
		}
	}
	fl := got.flow
	t.Logf("dropped flow, printed %v after its packet: %s", got.at.Sub(fl.Time), describeFlow(fl))
	if lag := got.at.Sub(fl.Time); lag > flowLatency || lag < -flowLatency {
		t.Errorf("the drop reached sluice observe --follow %v after its packet, want within %v", lag, flowLatency)
	}
	reason := strings.ReplaceAll(fl.Reason, "_", "-")
	switch {
	case fl.Verdict != observeapi.VerdictDropped:
		t.Errorf("verdict %q, want %s", fl.Verdict, observeapi.VerdictDropped)
	case fl.Src.Pod != f.name+"/other" || fl.Dst.Pod != f.name+"/server":
		t.Errorf("from %q to %q, want %s/other to %s/server", fl.Src.Pod, fl.Dst.Pod, f.name, f.name)
	case int(fl.Dst.Port) != podHTTPPort || !strings.EqualFold(fl.Proto, "tcp"):
		t.Errorf("%s port %d, want tcp port %d", fl.Proto, fl.Dst.Port, podHTTPPort)
	case !strings.Contains(reason, "policy") || !strings.Contains(reason, "ingress") || fl.Direction != "ingress":
		t.Errorf("reason %q direction %q, want a policy ingress drop", fl.Reason, fl.Direction)
	case !slices.Contains(fl.Policies, policy):
		t.Errorf("policies %q, want the one isolating the server, %s", fl.Policies, policy)
	case fl.Node != a:
		t.Errorf("node %q, want %s (the server's)", fl.Node, a)
	}

	t.Log("forwarded: allowed -> server, sluice observe --verdict forwarded")
	port := nextSourcePort()
	if _, err := f.curlFrom("allowed", port, 5*time.Second, server); err != nil {
		t.Fatalf("allowed -> server: %v", err)
	}
	fl = f.awaitFlow(a, port, "--verdict", observeapi.VerdictForwarded, "--pod", f.name+"/server")
	rule := policy + "[ingress 0]"
	switch {
	case fl.Src.Pod != f.name+"/allowed" || fl.Dst.Pod != f.name+"/server" || fl.Direction != "ingress":
		t.Errorf("from %q to %q direction %q, want %s/allowed to %s/server, ingress", fl.Src.Pod, fl.Dst.Pod, fl.Direction, f.name, f.name)
	case !slices.Contains(fl.Policies, rule):
		t.Errorf("policies %q, want the rule that allowed it, %s", fl.Policies, rule)
	}

	t.Log("sluice policy get on the server's node")
	var pol observeapi.Policy
	if err := f.sluiceJSON(a, &pol, "policy", "get", f.name+"/server"); err != nil {
		t.Fatal(err)
	}
	t.Logf("policy get: %+v", pol)
	if !slices.Equal(pol.Endpoint.IngressPolicies, []string{policy}) || len(pol.Endpoint.EgressPolicies) != 0 {
		t.Errorf("isolated for ingress by %q, egress by %q; want ingress by %s alone", pol.Endpoint.IngressPolicies, pol.Endpoint.EgressPolicies, policy)
	}
	admitted := false
	for _, r := range pol.Rules {
		if r.Direction != "ingress" || !slices.Contains(r.Policies, rule) {
			continue
		}
		if slices.Contains(r.Peer.Pods, f.name+"/other") {
			t.Errorf("rule %+v admits %s/other, which the policy does not", r, f.name)
		}
		if slices.Contains(r.Peer.Pods, f.name+"/allowed") && r.Peer.Labels["role"] == "allowed" &&
			strings.EqualFold(r.Proto, "tcp") && r.Ports == strconv.Itoa(podHTTPPort) {
			admitted = true
		}
	}
	if !admitted {
		t.Errorf("no ingress rule from %s admits pods {role=allowed} (%s/allowed) on tcp %d: %+v", rule, f.name, podHTTPPort, pol.Rules)
	}

	t.Log("sluice endpoint list and drops on the server's node")
	var endpoints []observeapi.Endpoint
	if err := f.sluiceJSON(a, &endpoints, "endpoint", "list"); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ep := range endpoints {
		switch ep.Pod {
		case f.name + "/server":
			found = true
			if !slices.Equal(ep.IngressPolicies, []string{policy}) || !slices.Contains(ep.Addrs, ips[0]) {
				t.Errorf("endpoint %+v, want %s isolated for ingress by %s", ep, ips[0], policy)
			}
		case f.name + "/allowed", f.name + "/other":
			t.Errorf("endpoint list of %s shows %s, a pod of %s", a, ep.Pod, b)
		}
	}
	if !found {
		t.Errorf("endpoint list of %s lacks %s/server: %+v", a, f.name, endpoints)
	}
	// The drops the test made are counted, and in the last minute.
	var drops observeapi.Drops
	if err := f.sluiceJSON(a, &drops, "drops"); err != nil {
		t.Fatal(err)
	}
	counted := false
	for _, d := range drops.Drops {
		r := strings.ReplaceAll(d.Reason, "_", "-")
		if strings.Contains(r, "policy") && strings.Contains(r, "ingress") {
			counted = d.Packets >= d.LastMinute && d.LastMinute >= 2
			t.Logf("drops: %+v", d)
		}
	}
	if !counted {
		t.Errorf("drops of %s: no policy ingress drops counted in the last minute (this test made at least 2): %+v", a, drops)
	}
}

// TestObserveService: a connection to a ClusterIP shows the Service and
// the backend that answered in `sluice observe --verdict translated`;
// `sluice service list` on every node agrees with the Service and its
// EndpointSlices; `sluice ct list --pod` shows a live connection with the
// same backend.
func TestObserveService(t *testing.T) {
	t.Parallel()
	f := newTestNS(t)
	a, b := f.nodes[0], f.nodes[1]
	web := map[string]string{"app": "web"}
	// The client's connections are translated per packet, on its veth,
	// where conntrack keeps the service entry this test lists; the socket
	// path is observed in TestSocketLBInPods.
	client := netexecPod("client", b, nil)
	client.Annotations = map[string]string{socketLBAnnotation: "disabled"}
	ips := f.runPods(netexecPod("web-a", a, web), netexecPod("web-b", b, web), client)
	backendOf := map[string]string{ips[0]: "web-a", ips[1]: "web-b"}
	svc := service("web", web)
	vip := f.createService(svc, 2)
	url := "http://" + net.JoinHostPort(vip, strconv.Itoa(svcHTTPPort)) + "/hostname"
	f.eventually("client -> "+url, datapathTimeout, func(context.Context) error {
		_, err := f.curlFrom("client", nextSourcePort(), 3*time.Second, url)
		return err
	})

	t.Log("translated: client -> the ClusterIP, sluice observe --verdict translated on the client's node")
	port := nextSourcePort()
	answered, err := f.curlFrom("client", port, 5*time.Second, url)
	if err != nil {
		t.Fatalf("client -> %s: %v", url, err)
	}
	answered = strings.TrimSpace(answered)
	fl := f.awaitFlow(b, port, "--verdict", observeapi.VerdictTranslated, "--service", f.name+"/web")
	switch {
	case fl.Src.Pod != f.name+"/client":
		t.Errorf("source %+v, want %s/client", fl.Src, f.name)
	case fl.Dst.IP != vip || int(fl.Dst.Port) != svcHTTPPort:
		t.Errorf("destination %+v, want the ClusterIP %s:%d", fl.Dst, vip, svcHTTPPort)
	case !strings.HasPrefix(fl.Service, f.name+"/web"):
		t.Errorf("service %q, want %s/web", fl.Service, f.name)
	case fl.Backend == nil || fl.Backend.Pod != f.name+"/"+answered:
		t.Errorf("backend %+v, want %s/%s, the pod that answered", fl.Backend, f.name, answered)
	}

	t.Log("sluice service list on every node against the Service and its EndpointSlices")
	for _, node := range f.nodes {
		f.eventually("service list on "+node+" to agree with the API", datapathTimeout, func(context.Context) error {
			var list []observeapi.Service
			if err := f.sluiceJSON(node, &list, "service", "list"); err != nil {
				return err
			}
			return f.serviceListAgrees(list, vip, backendOf)
		})
	}

	t.Log("ct list --pod: a kept-alive connection from the client, through the ClusterIP")
	port = nextSourcePort()
	live := f.background("client", "curl", "-sS", "--local-port", strconv.Itoa(port), "--rate", "2/s",
		"--max-time", "60", url+"?seq=[1-120]")
	var entry observeapi.ConntrackEntry
	f.eventually("the live connection in sluice ct list --pod on "+b, observeTimeout, func(context.Context) error {
		var entries []observeapi.ConntrackEntry
		if err := f.sluiceJSON(b, &entries, "ct", "list", "--pod", f.name+"/client", "--proto", "tcp"); err != nil {
			return err
		}
		for _, e := range entries {
			if e.Kind == "service" && int(e.Src.Port) == port {
				entry = e
				return nil
			}
		}
		return fmt.Errorf("no service entry from source port %d among %d (curl: %s)", port, len(entries), live())
	})
	t.Logf("ct entry: %+v (backend %+v)", entry, entry.Backend)
	switch {
	case entry.Src.Pod != f.name+"/client" || entry.Dst.IP != vip || int(entry.Dst.Port) != svcHTTPPort:
		t.Errorf("entry %+v -> %+v, want %s/client -> %s:%d", entry.Src, entry.Dst, f.name, vip, svcHTTPPort)
	case !strings.HasPrefix(entry.Service, f.name+"/web"):
		t.Errorf("service %q, want %s/web", entry.Service, f.name)
	case entry.Backend == nil || backendOf[entry.Backend.IP] == "" || entry.Backend.Pod != f.name+"/"+backendOf[entry.Backend.IP]:
		t.Errorf("backend %+v, want web-a or web-b, named", entry.Backend)
	case entry.ExpiresIn <= 0:
		t.Errorf("expires in %v: not live", entry.ExpiresIn)
	}
	// The connection's translated flow names the same backend.
	fl = f.awaitFlow(b, port, "--verdict", observeapi.VerdictTranslated, "--pod", f.name+"/client")
	if fl.Backend == nil || entry.Backend == nil || fl.Backend.IP != entry.Backend.IP {
		t.Errorf("the flow went to %+v, the conntrack entry says %+v", fl.Backend, entry.Backend)
	}
}

// serviceListAgrees checks a node's `sluice service list` for the test's
// Service web: one frontend per port at the ClusterIP, the port's name,
// and the ready endpoints (backendOf: IP -> pod) as backends.
func (f *testNS) serviceListAgrees(list []observeapi.Service, vip string, backendOf map[string]string) error {
	want := map[string]int{ // frontend -> target port
		fmt.Sprintf("%s:%d/tcp", vip, svcHTTPPort): podHTTPPort,
		fmt.Sprintf("%s:%d/udp", vip, svcUDPPort):  podUDPPort,
	}
	names := map[string]string{fmt.Sprintf("%s:%d/tcp", vip, svcHTTPPort): "http", fmt.Sprintf("%s:%d/udp", vip, svcUDPPort): "udp"}
	seen := map[string]bool{}
	for _, s := range list {
		if s.Service != f.name+"/web" {
			continue
		}
		fe := strings.ToLower(s.Frontend)
		target, ok := want[fe]
		if !ok {
			return fmt.Errorf("frontend %s: the Service has no such port", s.Frontend)
		}
		seen[fe] = true
		if s.Port != names[fe] || s.Type != "ClusterIP" {
			return fmt.Errorf("frontend %s: port %q type %q, want %q ClusterIP", s.Frontend, s.Port, s.Type, names[fe])
		}
		var got, wantBackends []string
		weights := 0
		for _, be := range s.Backends {
			got = append(got, be.Addr+"="+be.Pod)
			if be.Weight <= 0 {
				return fmt.Errorf("frontend %s: backend %s has weight %d", s.Frontend, be.Addr, be.Weight)
			}
			weights += be.Weight
		}
		for ip, pod := range backendOf {
			wantBackends = append(wantBackends, net.JoinHostPort(ip, strconv.Itoa(target))+"="+f.name+"/"+pod)
		}
		sort.Strings(got)
		sort.Strings(wantBackends)
		if !slices.Equal(got, wantBackends) {
			return fmt.Errorf("frontend %s: backends %q, want %q", s.Frontend, got, wantBackends)
		}
		if s.MaglevSize > 0 && weights != s.MaglevSize {
			return fmt.Errorf("frontend %s: weights add up to %d slots, the Maglev table has %d", s.Frontend, weights, s.MaglevSize)
		}
	}
	for fe := range want {
		if !seen[fe] {
			return fmt.Errorf("no frontend %s for %s/web", fe, f.name)
		}
	}
	return nil
}

// background runs a command in the pod until it ends or the test does;
// the returned func tells how it is doing, for messages.
func (f *testNS) background(pod string, args ...string) func() string {
	f.t.Helper()
	return f.driverBackground(append([]string{"exec", f.name + "/" + pod, "--"}, args...)...)
}

// driverBackground runs the driver with args in the background, as
// background does for a pod's command.
func (f *testNS) driverBackground(args ...string) func() string {
	f.t.Helper()
	cmd := exec.Command(f.driver, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	f.t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	return func() string {
		select {
		case err := <-exited:
			exited <- err
			return fmt.Sprintf("ended: %v", err)
		default:
			return "running"
		}
	}
}

// TestObserveFromOutside: the CLI on this machine, outside every node,
// with the admin kubeconfig, finds the agents through the API server,
// asks each through its pod proxy, and merges their flows by time.
func TestObserveFromOutside(t *testing.T) {
	t.Parallel()
	f := newTestNS(t)
	a, b := f.nodes[0], f.nodes[1]
	web := map[string]string{"app": "web"}
	f.runPods(netexecPod("web-a", a, web), netexecPod("web-b", b, web))
	vip := f.createService(service("web", web), 2)
	url := "http://" + net.JoinHostPort(vip, strconv.Itoa(svcHTTPPort)) + "/hostname"
	cli := buildCLI(t)
	kubeconfig := os.Getenv("SLUICE_E2E_KUBECONFIG")
	remote := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), execTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, cli, append([]string{"--kubeconfig", kubeconfig}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("sluice %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return string(out), nil
	}

	// A translated flow on each node: each pod to the ClusterIP, from a
	// source port of its own.
	ports := map[string]int{}
	for _, p := range []string{"web-a", "web-b"} {
		f.eventually(p+" -> "+url, datapathTimeout, func(context.Context) error {
			port := nextSourcePort()
			_, err := f.curlFrom(p, port, 3*time.Second, url)
			if err == nil {
				ports[p] = port
			}
			return err
		})
	}
	wantNode := map[int]string{ports["web-a"]: a, ports["web-b"]: b}
	var flows []observeapi.Flow
	f.eventually("both nodes' flows in sluice observe from outside", observeTimeout, func(context.Context) error {
		out, err := remote("observe", "-o", "json", "--verdict", observeapi.VerdictTranslated, "--namespace", f.name)
		if err != nil {
			return err
		}
		if flows, err = decodeFlows(out); err != nil {
			return err
		}
		found := 0
		for _, fl := range flows {
			if node, ok := wantNode[int(fl.Src.Port)]; ok && fl.Service != "" {
				if fl.Node != node {
					return fmt.Errorf("the flow from port %d says node %q, want %s: %s", fl.Src.Port, fl.Node, node, describeFlow(fl))
				}
				found++
			}
		}
		if found < 2 {
			return fmt.Errorf("%d of the 2 flows among %d", found, len(flows))
		}
		return nil
	})
	nodes := map[string]bool{}
	for i, fl := range flows {
		nodes[fl.Node] = true
		if i > 0 && fl.Time.Before(flows[i-1].Time) {
			t.Errorf("flow %d (%s, %s) is older than flow %d (%s, %s): not merged by time",
				i, fl.Node, fl.Time.Format(time.RFC3339Nano), i-1, flows[i-1].Node, flows[i-1].Time.Format(time.RFC3339Nano))
		}
	}
	if !nodes[a] || !nodes[b] {
		t.Errorf("flows from nodes %v, want both %s and %s", nodes, a, b)
	}

	// The table has the NODE column, and status answers for every node.
	out, err := remote("observe", "--verdict", observeapi.VerdictTranslated, "--namespace", f.name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sluice observe from outside:\n%s", out)
	if header := strings.Fields(strings.SplitN(out, "\n", 2)[0]); len(header) < 2 || header[1] != "NODE" {
		t.Errorf("header %q, want TIME NODE ...", header)
	}
	var status map[string]observeapi.Status
	out, err = remote("status", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), &status); err != nil {
		t.Fatalf("sluice status -o json from outside: %q: %v", out, err)
	}
	for _, n := range f.nodes {
		if st, ok := status[n]; !ok || st.Node != n {
			t.Errorf("status of node %s: %+v (answered: %d nodes)", n, st, len(status))
		}
	}
}

// buildCLI builds the sluice CLI for this machine into the test's
// directory.
func buildCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sluice")
	cmd := exec.Command("go", "build", "-o", bin, "../../agent/cmd/sluice")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build the sluice CLI: %v\n%s", err, out)
	}
	return bin
}
