// Command sluice shows what a Sluice agent's datapath holds and the flows
// it sees: services, endpoints, policy, conntrack, drops, and a stream of
// flows like `hubble observe`. It asks the agent on this node through its
// unix socket (in the agent's pod or on the node), or, from a workstation
// with a kubeconfig, every agent of the cluster through the API server's
// pod proxy, merging their answers. See docs/cli.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-net/sluice/internal/observeapi"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice:", err)
		os.Exit(1)
	}
}

// globals are the flags every command takes.
type globals struct {
	socket        string
	kubeconfig    string
	kubeContext   string
	allNodes      bool
	nodes         []string
	agentNS       string
	observerSA    string
	output        string
	timeout       time.Duration
	stdout        io.Writer
	stderr        io.Writer
	socketChanged bool // --socket given
	remoteAsked   bool // --kubeconfig, --context, --all-nodes or --node given
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "sluice",
		Short: "Show what the Sluice datapath holds and the flows it sees",
		Long: `sluice asks Sluice agents about their datapath: status, services, endpoints,
policy, conntrack, drops, and the flows they saw (dropped packets, new
flows translated to a backend or allowed by policy).

Local mode (the default inside the agent's pod and on a node): the agent's
unix socket, --socket. Remote mode (--all-nodes, --kubeconfig, --context or
--node, or when there is no local socket but a kubeconfig): every agent of
the cluster through the API server's pod proxy, authenticated with a token
of the ServiceAccount sluice-observer; answers gain a NODE column and flows
are merged by time.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			f := cmd.Flags()
			g.socketChanged = f.Changed("socket")
			g.remoteAsked = f.Changed("kubeconfig") || f.Changed("context") || f.Changed("all-nodes") || f.Changed("node")
			if g.output != "table" && g.output != "json" {
				return fmt.Errorf("--output %q: want table or json", g.output)
			}
			return nil
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.socket, "socket", observeapi.DefaultSocket, "the local agent's unix socket")
	pf.StringVar(&g.kubeconfig, "kubeconfig", "", "kubeconfig for remote mode (default: $KUBECONFIG, ~/.kube/config, in-cluster); implies remote mode")
	pf.StringVar(&g.kubeContext, "context", "", "the kubeconfig context to use; implies remote mode")
	pf.BoolVarP(&g.allNodes, "all-nodes", "A", false, "remote mode: ask every node's agent through the API server")
	pf.StringSliceVar(&g.nodes, "node", nil, "remote mode: ask only the agents of these nodes (repeat or comma-separate)")
	pf.StringVar(&g.agentNS, "namespace-agent", "sluice-system", "remote mode: the namespace of the agent pods")
	pf.StringVar(&g.observerSA, "observer-serviceaccount", "sluice-observer", "remote mode: the ServiceAccount whose token agents accept")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	pf.DurationVar(&g.timeout, "timeout", 30*time.Second, "how long to wait for answers (not for observe --follow)")

	root.AddCommand(statusCmd(g), serviceCmd(g), endpointCmd(g), policyCmd(g), ctCmd(g), dropsCmd(g), observeCmd(g))
	return root
}

// errPartial is returned when some agents answered and others failed
// (each failure already printed).
var errPartial = errors.New("some agents did not answer (see above)")
