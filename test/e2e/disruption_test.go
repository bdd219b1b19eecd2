//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// settleDwell is how long a phase keeps probing after the change settled,
// so that "after settling" is tested, not just the change itself.
const settleDwell = 3 * time.Second

// TestScaleAndDeleteWhileConnecting: while a Deployment behind a Service
// scales and loses a pod, no new connection to the Service fails. A
// terminating backend keeps serving for --delay-shutdown, longer than the
// agent takes to stop sending it connections; when it is the only one left
// the agent falls back to it until its replacement is ready.
func TestScaleAndDeleteWhileConnecting(t *testing.T) {
	t.Parallel()
	f := newTestNS(t)
	const name = "scaled"
	labels := map[string]string{"app": name}
	spec := netexecSpec("", "--delay-shutdown=5")
	// Longer than the delay, so netexec is never killed while it serves.
	spec.TerminationGracePeriodSeconds = ptr.To[int64](10)
	deployment := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: v1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}
	deployments := f.client.AppsV1().Deployments(f.name)
	if _, err := deployments.Create(t.Context(), deployment, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	f.runPods(netexecPod("client", f.nodes[0], nil))
	vip := f.createService(service(name, labels), 2)
	f.dialEventually("client", "http", vip, svcHTTPPort)

	settle := func(replicas int) {
		f.waitForEndpoints(name, replicas)
		time.Sleep(settleDwell)
	}
	scale := func(replicas int) {
		patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
		if _, err := deployments.Patch(t.Context(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatalf("scale to %d: %v", replicas, err)
		}
		settle(replicas)
	}
	p := f.startProber("client", net.JoinHostPort(vip, strconv.Itoa(svcHTTPPort)), "2 replicas")
	settle(2)
	p.enter("scale to 4")
	scale(4)
	p.enter("scale to 1")
	scale(1)
	p.enter("delete the last pod")
	f.deleteOnePod(labels)
	settle(1)
	p.finish()
}

// deleteOnePod deletes one pod matching labels that is not terminating yet.
func (f *testNS) deleteOnePod(labels map[string]string) {
	f.t.Helper()
	pods, err := f.client.CoreV1().Pods(f.name).List(f.t.Context(),
		metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: labels})})
	if err != nil {
		f.t.Fatalf("list pods: %v", err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		if err := f.client.CoreV1().Pods(f.name).Delete(f.t.Context(), p.Name, metav1.DeleteOptions{}); err != nil {
			f.t.Fatalf("delete pod %s: %v", p.Name, err)
		}
		f.t.Logf("deleted pod %s on %s", p.Name, p.Spec.NodeName)
		return
	}
	f.t.Fatalf("no pod matching %v to delete", labels)
}

// agentRestartSettle covers the new agent starting up and its first sync,
// the moment a restart could break the datapath.
const agentRestartSettle = 10 * time.Second

// TestAgentRestartKeepsConnections: restarting the agent, on the client's
// node and then on the other, fails no new connection to a Service: the
// datapath and its maps outlive the agent. Each restarted agent must be
// ready again, and serve what changes after the restarts: a new endpoint
// of the Service and a new Service. (The datapath outlives a dead agent
// too, so connections alone would not tell.)
//
// Not parallel: a restart would disturb the other tests' traffic, and a
// failure it caused would be blamed on them.
func TestAgentRestartKeepsConnections(t *testing.T) {
	f := newTestNS(t)
	clientNode, otherNode := f.nodes[0], f.nodes[1]
	labels := map[string]string{"app": "backend"}
	f.runPods(netexecPod("backend-0", clientNode, labels), netexecPod("backend-1", otherNode, labels),
		netexecPod("client", clientNode, nil), hostNetworkPod("host-"+clientNode, clientNode), hostNetworkPod("host-"+otherNode, otherNode))
	vip := f.createService(service("backend", labels), 2)
	f.dialEventually("client", "http", vip, svcHTTPPort)
	healthPort := f.agentHealthPort()

	p := f.startProber("client", net.JoinHostPort(vip, strconv.Itoa(svcHTTPPort)), "before restarts")
	time.Sleep(settleDwell)
	for _, node := range []string{clientNode, otherNode} {
		p.enter("restart agent on " + node)
		f.restartAgent(node)
		f.expectAgentReady(node, healthPort)
		time.Sleep(agentRestartSettle)
	}
	p.finish()

	// A new endpoint: the client's node's restarted agent sends
	// connections to it.
	f.runPods(netexecPod("backend-2", otherNode, labels))
	f.waitForEndpoints("backend", 3)
	f.eventually("backend-2 answering through "+vip, datapathTimeout, func(context.Context) error {
		got, err := f.dialFrom("client", "http", vip, svcHTTPPort)
		if err == nil && got != "backend-2" {
			err = fmt.Errorf("answered by %s", got)
		}
		return err
	})
	// A new Service, from a pod on the client's node and from the other
	// node's host (socket-level load balancing, the other agent's maps).
	newVIP := f.createService(service("after-restart", labels), 3)
	f.dialEventually("client", "http", newVIP, svcHTTPPort)
	url := "http://" + net.JoinHostPort(newVIP, strconv.Itoa(svcHTTPPort)) + "/hostname"
	f.eventually("the new Service answering on "+otherNode+"'s host", datapathTimeout, func(context.Context) error {
		_, err := f.exec("host-"+otherNode, "curl", "-sS", "--max-time", "3", url)
		return err
	})
}

// hostNetworkPod runs agnhost pause in node's own network namespace, to
// run commands as the node's host would.
func hostNetworkPod(name, node string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1.PodSpec{
			NodeName: node, HostNetwork: true,
			Tolerations:                  []v1.Toleration{{Operator: v1.TolerationOpExists}},
			AutomountServiceAccountToken: ptr.To(false),
			Containers:                   []v1.Container{{Name: "pause", Image: agnhostImage, Args: []string{"pause"}}},
		},
	}
}

// agentHealthPort is the port of the agents' /readyz.
func (f *testNS) agentHealthPort() string { return f.agentPort("healthAddr") }

// agentPort is the port of a listen address (healthAddr, metricsAddr) in
// the installed agent config (ConfigMap sluice-system/sluice-config).
func (f *testNS) agentPort(key string) string {
	f.t.Helper()
	cm, err := f.client.CoreV1().ConfigMaps("sluice-system").Get(f.t.Context(), "sluice-config", metav1.GetOptions{})
	if err != nil {
		f.t.Fatalf("the agent config: %v", err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data["agent.yaml"]), &cfg); err != nil {
		f.t.Fatalf("ConfigMap sluice-system/sluice-config agent.yaml: %v", err)
	}
	addr, _ := cfg[key].(string)
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		f.t.Fatalf("agent %s %q: %v", key, addr, err)
	}
	return port
}

// expectAgentReady waits until the agent on node answers its /readyz with
// 200 (ready once its first sync is written), asked from the node's own
// network namespace through its hostNetwork pod host-NODE.
func (f *testNS) expectAgentReady(node, healthPort string) {
	f.t.Helper()
	host := "host-" + node
	f.eventually("the agent on "+node+" ready", datapathTimeout, func(context.Context) error {
		_, err := f.exec(host, "curl", "-sSf", "--max-time", "2", "http://127.0.0.1:"+healthPort+"/readyz")
		return err
	})
}
