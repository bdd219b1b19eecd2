package main

import (
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/sluice-net/sluice/hack/localcluster/internal/nsexec"
	"github.com/sluice-net/sluice/internal/observeapi"
)

// runSluice runs the `sluice` CLI on a node as it runs on a real one (in
// the agent's pod, or on the host): in the node's network namespace, with
// the observer socket of the node's agent. Without KUBECONFIG, so the CLI
// asks that agent alone.
func runSluice(args []string) error {
	if len(args) < 1 {
		return errors.New("usage: sluice NODE [ARGS...]")
	}
	_, node, err := loadNode(args[:1], "sluice NODE [ARGS...]")
	if err != nil {
		return err
	}
	socket, err := nodeObserverSocket(*node)
	if err != nil {
		return err
	}
	bin := path("bin", "sluice")
	if _, err := os.Stat(bin); err != nil {
		return errors.New("no " + bin + ": the cluster was brought up before the CLI existed; run down and up again")
	}
	cmd := exec.Command(bin, append([]string{"--socket", socket}, args[1:]...)...)
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "KUBECONFIG=") })
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := nsexec.Start(nsexec.Target{Netns: nsexec.Path(node.Netns), Interactive: true}, cmd); err != nil {
		return err
	}
	return cmd.Wait()
}

// nodeObserverSocket is the unix socket the node's agent serves the
// observer API on: its config's observerSocket, or the default mapped to
// the node.
func nodeObserverSocket(n nodeState) (string, error) {
	cfg, err := nodeAgentConfig(n)
	if err != nil {
		return "", err
	}
	if cfg.ObserverSocket != "" {
		return cfg.ObserverSocket, nil
	}
	return n.Host.Map(observeapi.DefaultSocket), nil
}
