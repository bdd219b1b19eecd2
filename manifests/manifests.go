// Package manifests embeds the install manifest so that tests (and the
// local cluster) use exactly what users apply.
package manifests

import (
	_ "embed"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

// Install is manifests/sluice.yaml.
//
//go:embed sluice.yaml
var Install string

// Documents splits the manifest into its YAML documents.
func Documents() []string {
	var docs []string
	for _, d := range strings.Split(Install, "\n---\n") {
		if strings.TrimSpace(d) != "" {
			docs = append(docs, d)
		}
	}
	return docs
}

// ConfigData returns a key of the sluice-config ConfigMap: "agent.yaml"
// (the agent's config file) or "10-sluice.conflist" (the CNI conflist).
func ConfigData(key string) (string, error) {
	for _, d := range Documents() {
		var cm struct {
			Kind     string                `json:"kind"`
			Metadata struct{ Name string } `json:"metadata"`
			Data     map[string]string     `json:"data"`
		}
		if err := yaml.Unmarshal([]byte(d), &cm); err != nil {
			return "", fmt.Errorf("parse manifest document: %w", err)
		}
		if cm.Kind == "ConfigMap" && cm.Metadata.Name == "sluice-config" {
			v, ok := cm.Data[key]
			if !ok {
				return "", fmt.Errorf("ConfigMap sluice-config has no key %q", key)
			}
			return v, nil
		}
	}
	return "", fmt.Errorf("manifest has no ConfigMap sluice-config")
}
