//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Policy from a new pod's first packet: these tests create pods under a
// deny-all policy that every agent already enforces, and look for any
// packet of theirs that gets through before their own policy is written.

// denyAll isolates every pod of its namespace in the given directions and
// allows nothing.
func denyAll(name string, directions ...networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: directions},
	}
}

// createPod creates p without waiting for anything.
func (f *testNS) createPod(p *v1.Pod) *v1.Pod {
	f.t.Helper()
	created, err := f.client.CoreV1().Pods(f.name).Create(f.t.Context(), p, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatalf("create pod %s: %v", p.Name, err)
	}
	return created
}

// localClusterNodes is where the local cluster keeps its nodes' files.
const localClusterNodes = "/run/sluice-localcluster/nodes"

// containerLog returns what a container wrote to stdout and stderr so far.
// The local cluster's node shim serves no logs API; it keeps each
// container's log in NODE/pods/UID/CONTAINER.log under localClusterNodes,
// on this machine. Elsewhere the API server fetches it from the kubelet.
func (f *testNS) containerLog(ctx context.Context, pod *v1.Pod, container string) (string, error) {
	nodeDir := filepath.Join(localClusterNodes, pod.Spec.NodeName)
	if _, err := os.Stat(nodeDir); err == nil {
		b, err := os.ReadFile(filepath.Join(nodeDir, "pods", string(pod.UID), container+".log"))
		return string(b), err
	}
	b, err := f.client.CoreV1().Pods(f.name).GetLogs(pod.Name, &v1.PodLogOptions{Container: container}).DoRaw(ctx)
	return string(b), err
}

// bashConnect, in a bash script, opens a TCP connection to "$IP":"$PORT"
// within $WAIT seconds and sets r to its verdict: connected, refused (a
// reset or an ICMP error came back), timeout (nothing came back, as with a
// policy drop) or error. bash's /dev/tcp sends nothing before the SYN (no
// resolver), and the pods' programs (agnhost's image, or the host's on the
// local cluster) all have bash and timeout.
const bashConnect = `out=$(timeout "$WAIT" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$IP" "$PORT" 2>&1)
rc=$?
if [ $rc = 0 ]; then r=connected
elif [[ $out == *refused* ]]; then r=refused
elif [ $rc = 124 ] || [ $rc = 137 ] || [ $rc = 143 ]; then r=timeout
else r="error (exit $rc) $out"; fi
`

// firstConnectPod runs one container whose first act is a TCP connect to
// ip:port; it logs "first-connect: VERDICT" and exits.
func firstConnectPod(name, node, ip string, port int) *v1.Pod {
	script := "IP=$0 PORT=$1 WAIT=5\n" + bashConnect + `echo "first-connect: $r"`
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1.PodSpec{
			NodeName:                     node,
			RestartPolicy:                v1.RestartPolicyNever,
			Tolerations:                  []v1.Toleration{{Operator: v1.TolerationOpExists}},
			AutomountServiceAccountToken: ptr.To(false),
			Containers: []v1.Container{{
				Name: "connect", Image: agnhostImage,
				Command: []string{"bash", "-c", script, ip, strconv.Itoa(port)},
			}},
		},
	}
}

// firstConnectResult waits for the verdict a firstConnectPod logs.
func (f *testNS) firstConnectResult(pod *v1.Pod) string {
	f.t.Helper()
	var verdict string
	f.eventually("the first connect of "+pod.Name, readyTimeout, func(ctx context.Context) error {
		log, err := f.containerLog(ctx, pod, "connect")
		if err != nil {
			return err
		}
		for line := range strings.Lines(log) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "first-connect: "); ok {
				verdict = v
				return nil
			}
		}
		return fmt.Errorf("no verdict yet (log %q)", log)
	})
	return verdict
}

// expectEnforced waits until every pod of witnesses (one per node) reaches
// target without a policy, then applies policy and waits until each sees
// its connections time out: every node's agent enforces it.
func (f *testNS) expectEnforced(policy *networkingv1.NetworkPolicy, from *testNS, witnesses []string, target string) {
	f.t.Helper()
	for _, w := range witnesses {
		from.expectReach(w, target)
	}
	f.applyPolicy(policy)
	for _, w := range witnesses {
		from.expectPolicyDrop(w, target)
	}
}

// firstConnectPods is how many pods TestPolicyEgressDenyAllFirstConnect
// creates.
const firstConnectPods = 20

// TestPolicyEgressDenyAllFirstConnect: pods created in a namespace whose
// egress deny-all policy is already enforced, and whose first act is a TCP
// connect to a pod of another namespace, never get out: the policy holds
// from a pod's first packet, not from the agent's next sync after its IP
// reaches the API.
func TestPolicyEgressDenyAllFirstConnect(t *testing.T) {
	t.Parallel()
	servers := newTestNS(t)
	f := newTestNS(t)
	serverIP := servers.runPods(netexecPod("server", f.nodes[0], nil))[0]
	server := net.JoinHostPort(serverIP, strconv.Itoa(podHTTPPort))

	// The control: the same first act from a pod no policy selects gets
	// out, so pods that do not are kept in by the policy.
	control := servers.createPod(firstConnectPod("control", f.nodes[len(f.nodes)-1], serverIP, podHTTPPort))
	if got := servers.firstConnectResult(control); got != "connected" {
		t.Fatalf("first connect of a pod without policy: %s, want connected", got)
	}

	// A witness pod on every node: each agent enforces the policy before
	// the first new pod exists.
	var witnesses []string
	var witnessPods []*v1.Pod
	for _, node := range f.nodes {
		witnesses = append(witnesses, "witness-"+node)
		witnessPods = append(witnessPods, netexecPod("witness-"+node, node, nil))
	}
	f.runPods(witnessPods...)
	f.expectEnforced(denyAll("deny-egress", networkingv1.PolicyTypeEgress), f, witnesses, server)

	pods := make([]*v1.Pod, firstConnectPods)
	for i := range pods {
		pods[i] = f.createPod(firstConnectPod(fmt.Sprintf("first-%02d", i), f.nodes[i%len(f.nodes)], serverIP, podHTTPPort))
	}
	out := 0
	for _, p := range pods {
		got := f.firstConnectResult(p)
		t.Logf("%s on %s: %s", p.Name, p.Spec.NodeName, got)
		switch got {
		case "connected":
			out++
		case "timeout":
		default:
			t.Errorf("%s: %s, want timeout (a policy drop sends nothing back)", p.Name, got)
		}
	}
	t.Logf("%d of %d pods created under egress deny-all connected out with their first act", out, len(pods))
	if out > 0 {
		t.Errorf("%d of %d new pods under egress deny-all got out, want 0", out, len(pods))
	}
}

// probeWindow is how long TestPolicyIngressDenyAllFromFirstSecond probes a
// new pod from the moment its IP appears; the agent learns of the pod about
// then.
const probeWindow = 5 * time.Second

// probeLoop, run by bash as `bash -c SCRIPT probe IP PORT SECONDS`, runs
// three loops side by side that connect to IP:PORT for SECONDS, each
// connect given half a second, and prints "START_MICROSECONDS VERDICT"
// for each.
const probeLoop = `IP=$1 PORT=$2 WAIT=0.5
end=$(( ${EPOCHREALTIME/./} + $3 * 1000000 ))
loop() {
  while start=${EPOCHREALTIME/./}; [ "$start" -lt "$end" ]; do
` + bashConnect + `    echo "$start $r"
    sleep 0.05
  done
}
loop & loop & loop &
wait
`

// TestPolicyIngressDenyAllFromFirstSecond: a pod created in a namespace
// whose ingress deny-all policy is already enforced takes no connection at
// any moment. A client on another node connects to it again and again from
// the moment its IP appears in the API, and must never connect nor be
// refused (a refusal means the SYN reached the pod).
func TestPolicyIngressDenyAllFromFirstSecond(t *testing.T) {
	t.Parallel()
	clients := newTestNS(t)
	f := newTestNS(t)
	serverNode, clientNode := f.nodes[0], f.nodes[1]
	clients.runPods(netexecPod("client", clientNode, nil))
	witnessIP := f.runPods(netexecPod("witness", serverNode, nil))[0]
	f.expectEnforced(denyAll("deny-ingress", networkingv1.PolicyTypeIngress), clients,
		[]string{"client"}, net.JoinHostPort(witnessIP, strconv.Itoa(podHTTPPort)))

	watch, err := f.client.CoreV1().Pods(f.name).Watch(t.Context(), metav1.ListOptions{FieldSelector: "metadata.name=server"})
	if err != nil {
		t.Fatalf("watch pods: %v", err)
	}
	defer watch.Stop()
	f.createPod(netexecPod("server", serverNode, nil))
	var ip string
	timeout := time.After(readyTimeout)
	for ip == "" {
		select {
		case ev, ok := <-watch.ResultChan():
			if !ok {
				t.Fatal("pod watch ended before the server had an IP")
			}
			if p, isPod := ev.Object.(*v1.Pod); isPod {
				ip = p.Status.PodIP
			}
		case <-timeout:
			t.Fatalf("the server had no IP after %v", readyTimeout)
		}
	}
	appeared := time.Now()
	out, err := clients.driverRun(execTimeout, "exec", clients.name+"/client", "--",
		"bash", "-c", probeLoop, "probe", ip, strconv.Itoa(podHTTPPort), strconv.Itoa(int(probeWindow/time.Second)))
	if err != nil {
		t.Fatalf("probe loop: %v", err)
	}
	counts := map[string]int{}
	var first time.Duration = -1
	var wrong []string
	for line := range strings.Lines(out) {
		at, verdict, ok := strings.Cut(strings.TrimSpace(line), " ")
		us, err := strconv.ParseInt(at, 10, 64)
		if !ok || err != nil {
			t.Errorf("probe loop printed %q", line)
			continue
		}
		since := time.UnixMicro(us).Sub(appeared).Round(time.Millisecond)
		if first < 0 || since < first {
			first = since
		}
		counts[verdict]++
		if verdict != "timeout" {
			wrong = append(wrong, fmt.Sprintf("%v %s", since, verdict))
		}
	}
	t.Logf("connects to %s from %s: %v; the first started %v after its IP appeared in the API", ip, clientNode, counts, first)
	if len(wrong) > 0 {
		t.Errorf("%d connects to the new pod under ingress deny-all got in (connected, or refused by the pod itself), want none; "+
			"at (time after its IP appeared, verdict): %s", len(wrong), strings.Join(wrong, ", "))
	}
	if counts["timeout"] == 0 && len(wrong) == 0 {
		t.Fatal("no connect attempted")
	}
	if first > time.Second {
		t.Errorf("the first connect started %v after the IP appeared, want within 1s: the pod's first second went unprobed", first)
	}

	// The control: the server listens, and without the policy the client
	// reaches it.
	f.deletePolicies()
	clients.expectReach("client", net.JoinHostPort(ip, strconv.Itoa(podHTTPPort)))
}
