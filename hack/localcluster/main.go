// Command localcluster runs a real Kubernetes control plane with Sluice on
// simulated nodes, all inside network namespaces of this machine: an
// underlay bridge in a namespace of its own, the control plane (etcd,
// kube-apiserver, kube-controller-manager) on it, and one namespace per
// node running the real sluice-agent and a node shim standing in for the
// kubelet. No packet leaves these namespaces; the only thing in this
// machine's own namespace is a loopback port forwarded to the API server.
//
//	go run ./hack/localcluster up [--nodes N] [--overlay] [--dsr|--xdp]
//	go run ./hack/localcluster status | kubeconfig | down
//	go run ./hack/localcluster exec NAMESPACE/POD -- CMD [ARGS...]
//	go run ./hack/localcluster outside -- CMD [ARGS...]
//	go run ./hack/localcluster restart-agent [--no-wait] NODE
//	go run ./hack/localcluster stop-apiserver | start-apiserver
//	go run ./hack/localcluster agent-ready NODE | programs NAMESPACE/POD|NODE
//	go run ./hack/localcluster flood [--flows N] NAMESPACE/POD|outside HOST:PORT
//	go run ./hack/localcluster conntrack NODE
//	go run ./hack/localcluster sluice NODE [ARGS...]
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
)

const usage = `usage: localcluster COMMAND

  up [--nodes N] [--api-port P] [--overlay] [--dsr|--xdp]
                                  bring the cluster up (default 2 nodes); prints the kubeconfig.
                                  --overlay: every other node on a second subnet the underlay
                                  routes to, agents in routingMode vxlan
                                  --dsr: agents with XDP (native) and direct server return
                                  --xdp: agents with XDP (native) and the XDP masquerade
  down                            remove every process, namespace, link, pin and file it made
  status                          show components and nodes; exit 1 unless all are up
  kubeconfig                      print the admin kubeconfig path
  exec NAMESPACE/POD -- CMD ...   run CMD in the pod's network namespace; exits with its code
  outside -- CMD ...              run CMD on the underlay (192.168.77.1, fd77::1), outside every node
  restart-agent [--no-wait] NODE  restart the Sluice agent on NODE; returns once it is ready
                                  (--no-wait: once it runs)
  stop-apiserver                  stop kube-apiserver (by its PID); the rest keeps running
  start-apiserver                 start it again; returns once it is ready
  agent-ready NODE                exit 0 if the agent on NODE answers /readyz (needs no API server)
  programs NAMESPACE/POD | NODE   the BPF programs on the pod's host veth or the node's uplink:
                                  one line each, HOOK ID NAME
  flood [--flows N] [--first-port P] [--concurrency C] NAMESPACE/POD|outside HOST:PORT
                                  open and reset N TCP connections to HOST:PORT from the pod
                                  or the outside host, each from its own source port (P, P+1, ...)
  conntrack NODE                  entries and capacity of NODE's TCP conntrack map
  sluice NODE [ARGS...]           run the sluice CLI on NODE (its network namespace, its
                                  agent's observer socket); exits with its code
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "localcluster: must run as root (network namespaces, BPF, cgroups)")
		os.Exit(1)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "up":
		err = up(args)
	case "down":
		err = down(args)
	case "status":
		err = status(args)
	case "kubeconfig":
		err = kubeconfig(args)
	case "exec":
		err = execInPod(args)
	case "outside":
		err = runOutside(args)
	case "restart-agent":
		err = restartAgent(args)
	case "stop-apiserver":
		err = stopAPIServer(args)
	case "start-apiserver":
		err = startAPIServer(args)
	case "agent-ready":
		err = agentReady(args)
	case "programs":
		err = programs(args)
	case "flood":
		err = flood(args)
	case "conntrack":
		err = conntrack(args)
	case "sluice":
		err = runSluice(args)
	// Daemons `up` starts; not for users.
	case "_forward":
		err = runForward(args)
	case "_scheduler":
		err = runScheduler(args)
	case "_shim":
		err = runShim(args)
	case "_flood":
		err = runFlood(args)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "localcluster: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && (cmd == "exec" || cmd == "outside" || cmd == "sluice") {
		os.Exit(exitErr.ExitCode())
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "localcluster %s: %v\n", cmd, err)
		os.Exit(1)
	}
}
