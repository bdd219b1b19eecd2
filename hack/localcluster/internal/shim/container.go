package shim

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// Command is the argv that runs container on this machine. The local
// cluster has no image store: agnhost images run the agnhost binary built
// from the pinned Kubernetes module, pause images run `agnhost pause`, and
// every other image is refused with a reason the pod status shows.
func Command(c *v1.Container, agnhost string) ([]string, error) {
	repo, _, _ := strings.Cut(c.Image, "@") // drop a digest, then a tag
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	var entrypoint []string
	switch path.Base(repo) {
	case "agnhost":
		entrypoint = []string{agnhost}
	case "pause":
		entrypoint = []string{agnhost, "pause"}
	default:
		return nil, fmt.Errorf("image %q: the local cluster runs only agnhost and pause images", c.Image)
	}
	var argv []string
	if len(c.Command) > 0 {
		argv = append([]string{HostPath(c.Command[0], agnhost)}, c.Command[1:]...)
	} else {
		argv = entrypoint
	}
	argv = append(argv, c.Args...)
	if len(argv) == 1 && argv[0] == agnhost {
		argv = append(argv, "pause") // the agnhost image's default CMD
	}
	return argv, nil
}

// HostPath maps the agnhost image's entrypoint to the built binary; any
// other program is looked up on the host, where the pod's processes run.
func HostPath(prog, agnhost string) string {
	if prog == "/agnhost" || prog == "agnhost" {
		return agnhost
	}
	return prog
}

// Env is the container's environment: literal values and the downward API
// fields kubelet users most rely on.
func Env(c *v1.Container, pod *v1.Pod) []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=" + pod.Name}
	for _, e := range c.Env {
		val := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				val = pod.Name
			case "metadata.namespace":
				val = pod.Namespace
			case "spec.nodeName":
				val = pod.Spec.NodeName
			case "status.podIP":
				val = pod.Status.PodIP
			case "status.hostIP":
				val = pod.Status.HostIP
			}
		}
		env = append(env, e.Name+"="+val)
	}
	return env
}

// newCmd builds the process for a container, logging to logPath.
func newCmd(argv, env []string, dir, logPath string) (*exec.Cmd, *os.File, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = dir
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	return cmd, logf, nil
}
