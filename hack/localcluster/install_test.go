package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

func testHost(dir string) hostPaths {
	return hostPaths{Root: filepath.Join(dir, "root"), BPFFS: "/sys/fs/bpf/lc/node-1", Cgroup: "/sys/fs/cgroup/unified/lc/node-1"}
}

func TestHostPathsMap(t *testing.T) {
	h := testHost("/state")
	for in, want := range map[string]string{
		"/sys/fs/bpf":         "/sys/fs/bpf/lc/node-1",
		"/sys/fs/bpf/sluice":  "/sys/fs/bpf/lc/node-1/sluice",
		"/sys/fs/cgroup":      "/sys/fs/cgroup/unified/lc/node-1",
		"/sys/fs/bpfx":        "/state/root/sys/fs/bpfx",
		"/run/sluice/n.json":  "/state/root/run/sluice/n.json",
		"/etc/cni/net.d/":     "/state/root/etc/cni/net.d",
		"/var/lib/sluice/ipa": "/state/root/var/lib/sluice/ipa",
	} {
		if got := h.Map(in); got != want {
			t.Errorf("Map(%s) = %s, want %s", in, got, want)
		}
	}
}

// shippedInstall reads manifests/sluice.yaml as the API server would
// return it after `kubectl apply`.
func shippedInstall(t *testing.T) *install {
	t.Helper()
	doc, err := manifestWithAPIServer("192.168.77.2", nil)
	if err != nil {
		t.Fatal(err)
	}
	var ds *appsv1.DaemonSet
	var cm *v1.ConfigMap
	for _, d := range strings.Split(doc, "\n---\n") {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(d), nil, nil)
		if err != nil {
			t.Fatalf("decode %q: %v", d, err)
		}
		switch o := obj.(type) {
		case *appsv1.DaemonSet:
			ds = o
		case *v1.ConfigMap:
			cm = o
		}
	}
	in, err := readInstall(ds, cm)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestShippedManifestOnANode(t *testing.T) {
	dir := t.TempDir()
	h := testHost(dir)
	in := shippedInstall(t)
	configDir := filepath.Join(dir, "config")

	if err := in.writeConfigMap(h, configDir); err != nil {
		t.Fatal(err)
	}
	var agentCfg map[string]any
	b, err := os.ReadFile(filepath.Join(configDir, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &agentCfg); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{
		"k8sServiceHost": "192.168.77.2",
		"bpfRoot":        "/sys/fs/bpf/lc/node-1/sluice",
		"nodeStateFile":  filepath.Join(dir, "root/run/sluice/node.json"),
		"socketLBCgroup": "/sys/fs/cgroup/unified/lc/node-1",
		"observerSocket": filepath.Join(dir, "root/run/sluice/observer.sock"),
		"observerAddr":   ":4245",
	} {
		if agentCfg[key] != want {
			t.Errorf("agent.yaml %s = %v, want %s", key, agentCfg[key], want)
		}
	}

	binDir := filepath.Join(dir, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(binDir, "sluice-cni"), []byte("plugin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := in.installCNI(h, binDir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "root/opt/cni/bin/sluice-cni")); err != nil {
		t.Errorf("plugin not installed: %v", err)
	}
	var list struct {
		Plugins []map[string]any `json:"plugins"`
	}
	b, err = os.ReadFile(filepath.Join(dir, "root/etc/cni/net.d/10-sluice.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatal(err)
	}
	if got := list.Plugins[0]["bpfRoot"]; got != "/sys/fs/bpf/lc/node-1/sluice" {
		t.Errorf("conflist bpfRoot = %v, want the agent's", got)
	}
	if got := list.Plugins[0]["nodeStateFile"]; got != agentCfg["nodeStateFile"] {
		t.Errorf("conflist nodeStateFile = %v, want the agent's %v", got, agentCfg["nodeStateFile"])
	}

	argv, env, err := in.agentArgv("node-1", h, configDir, binDir, "/kc")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(binDir, "sluice-agent"), "--config", filepath.Join(configDir, "agent.yaml"), "--kubeconfig", "/kc"}
	if !slices.Equal(argv, want) {
		t.Errorf("agent argv %q, want %q", argv, want)
	}
	if !slices.Contains(env, "NODE_NAME=node-1") {
		t.Errorf("agent env %q lacks NODE_NAME=node-1", env)
	}
	if _, err := in.containerPath("/etc/passwd", h, configDir); err == nil {
		t.Error("a container path on no volume mapped without error")
	}
}
