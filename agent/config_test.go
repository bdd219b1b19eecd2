package main_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/sluice-net/sluice/agent/internal/config"
	"github.com/sluice-net/sluice/manifests"
)

// TestShippedConfigLoads: the install manifest's agent.yaml uses only keys
// the agent knows, with valid values.
func TestShippedConfigLoads(t *testing.T) {
	data, err := manifests.ConfigData("agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	// The manifest leaves the API server address for the user to fill in.
	c, err := config.Load([]string{"--config", file, "--nodeName", "n", "--k8sServiceHost", "10.0.0.1"})
	if err != nil {
		t.Fatalf("shipped agent.yaml: %v", err)
	}
	if c.K8sServicePort != "6443" || c.MaglevTableSize != 16381 || !*c.NativeRouting {
		t.Errorf("loaded %+v", c)
	}
}

// TestCleanupManifest: manifests/cleanup.yaml runs `sluice-agent cleanup`
// with the shipped agent.yaml, and mounts every path cleanup removes.
func TestCleanupManifest(t *testing.T) {
	data, err := os.ReadFile("../manifests/cleanup.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(data, &ds); err != nil {
		t.Fatalf("cleanup.yaml: %v", err)
	}
	spec := ds.Spec.Template.Spec
	if len(spec.InitContainers) != 1 || !spec.HostNetwork {
		t.Fatalf("want one init container and hostNetwork: %+v", spec)
	}
	c := spec.InitContainers[0]
	if len(c.Command) < 2 || c.Command[0] != "/usr/local/bin/sluice-agent" || c.Command[1] != "cleanup" {
		t.Fatalf("command %q", c.Command)
	}
	shipped, err := manifests.ConfigData("agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, []byte(shipped), 0o600); err != nil {
		t.Fatal(err)
	}
	args := slices.Clone(c.Command[1:])
	for i := range args {
		if args[i] == "/etc/sluice/agent.yaml" {
			args[i] = file
		}
	}
	// The user fills in the API server before installing.
	cfg, err := config.Load(append(args, "--k8sServiceHost", "10.0.0.1"))
	if err != nil {
		t.Fatalf("cleanup command %q: %v", c.Command, err)
	}
	if cfg.Command != "cleanup" {
		t.Errorf("command %q", cfg.Command)
	}
	for _, p := range []string{cfg.BPFRoot, cfg.NodeStateFile, cfg.EndpointSocket, cfg.CNIConfFile, "/etc/sluice/agent.yaml"} {
		if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return strings.HasPrefix(p, m.MountPath+"/") }) {
			t.Errorf("%s is not under a mount of the cleanup container", p)
		}
	}
}
