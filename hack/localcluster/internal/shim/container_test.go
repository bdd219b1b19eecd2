package shim

import (
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestCommand(t *testing.T) {
	const agnhost = "/cache/bin/agnhost"
	for _, c := range []struct {
		name    string
		c       v1.Container
		want    []string
		wantErr string
	}{
		{"agnhost args", v1.Container{Image: "registry.k8s.io/e2e-test-images/agnhost:2.53", Args: []string{"netexec", "--http-port=8080"}},
			[]string{agnhost, "netexec", "--http-port=8080"}, ""},
		{"agnhost command", v1.Container{Image: "registry.k8s.io/e2e-test-images/agnhost:2.53", Command: []string{"/agnhost", "serve-hostname"}, Args: []string{"--port=9376"}},
			[]string{agnhost, "serve-hostname", "--port=9376"}, ""},
		{"agnhost by digest, default CMD", v1.Container{Image: "localhost:5000/agnhost@sha256:abcd"}, []string{agnhost, "pause"}, ""},
		{"pause", v1.Container{Image: "registry.k8s.io/pause:3.10"}, []string{agnhost, "pause"}, ""},
		{"host program in an agnhost image", v1.Container{Image: "agnhost", Command: []string{"sleep", "60"}}, []string{"sleep", "60"}, ""},
		{"other image", v1.Container{Image: "nginx:1.27"}, nil, `image "nginx:1.27"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Command(&c.c, agnhost)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, c.want) {
				t.Errorf("Command = %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

func TestEnv(t *testing.T) {
	pod := &v1.Pod{}
	pod.Name, pod.Namespace, pod.Spec.NodeName, pod.Status.PodIP = "web-1", "demo", "node-2", "10.244.2.7"
	c := &v1.Container{Env: []v1.EnvVar{
		{Name: "PLAIN", Value: "x"},
		{Name: "POD_IP", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: "NODE", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
	}}
	env := Env(c, pod)
	for _, want := range []string{"HOSTNAME=web-1", "PLAIN=x", "POD_IP=10.244.2.7", "NODE=node-2"} {
		if !slices.Contains(env, want) {
			t.Errorf("env %q lacks %s", env, want)
		}
	}
}
