//go:build e2e

package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// proxyHealth fetches path of node's kube-proxy health server from
// outside the nodes, as a cloud load balancer probes it, and returns the
// HTTP code and the decoded body.
func (f *testNS) proxyHealth(nodeIP, path string) (int, map[string]any, error) {
	out, err := f.driverRun(execTimeout, "outside", "--", "curl", "-s", "--max-time", "3", "-w", "\n%{http_code}",
		"http://"+net.JoinHostPort(nodeIP, f.agentPort("proxyHealthAddr"))+path)
	if err != nil {
		return 0, nil, err
	}
	out = strings.TrimRight(out, "\n")
	i := strings.LastIndex(out, "\n")
	body, code := out[:max(i, 0)], out[i+1:]
	var parsed map[string]any
	if err := json.Unmarshal([]byte(body), &parsed); err != nil {
		return 0, nil, fmt.Errorf("%s: body %q: %w", path, body, err)
	}
	var n int
	_, err = fmt.Sscan(code, &n)
	return n, parsed, err
}

// setRemovalTaint adds or removes the cluster autoscaler's taint on node;
// PreferNoSchedule, so that the scheduler of the tests running meanwhile
// is not bound by it (the health server reads only the key).
func (f *testNS) setRemovalTaint(node string, on bool) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := f.client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t v1.Taint) bool { return t.Key == "ToBeDeletedByClusterAutoscaler" })
		if on {
			n.Spec.Taints = append(n.Spec.Taints, v1.Taint{Key: "ToBeDeletedByClusterAutoscaler", Effect: v1.TaintEffectPreferNoSchedule})
		}
		_, err = f.client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{})
		return err
	})
}

// TestKubeProxyHealth: every node answers kube-proxy's /healthz and /livez
// on the installed proxyHealthAddr (kube-proxy's 10256) from outside, with kube-proxy's JSON; a node the cluster
// autoscaler is removing fails /healthz (load balancers drain it) and
// still passes /livez, and passes both again once the taint is gone.
func TestKubeProxyHealth(t *testing.T) {
	t.Parallel()
	f := newTestNS(t)
	for _, node := range f.nodes {
		ip := f.nodeIP(node)
		for _, path := range []string{"/healthz", "/livez"} {
			code, body, err := f.proxyHealth(ip, path)
			if err != nil || code != 200 || body["lastUpdated"] == nil || body["currentTime"] == nil {
				t.Errorf("%s %s from outside: %d %v %v; want 200 with lastUpdated and currentTime", node, path, code, body, err)
			}
			if eligible := body["nodeEligible"]; path == "/healthz" && eligible != true {
				t.Errorf("%s /healthz: nodeEligible %v, want true", node, eligible)
			}
		}
	}

	node := f.nodes[len(f.nodes)-1]
	ip := f.nodeIP(node)
	t.Cleanup(func() {
		if err := f.setRemovalTaint(node, false); err != nil {
			t.Errorf("remove the taint from %s: %v", node, err)
		}
	})
	if err := f.setRemovalTaint(node, true); err != nil {
		t.Fatal(err)
	}
	f.eventually(node+" /healthz failing while tainted for removal", datapathTimeout, func(context.Context) error {
		code, body, err := f.proxyHealth(ip, "/healthz")
		if err == nil && (code != 503 || body["nodeEligible"] != false) {
			err = fmt.Errorf("%d %v, want 503 with nodeEligible false", code, body)
		}
		return err
	})
	if code, body, err := f.proxyHealth(ip, "/livez"); err != nil || code != 200 {
		t.Errorf("%s /livez while tainted: %d %v %v, want 200", node, code, body, err)
	}
	if err := f.setRemovalTaint(node, false); err != nil {
		t.Fatal(err)
	}
	f.eventually(node+" /healthz passing again", datapathTimeout, func(context.Context) error {
		code, body, err := f.proxyHealth(ip, "/healthz")
		if err == nil && code != 200 {
			err = fmt.Errorf("%d %v, want 200", code, body)
		}
		return err
	})
}
