package main

import (
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-net/sluice/hack/localcluster/internal/shim"
	"github.com/sluice-net/sluice/internal/observeapi"
)

func TestAgentMirrorPod(t *testing.T) {
	in := shippedInstall(t)
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-2", UID: "uid-2"}}
	pod := in.agentMirrorPod(node)

	if pod.Name != "sluice-agent-node-2" || pod.Namespace != "sluice-system" {
		t.Errorf("mirror pod %s/%s, want sluice-system/sluice-agent-node-2", pod.Namespace, pod.Name)
	}
	if !shim.IsMirror(pod) {
		t.Errorf("annotations %v: the shim would run it", pod.Annotations)
	}
	if got := pod.Labels["app.kubernetes.io/name"]; got != "sluice-agent" {
		t.Errorf("label app.kubernetes.io/name = %q, want sluice-agent (the CLI lists agents by it)", got)
	}
	if pod.Spec.NodeName != "node-2" || !pod.Spec.HostNetwork {
		t.Errorf("nodeName %q hostNetwork %v, want node-2 on the host network", pod.Spec.NodeName, pod.Spec.HostNetwork)
	}
	if pod.Spec.ServiceAccountName != "" || len(pod.Spec.Volumes) != 0 {
		t.Errorf("service account %q, volumes %v: the API refuses both on a mirror pod", pod.Spec.ServiceAccountName, pod.Spec.Volumes)
	}
	if len(pod.OwnerReferences) != 1 || pod.OwnerReferences[0].Kind != "Node" || pod.OwnerReferences[0].UID != "uid-2" {
		t.Errorf("owners %v, want the Node", pod.OwnerReferences)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("containers %v, want the agent alone", pod.Spec.Containers)
	}
	c := pod.Spec.Containers[0]
	if len(c.VolumeMounts) != 0 {
		t.Errorf("volume mounts %v with no volumes", c.VolumeMounts)
	}
	i := slices.IndexFunc(c.Ports, func(p v1.ContainerPort) bool { return p.Name == observeapi.PortName })
	if i < 0 || c.Ports[i].ContainerPort != observeapi.DefaultPort || c.Ports[i].HostPort != observeapi.DefaultPort {
		t.Errorf("ports %v, want %s %d (host port too: hostNetwork)", c.Ports, observeapi.PortName, observeapi.DefaultPort)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil {
		t.Errorf("readiness probe %v: the shim reports Ready from the DaemonSet's probe", c.ReadinessProbe)
	}
}

func TestAgentEnvDownwardAPI(t *testing.T) {
	in := shippedInstall(t)
	field := func(path string) *v1.EnvVarSource {
		return &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: path}}
	}
	in.agent.Env = []v1.EnvVar{
		{Name: "NODE_NAME", ValueFrom: field("spec.nodeName")},
		{Name: "POD_NAMESPACE", ValueFrom: field("metadata.namespace")},
		{Name: "POD_NAME", ValueFrom: field("metadata.name")},
		{Name: "PLAIN", Value: "v"},
	}
	_, env, err := in.agentArgv("node-1", testHost(t.TempDir()), "/config", "/bin", "/kc")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"NODE_NAME=node-1", "POD_NAMESPACE=sluice-system", "POD_NAME=sluice-agent-node-1", "PLAIN=v"}
	if !slices.Equal(env, want) {
		t.Errorf("env %q, want %q", env, want)
	}
}
