package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/sluice-net/sluice/internal/observeapi"
	"github.com/sluice-net/sluice/manifests"
)

// The install manifest, read the way a node would run it: the local
// cluster has no container runtime, so it plays the DaemonSet's pod
// itself, translating container paths through the pod's volumes to the
// simulated node's host paths.

// install is what the manifest asks each node to run.
type install struct {
	ds        *appsv1.DaemonSet
	agent     *v1.Container
	configMap *v1.ConfigMap
}

// imageBinaries maps the binaries inside the Sluice image to the ones
// `up` built.
func imageBinaries(binDir string) map[string]string {
	return map[string]string{
		"/usr/local/bin/sluice-agent": filepath.Join(binDir, "sluice-agent"),
		"/usr/local/bin/sluice-cni":   filepath.Join(binDir, "sluice-cni"),
	}
}

// manifestWithAPIServer is manifests/sluice.yaml with the API server
// setting and the agent settings given filled in, as a user edits it
// before `kubectl apply`.
func manifestWithAPIServer(host string, settings map[string]any) (string, error) {
	docs := manifests.Documents()
	for i, doc := range docs {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			return "", fmt.Errorf("manifest document %d: %w", i, err)
		}
		cm, ok := obj.(*v1.ConfigMap)
		if !ok {
			continue
		}
		var agent map[string]any
		if err := yaml.Unmarshal([]byte(cm.Data["agent.yaml"]), &agent); err != nil {
			return "", fmt.Errorf("ConfigMap %s agent.yaml: %w", cm.Name, err)
		}
		agent["k8sServiceHost"] = host
		agent["k8sServicePort"] = fmt.Sprint(apiPortInNS)
		agent["maxConntrackTCP"] = localConntrackTCP
		for k, v := range settings {
			agent[k] = v
		}
		// The observer API on every node, whatever the manifest says: the
		// e2e suite and the demo ask it. The socket's path is mapped to
		// the node like every path (writeConfigMap).
		if s, _ := agent["observerSocket"].(string); s == "" {
			agent["observerSocket"] = observeapi.DefaultSocket
		}
		if s, _ := agent["observerAddr"].(string); s == "" {
			agent["observerAddr"] = fmt.Sprintf(":%d", observeapi.DefaultPort)
		}
		b, err := yaml.Marshal(agent)
		if err != nil {
			return "", err
		}
		cm.Data["agent.yaml"] = string(b)
		cm.APIVersion, cm.Kind = "v1", "ConfigMap"
		out, err := yaml.Marshal(cm)
		if err != nil {
			return "", err
		}
		docs[i] = string(out)
	}
	return strings.Join(docs, "\n---\n"), nil
}

// readInstall finds the DaemonSet's agent container and its ConfigMap.
func readInstall(ds *appsv1.DaemonSet, cm *v1.ConfigMap) (*install, error) {
	in := &install{ds: ds, configMap: cm}
	for i := range ds.Spec.Template.Spec.Containers {
		if c := &ds.Spec.Template.Spec.Containers[i]; c.Name == "agent" {
			in.agent = c
		}
	}
	if in.agent == nil {
		return nil, fmt.Errorf("DaemonSet %s/%s: no container named agent", ds.Namespace, ds.Name)
	}
	if len(in.agent.Command) == 0 {
		return nil, fmt.Errorf("DaemonSet %s/%s: the agent container has no command", ds.Namespace, ds.Name)
	}
	return in, nil
}

// containerPath maps a path inside the agent container to the simulated
// node: through the volume mounted there (hostPath or the ConfigMap).
func (in *install) containerPath(p string, host hostPaths, configDir string) (string, error) {
	best := -1
	var mount v1.VolumeMount
	for _, m := range in.agent.VolumeMounts {
		if (p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")) && len(m.MountPath) > best {
			best, mount = len(m.MountPath), m
		}
	}
	if best < 0 {
		return "", fmt.Errorf("container path %s is on no volume of the agent container", p)
	}
	rest := strings.TrimPrefix(p, mount.MountPath)
	for _, vol := range in.ds.Spec.Template.Spec.Volumes {
		if vol.Name != mount.Name {
			continue
		}
		switch {
		case vol.HostPath != nil:
			return host.Map(vol.HostPath.Path + rest), nil
		case vol.ConfigMap != nil:
			return configDir + rest, nil
		}
		return "", fmt.Errorf("volume %s: only hostPath and configMap volumes are supported", vol.Name)
	}
	return "", fmt.Errorf("volume mount %s names no volume", mount.Name)
}

// writeConfigMap materialises the ConfigMap as the files the agent
// container would see, its agent.yaml paths translated to the node.
func (in *install) writeConfigMap(host hostPaths, configDir string) error {
	if err := os.MkdirAll(configDir, 0o755); err != nil {
		return err
	}
	for name, data := range in.configMap.Data {
		if name == "agent.yaml" {
			var cfg map[string]any
			if err := yaml.Unmarshal([]byte(data), &cfg); err != nil {
				return fmt.Errorf("ConfigMap agent.yaml: %w", err)
			}
			for k, v := range cfg {
				if s, ok := v.(string); ok && strings.HasPrefix(s, "/") {
					mapped, err := in.containerPath(s, host, configDir)
					if err != nil {
						return fmt.Errorf("agent.yaml %s: %w", k, err)
					}
					cfg[k] = mapped
				}
			}
			b, err := yaml.Marshal(cfg)
			if err != nil {
				return err
			}
			data = string(b)
		}
		if err := os.WriteFile(filepath.Join(configDir, name), []byte(data), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// installCNI does the init container's job on the node: the plugin into
// /opt/cni/bin, the conflist into /etc/cni/net.d, its host paths mapped.
func (in *install) installCNI(host hostPaths, binDir string) error {
	const conflist = "10-sluice.conflist"
	data, ok := in.configMap.Data[conflist]
	if !ok {
		return fmt.Errorf("ConfigMap %s has no %s", in.configMap.Name, conflist)
	}
	var list map[string]any
	if err := json.Unmarshal([]byte(data), &list); err != nil {
		return fmt.Errorf("%s: %w", conflist, err)
	}
	plugins, _ := list["plugins"].([]any)
	for _, p := range plugins {
		if m, ok := p.(map[string]any); ok {
			for k, v := range m {
				if s, ok := v.(string); ok && strings.HasPrefix(s, "/") {
					m[k] = host.Map(s)
				}
			}
		}
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	confDir, cniBin := host.Map("/etc/cni/net.d"), host.Map("/opt/cni/bin")
	for _, d := range []string{confDir, cniBin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	plugin, err := os.ReadFile(imageBinaries(binDir)["/usr/local/bin/sluice-cni"])
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cniBin, "sluice-cni"), plugin, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(confDir, conflist), b, 0o644)
}

// agentArgv is the agent container's command line on the node.
func (in *install) agentArgv(node string, host hostPaths, configDir, binDir, kubeconfig string) ([]string, []string, error) {
	argv := append(append([]string{}, in.agent.Command...), in.agent.Args...)
	bins := imageBinaries(binDir)
	if b, ok := bins[argv[0]]; ok {
		argv[0] = b
	} else {
		return nil, nil, fmt.Errorf("agent command %s is not a binary of the Sluice image", argv[0])
	}
	for i := 1; i < len(argv); i++ {
		if strings.HasPrefix(argv[i], "/") {
			p, err := in.containerPath(argv[i], host, configDir)
			if err != nil {
				return nil, nil, fmt.Errorf("agent argument %s: %w", argv[i], err)
			}
			argv[i] = p
		}
	}
	// The pod's service account token mount, as a kubeconfig.
	argv = append(argv, "--kubeconfig", kubeconfig)
	var env []string
	for _, e := range in.agent.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			// The downward API, as the agent's mirror Pod has it.
			switch e.ValueFrom.FieldRef.FieldPath {
			case "spec.nodeName":
				env = append(env, e.Name+"="+node)
			case "metadata.namespace":
				env = append(env, e.Name+"="+in.ds.Namespace)
			case "metadata.name":
				env = append(env, e.Name+"="+agentPodName(node))
			}
		case e.ValueFrom == nil:
			env = append(env, e.Name+"="+e.Value)
		}
	}
	return argv, env, nil
}
