package main_test

import (
	"os"
	"path/filepath"
	"testing"

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
