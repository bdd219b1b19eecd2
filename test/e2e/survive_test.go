//go:build e2e

package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// How long each stream runs. A stream ends by itself, so it has to outlast
// its fault with room to spare (the test fails if it does not), and the
// rollout's has to end before the old pod stops serving (drainSeconds
// after the rollout asked it to stop).
const (
	restartStreamSeconds = 40
	floodStreamSeconds   = 30
	rolloutStreamSeconds = 30
	// The stream's backend serves this long after it is asked to stop
	// (netexec --delay-shutdown), its grace period a little longer.
	drainSeconds = 45
	// Answers the rollout's stream must get from the old pod after it
	// began terminating: the terminating backend was really tested.
	minAnswersWhileTerminating = 50
)

// survivalPath is one way a client reaches the stream's Service: from a
// pod to its ClusterIP, or from the outside host to a NodePort.
type survivalPath struct {
	name       string // path= in the reliability lines
	client     string // client pod; "" is the outside host
	url        string // the stream's Service, GET /hostname
	entryNode  string // the node the client's traffic enters the datapath on
	entryProgs string // the pod veth or node uplink the entry node's programs run on
	// backendNode runs the stream's backend; floodFrom floods floodTo, a
	// Service with a backend of its own, through entryNode's conntrack.
	backendNode, floodFrom, floodTo string
	// dial asks a new connection's backend for its name.
	dial func() (string, error)
}

// TestLongConnectionClusterIP: one TCP connection from a pod to a
// ClusterIP, a request every 100 ms, loses no request and never breaks
// while the agent restarts on the client's node and on the backend's
// (each restart swapping in new programs on the pods' veths), while a
// flood of new flows overfills the node's TCP conntrack map, and while its
// backend is replaced by a rollout (the old pod, terminating, keeps
// serving the connection until it ends on its own).
//
// Not parallel: restarts and the flood would disturb the other tests.
func TestLongConnectionClusterIP(t *testing.T) {
	f := newTestNS(t)
	clientNode, backendNode := f.nodes[0], f.nodes[1]
	labels := map[string]string{"app": "stream"}
	f.createDeployment(streamDeployment("stream", backendNode, labels))
	// Both pods opt out of socket-level load balancing: the client's
	// connection then lives in the node's conntrack (the path whose
	// survival is in question; a socket-translated connection keeps no
	// state there), and the flood fills conntrack as an attacker's pod
	// may choose to (the annotation is the pod author's).
	client, flooder := netexecPod("client", clientNode, nil), netexecPod("flooder", clientNode, nil)
	for _, p := range []*v1.Pod{client, flooder} {
		p.Annotations = map[string]string{socketLBAnnotation: "disabled"}
	}
	f.runPods(client, flooder, netexecPod("sink", backendNode, map[string]string{"app": "sink"}))
	vip := f.createService(service("stream", labels), 1)
	sinkVIP := f.createService(service("sink", map[string]string{"app": "sink"}), 1)
	f.dialEventually("client", "http", vip, svcHTTPPort)
	f.dialEventually("flooder", "http", sinkVIP, svcHTTPPort)
	f.survive(survivalPath{
		name: "pod-to-clusterip", client: "client",
		url:       "http://" + net.JoinHostPort(vip, strconv.Itoa(svcHTTPPort)) + "/hostname",
		entryNode: clientNode, entryProgs: f.name + "/client", backendNode: backendNode,
		floodFrom: f.name + "/flooder", floodTo: net.JoinHostPort(sinkVIP, strconv.Itoa(svcHTTPPort)),
		dial: func() (string, error) { return f.dialFrom("client", "http", vip, svcHTTPPort) },
	}, labels)
}

// TestLongConnectionNodePort: the same, from the outside host to a
// NodePort on one node with the backend on the other (masqueraded): the
// agent restarts on the entry node (its uplink's programs swapped) and on
// the backend's node, a flood from outside to another NodePort of the
// entry node, and a rollout of the backend.
func TestLongConnectionNodePort(t *testing.T) {
	f := newTestNS(t)
	entryNode, backendNode := f.nodes[0], f.nodes[1]
	labels := map[string]string{"app": "stream"}
	f.createDeployment(streamDeployment("stream", backendNode, labels))
	f.runPods(netexecPod("sink", backendNode, map[string]string{"app": "sink"}))
	port := f.nodePortService("stream", labels, v1.ServiceExternalTrafficPolicyCluster, 1)
	sinkPort := f.nodePortService("sink", map[string]string{"app": "sink"}, v1.ServiceExternalTrafficPolicyCluster, 1)
	entryIP := f.nodeIP(entryNode)
	url := "http://" + net.JoinHostPort(entryIP, strconv.Itoa(port)) + "/hostname"
	f.eventually("the NodePort answering from outside", datapathTimeout, func(context.Context) error {
		_, err := f.fromOutside(url)
		return err
	})
	f.survive(survivalPath{
		name: "outside-to-nodeport", url: url,
		entryNode: entryNode, entryProgs: entryNode, backendNode: backendNode,
		floodFrom: "outside", floodTo: net.JoinHostPort(entryIP, strconv.Itoa(sinkPort)),
		dial: func() (string, error) { return f.fromOutside(url) },
	}, labels)
}

// survive runs the faults one after the other, each under a stream of its
// own, as subtests.
func (f *testNS) survive(p survivalPath, labels map[string]string) {
	f.t.Helper()
	backend := f.onlyPod(labels)
	for _, r := range []struct{ role, node, progs string }{
		{"entry", p.entryNode, p.entryProgs},
		{"backend", p.backendNode, f.name + "/" + backend},
	} {
		f.t.Run("agent-restart-"+r.role+"-node", func(t *testing.T) {
			f := f.sub(t)
			before := f.programIDs(r.progs)
			s := f.startStream(p.client, p.url, restartStreamSeconds, true)
			s.waitAnswered(20)
			f.restartAgent(r.node)
			s.requireRunning("the restart")
			time.Sleep(agentRestartSettle)
			s.requireRunning("the restart and its settling")
			s.finish("agent-restart-"+r.role+"-node", p.name)
			f.expectProgramsReplaced(r.progs, before)
		})
	}
	f.t.Run("conntrack-flood", func(t *testing.T) {
		f := f.sub(t)
		// A single flow first: a driver that cannot flood skips here.
		f.driverOrSkip(execTimeout, "flood", "--flows", "1", p.floodFrom, p.floodTo)
		capacity := f.conntrackCapacity(p.entryNode)
		// Each flow takes two entries: a round of `capacity` flows from
		// distinct source ports overfills the map twice over.
		if capacity > 25000 {
			t.Skipf("skipped: the TCP conntrack map of %s holds %d entries; overfilling it needs more source ports than one client has. "+
				"Give the agent a small maxConntrackTCP (the local cluster uses 16384).", p.entryNode, capacity)
		}
		s := f.startStream(p.client, p.url, floodStreamSeconds, true)
		s.waitAnswered(20)
		connected := 0
		for _, first := range []int{10000, 10000 + capacity} {
			out := f.driverOrSkip(2*time.Minute, "flood", "--flows", strconv.Itoa(capacity),
				"--first-port", strconv.Itoa(first), p.floodFrom, p.floodTo)
			t.Logf("%s", strings.TrimSpace(out))
			connected += floodConnected(t, out)
		}
		entries := f.conntrackEntries(p.entryNode)
		s.requireRunning("the flood")
		time.Sleep(settleDwell)
		s.requireRunning("the flood and its settling")
		s.finish("conntrack-flood", p.name)
		t.Logf("reliability: flood into %s: %d new flows (%d entries) against a TCP conntrack map of %d entries, %d in it after the flood",
			p.entryNode, connected, 2*connected, capacity, entries)
		if 2*connected <= capacity || entries < capacity*3/4 {
			t.Errorf("the flood made %d flows, %d conntrack entries, and left %d in the map of %d: it did not fill the map",
				connected, 2*connected, entries, capacity)
		}
		// New connections too, at once.
		if _, err := p.dial(); err != nil {
			t.Errorf("a new connection after the flood: %v", err)
		}
	})
	f.t.Run("rollout", func(t *testing.T) {
		f := f.sub(t)
		old := f.onlyPod(labels)
		s := f.startStream(p.client, p.url, rolloutStreamSeconds, true)
		s.waitAnswered(20)
		f.rollDeployment("stream")
		next := f.waitRolledOut("stream", labels, old)
		terminating := time.Now()
		t.Logf("rolled out: %s replaced %s, which is terminating (serving for %d s)", next, old, drainSeconds)
		s.requireRunning("the rollout")
		rep := s.finish("rollout", p.name)
		if n := s.answeredAfter(terminating); n < minAnswersWhileTerminating {
			t.Errorf("only %d answers after %s began terminating, want %d: the rollout came too late in the stream; lengthen it", n, old, minAnswersWhileTerminating)
		}
		if !slices.Equal(rep.backends, []string{old}) {
			t.Errorf("the stream was answered by %v, want only %s, the pod its connection went to", rep.backends, old)
		}
		// The stream ended by itself: the old pod must still be there,
		// or the end was not the stream's.
		if pod, err := f.client.CoreV1().Pods(f.name).Get(t.Context(), old, metav1.GetOptions{}); err != nil {
			t.Errorf("the old pod %s is gone before its stream ended (%v): lengthen drainSeconds", old, err)
		} else {
			t.Logf("old pod %s after the stream: %s", old, describePod(pod))
		}
		// New connections go to the new pod only.
		for i := range 5 {
			got, err := p.dial()
			if err != nil || got != next {
				t.Errorf("new connection %d after the rollout: answered by %q (%v), want %s", i+1, got, err, next)
			}
		}
	})
}

// sub is f for a subtest.
func (f *testNS) sub(t *testing.T) *testNS {
	c := *f
	c.t = t
	return &c
}

// streamDeployment is one netexec pod on node that keeps serving for
// drainSeconds after it is asked to stop; a rollout starts its successor
// before stopping it.
func streamDeployment(name, node string, labels map[string]string) *appsv1.Deployment {
	spec := netexecSpec(node, "--delay-shutdown="+strconv.Itoa(drainSeconds))
	spec.TerminationGracePeriodSeconds = ptr.To[int64](drainSeconds + 15)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxSurge: ptr.To(intstr.FromInt32(1)), MaxUnavailable: ptr.To(intstr.FromInt32(0)),
				},
			},
			Template: v1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}
}

func (f *testNS) createDeployment(d *appsv1.Deployment) {
	f.t.Helper()
	if _, err := f.client.AppsV1().Deployments(f.name).Create(f.t.Context(), d, metav1.CreateOptions{}); err != nil {
		f.t.Fatalf("create deployment %s: %v", d.Name, err)
	}
}

// onlyPod waits until exactly one pod matches labels, Ready and not
// terminating, and returns its name.
func (f *testNS) onlyPod(labels map[string]string) string {
	f.t.Helper()
	var name string
	f.eventually(fmt.Sprintf("one Ready pod %v", labels), readyTimeout, func(ctx context.Context) error {
		pods, err := f.client.CoreV1().Pods(f.name).List(ctx,
			metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: labels})})
		if err != nil {
			return err
		}
		var states []string
		for _, p := range pods.Items {
			states = append(states, p.Name+": "+describePod(&p))
		}
		if len(pods.Items) != 1 || !podReady(&pods.Items[0]) || pods.Items[0].DeletionTimestamp != nil {
			return fmt.Errorf("pods: %v", states)
		}
		name = pods.Items[0].Name
		return nil
	})
	return name
}

// rollDeployment changes the pod template, as a new image would.
func (f *testNS) rollDeployment(name string) {
	f.t.Helper()
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"sluice.test/rollout":%q}}}}}`, time.Now().Format(time.RFC3339Nano))
	if _, err := f.client.AppsV1().Deployments(f.name).Patch(f.t.Context(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		f.t.Fatalf("roll deployment %s: %v", name, err)
	}
	f.t.Logf("%s rollout of %s started", time.Now().Format(time.StampMilli), name)
}

// waitRolledOut waits until the rollout is complete (one updated replica,
// available, the old one scaled away) and the old pod is terminating, and
// returns the new pod's name.
func (f *testNS) waitRolledOut(name string, labels map[string]string, old string) string {
	f.t.Helper()
	var next string
	f.eventually("the rollout of "+name, readyTimeout, func(ctx context.Context) error {
		d, err := f.client.AppsV1().Deployments(f.name).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		st := d.Status
		if st.ObservedGeneration < d.Generation || st.UpdatedReplicas != 1 || st.Replicas != 1 || st.AvailableReplicas != 1 {
			return fmt.Errorf("deployment status %+v", st)
		}
		pods, err := f.client.CoreV1().Pods(f.name).List(ctx,
			metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: labels})})
		if err != nil {
			return err
		}
		next = ""
		oldTerminating := false
		for _, p := range pods.Items {
			switch {
			case p.Name == old:
				oldTerminating = p.DeletionTimestamp != nil
			case podReady(&p) && p.DeletionTimestamp == nil:
				next = p.Name
			}
		}
		if next == "" || !oldTerminating {
			return fmt.Errorf("new pod %q, old pod %s terminating: %t", next, old, oldTerminating)
		}
		return nil
	})
	// The new pod is Ready; the datapath has it once its endpoint is.
	f.waitForEndpointsServing(name, next)
	return next
}

// waitForEndpointsServing waits until the Service's EndpointSlices list
// pod as a ready endpoint.
func (f *testNS) waitForEndpointsServing(service, pod string) {
	f.t.Helper()
	f.eventually("pod "+pod+" a ready endpoint of "+service, readyTimeout, func(ctx context.Context) error {
		list, err := f.client.DiscoveryV1().EndpointSlices(f.name).List(ctx,
			metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + service})
		if err != nil {
			return err
		}
		for _, s := range list.Items {
			for _, ep := range s.Endpoints {
				if ep.TargetRef != nil && ep.TargetRef.Name == pod && ptr.Deref(ep.Conditions.Ready, true) {
					return nil
				}
			}
		}
		return errors.New("not yet")
	})
}

// conntrackCapacity is the TCP conntrack map's capacity on node, from its
// agent's metrics (sluice_map_capacity), read from the outside host.
func (f *testNS) conntrackCapacity(node string) int {
	f.t.Helper()
	out := f.agentMetrics(node)
	m := regexp.MustCompile(`(?m)^sluice_map_capacity\{map="conntrack_tcp"\} (\d+)$`).FindStringSubmatch(out)
	if m == nil {
		f.t.Fatalf("the agent on %s reports no sluice_map_capacity{map=\"conntrack_tcp\"}", node)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// agentMetrics is node's agent's metrics page, read from the outside host
// as a scraper would.
func (f *testNS) agentMetrics(node string) string {
	f.t.Helper()
	port := f.agentPort("metricsAddr")
	out, err := f.driverRun(execTimeout, "outside", "--", "curl", "-sS", "--max-time", "5",
		"http://"+net.JoinHostPort(f.nodeIP(node), port)+"/metrics")
	if err != nil {
		f.t.Fatalf("metrics of the agent on %s: %v", node, err)
	}
	return out
}

// conntrackEntries is the number of entries in node's TCP conntrack map
// (driver `conntrack`).
func (f *testNS) conntrackEntries(node string) int {
	f.t.Helper()
	out := f.driverOrSkip(execTimeout, "conntrack", node)
	m := regexp.MustCompile(`entries=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		f.t.Fatalf("unreadable conntrack report %q", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// floodConnected reads connected=N from the driver's flood report.
func floodConnected(t *testing.T, out string) int {
	t.Helper()
	m := regexp.MustCompile(`connected=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("unreadable flood report %q", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
