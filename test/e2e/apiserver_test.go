//go:build e2e

package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

const (
	// apiDownFor is how long the API server stays stopped.
	apiDownFor = 60 * time.Second
	// agentRestartWhileDown is when, into the outage, the agent of the
	// first node restarts.
	agentRestartWhileDown = 20 * time.Second
	// The streams outlast the outage, the API server's start, the agent
	// becoming ready (its informers retry the API server with a backoff
	// of up to 30 s) and a few seconds more.
	apiStreamSeconds = 160
	// agentReadyAfterOutage bounds the wait for the restarted agent to be
	// ready once the API server is back; the time it took is logged.
	agentReadyAfterOutage = 2 * time.Minute
)

// TestAPIServerDown: with the API server stopped for a minute, the
// datapath keeps serving a Service: one long-lived connection and new
// connections from a pod on each node, none failing. Twenty seconds into
// the outage the first node's agent restarts: it starts from the pinned
// state, which keeps serving, and it is not ready while it cannot list;
// once the API server is back it becomes ready. Then a scale-up of the
// Service's Deployment reaches the datapath of both nodes, the restarted
// agent's and the one that waited the outage out.
//
// Local cluster only: kind's API server is a static pod its kubelet
// restarts at once. Not parallel: every other test would fail meanwhile.
func TestAPIServerDown(t *testing.T) {
	f := newTestNS(t)
	nodeA, nodeB := f.nodes[0], f.nodes[1]
	if !f.driverCan("agent-ready", nodeA) {
		t.Skip("skipped: the driver cannot tell an agent's readiness without the API server on this cluster, nor stop the API server")
	}
	labels := map[string]string{"app": "api"}
	f.createDeployment(&appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: v1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: netexecSpec("")},
		},
	})
	f.runPods(netexecPod("client-a", nodeA, nil), netexecPod("client-b", nodeB, nil))
	vip := f.createService(service("api", labels), 2)
	before := f.podNames(labels)
	f.dialEventually("client-a", "http", vip, svcHTTPPort)
	f.dialEventually("client-b", "http", vip, svcHTTPPort)
	url := "http://" + net.JoinHostPort(vip, strconv.Itoa(svcHTTPPort)) + "/hostname"

	keptA := f.startStream("client-a", url, apiStreamSeconds, true)
	freshA := f.startStream("client-a", url, apiStreamSeconds, false)
	freshB := f.startStream("client-b", url, apiStreamSeconds, false)
	for _, s := range []*stream{keptA, freshA, freshB} {
		s.waitAnswered(20)
	}

	f.driverOrSkip(restartTimeout, "stop-apiserver")
	stopped := time.Now()
	f.t.Logf("%s API server stopped", stopped.Format(time.StampMilli))
	t.Cleanup(func() {
		// Whatever failed, the next tests need it back.
		if err := startAPIServerAfter(f.driver); err != nil {
			t.Errorf("start the API server again: %v", err)
		}
	})

	time.Sleep(agentRestartWhileDown)
	f.driverOrSkip(restartTimeout, "restart-agent", "--no-wait", nodeA)
	t.Logf("%s agent on %s restarted with the API server down", time.Now().Format(time.StampMilli), nodeA)
	// It serves from the pinned maps (the streams tell) and says it is not
	// ready: it has listed nothing.
	for time.Since(stopped) < apiDownFor {
		if out, err := f.driverRun(execTimeout, "agent-ready", nodeA); err == nil {
			t.Errorf("the agent on %s reports ready while the API server is down: %s", nodeA, strings.TrimSpace(out))
		} else if strings.Contains(err.Error(), "not running") {
			t.Fatalf("the agent on %s exited while the API server was down: %v", nodeA, err)
		}
		time.Sleep(2 * time.Second)
	}
	for _, s := range []*stream{keptA, freshA, freshB} {
		s.requireRunning("the API server outage")
	}

	f.driverOrSkip(restartTimeout, "start-apiserver")
	back := time.Now()
	t.Logf("%s API server back after %v", back.Format(time.StampMilli), back.Sub(stopped).Round(time.Second))
	f.eventually("the agent on "+nodeA+" ready once it can list", agentReadyAfterOutage, func(context.Context) error {
		_, err := f.driverRun(execTimeout, "agent-ready", nodeA)
		return err
	})
	t.Logf("reliability: the agent on %s, started during the outage, ready %v after the API server came back",
		nodeA, time.Since(back).Round(100*time.Millisecond))
	time.Sleep(settleDwell)
	for _, s := range []*stream{keptA, freshA, freshB} {
		s.requireRunning("the API server's return")
	}
	keptA.finish("apiserver-down-60s-agent-restarted", "pod-to-clusterip-"+nodeA)
	freshA.finish("apiserver-down-60s-agent-restarted", "pod-to-clusterip-"+nodeA)
	freshB.finish("apiserver-down-60s", "pod-to-clusterip-"+nodeB)

	// A change after the outage reaches both nodes' datapaths.
	patch := `{"spec":{"replicas":3}}`
	if _, err := f.client.AppsV1().Deployments(f.name).Patch(t.Context(), "api", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("scale to 3: %v", err)
	}
	f.waitForEndpoints("api", 3)
	programmedFrom := time.Now()
	var added string
	for _, p := range f.podNames(labels) {
		if !slices.Contains(before, p) {
			added = p
		}
	}
	if added == "" {
		t.Fatalf("no new pod after scaling %v to 3", before)
	}
	for _, client := range []string{"client-a", "client-b"} {
		f.eventually("the new pod "+added+" answering through "+vip+" from "+client, datapathTimeout, func(context.Context) error {
			got, err := f.dialFrom(client, "http", vip, svcHTTPPort)
			if err == nil && got != added {
				err = fmt.Errorf("answered by %s", got)
			}
			return err
		})
		t.Logf("reliability: after the outage, the scale-up's new endpoint answered %s within %v of being ready",
			client, time.Since(programmedFrom).Round(100*time.Millisecond))
	}
}

// podNames lists the pods matching labels, terminating ones included.
func (f *testNS) podNames(labels map[string]string) []string {
	f.t.Helper()
	pods, err := f.client.CoreV1().Pods(f.name).List(f.t.Context(),
		metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: labels})})
	if err != nil {
		f.t.Fatalf("list pods: %v", err)
	}
	var names []string
	for _, p := range pods.Items {
		names = append(names, p.Name)
	}
	return names
}

// startAPIServerAfter starts the API server unless it runs, for a test's
// cleanup (its context has ended by then).
func startAPIServerAfter(driver string) error {
	ctx, cancel := context.WithTimeout(context.Background(), restartTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, driver, "start-apiserver").CombinedOutput()
	if err != nil && !strings.Contains(string(out), "is running") {
		return errors.Join(err, errors.New(strings.TrimSpace(string(out))))
	}
	return nil
}
