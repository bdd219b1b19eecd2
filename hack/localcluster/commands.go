package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sluice-net/sluice/hack/localcluster/internal/nsexec"
	"github.com/sluice-net/sluice/hack/localcluster/internal/scheduler"
	"github.com/sluice-net/sluice/hack/localcluster/internal/shim"
)

func status(_ []string) error {
	s, err := loadState()
	if err != nil {
		return err
	}
	down := 0
	fmt.Println("COMPONENT                 PID      STATE")
	for _, name := range sortedKeys(s.Daemons) {
		d := s.Daemons[name]
		st := "running"
		if !d.alive() {
			st, down = "DOWN (log: "+d.logPath()+")", down+1
		}
		fmt.Printf("%-25s %-8d %s\n", name, d.PID, st)
	}
	client, err := adminClient(s)
	if err != nil {
		return err
	}
	fmt.Printf("\n%-9s %-24s %-36s %s\n", "NODE", "INTERNAL-IPS", "POD-CIDRS", "READY")
	for _, n := range s.Nodes {
		ready := "unknown"
		if node, err := client.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{}); err == nil {
			ready = fmt.Sprint(nodeReady(node))
		}
		if ready != "true" {
			down++
		}
		fmt.Printf("%-9s %-24s %-36s %s\n", n.Name, strings.Join(n.IPs, ","), strings.Join(n.PodCIDRs, ","), ready)
	}
	fmt.Printf("\nKUBECONFIG=%s\n", adminKubeconfig())
	if down > 0 {
		return fmt.Errorf("%d components or nodes are not up", down)
	}
	return nil
}

func kubeconfig(_ []string) error {
	if _, err := loadState(); err != nil {
		return err
	}
	fmt.Println(adminKubeconfig())
	return nil
}

// execInPod runs a command in a pod's network namespace and cgroup, with
// the pod's agnhost mapped to the built binary.
func execInPod(args []string) error {
	if len(args) < 3 || args[1] != "--" || !strings.Contains(args[0], "/") {
		return errors.New("usage: exec NAMESPACE/POD -- CMD [ARGS...]")
	}
	s, err := loadState()
	if err != nil {
		return err
	}
	target, _, err := podTarget(s, args[0])
	if err != nil {
		return err
	}
	argv := append([]string{shim.HostPath(args[2], filepath.Join(s.K8sBin, "agnhost"))}, args[3:]...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	target.Interactive = true
	if err := nsexec.Start(target, cmd); err != nil {
		return err
	}
	return cmd.Wait()
}

// runOutside runs a command in the underlay's namespace: a host on the
// node network outside every node, as a user's client would be.
func runOutside(args []string) error {
	if len(args) < 2 || args[0] != "--" {
		return errors.New("usage: outside -- CMD [ARGS...]")
	}
	if _, err := loadState(); err != nil {
		return err
	}
	cmd := exec.Command(args[1], args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := nsexec.Start(nsexec.Target{Netns: nsexec.Path(underlayNS), Interactive: true}, cmd); err != nil {
		return err
	}
	return cmd.Wait()
}

func restartAgent(args []string) error {
	fs := flag.NewFlagSet("restart-agent", flag.ContinueOnError)
	noWait := fs.Bool("no-wait", false, "return once the new agent runs, without waiting for it to be ready (it is not while the API server is down)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	args = fs.Args()
	s, node, err := loadNode(args, "restart-agent [--no-wait] NODE")
	if err != nil {
		return err
	}
	d := s.Daemons["agent-"+args[0]]
	if d == nil {
		return fmt.Errorf("node %s runs kube-proxy, not the Sluice agent", args[0])
	}
	if err := d.stop(10 * time.Second); err != nil {
		return err
	}
	if err := d.start(); err != nil {
		return err
	}
	// Recorded before waiting, so that `down` finds the new PID whatever
	// happens next.
	if err := s.save(); err != nil {
		return err
	}
	if *noWait {
		fmt.Printf("agent on %s restarted (PID %d), not waiting for it to be ready\n", args[0], d.PID)
		return nil
	}
	if err := waitAgentReady(*node, d); err != nil {
		return err
	}
	fmt.Printf("agent on %s restarted and ready (PID %d)\n", args[0], d.PID)
	return nil
}

// agentRestartTimeout bounds restart-agent's wait for the new agent's
// /readyz, like the kind driver's wait for its pod (the e2e suite gives the
// whole restart 2 minutes).
const agentRestartTimeout = 90 * time.Second

// waitAgentReady waits until the restarted agent d answers /readyz on its
// node: restart-agent returns only once the agent is back, as the kind
// driver returns only once the agent's pod is Ready.
func waitAgentReady(n nodeState, d *daemon) error {
	port, err := nodeHealthPort(n)
	if err != nil {
		return err
	}
	var last error
	for deadline := time.Now().Add(agentRestartTimeout); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if !d.alive() {
			return fmt.Errorf("the restarted agent on %s (PID %d) exited; see %s", n.Name, d.PID, d.logPath())
		}
		if last = proxyReady(n, port, "/readyz"); last == nil {
			return nil
		}
	}
	return fmt.Errorf("the restarted agent on %s (PID %d) not ready after %v: /readyz: %v; see %s", n.Name, d.PID, agentRestartTimeout, last, d.logPath())
}

// runForward forwards a loopback port of this machine's namespace to the
// API server inside the control plane's namespace, so kubectl works here
// without any route into the cluster.
func runForward(args []string) error {
	fs := flag.NewFlagSet("_forward", flag.ContinueOnError)
	listen := fs.String("listen", "", "loopback address to listen on")
	netnsPath := fs.String("netns", "", "namespace to dial from")
	to := fs.String("to", "", "address to dial in it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s (another local cluster, or pick --api-port): %w", *listen, err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			var upstream net.Conn
			err := nsexec.Do(*netnsPath, func() (err error) {
				upstream, err = net.DialTimeout("tcp", *to, 5*time.Second)
				return err
			})
			if err != nil {
				slog.Warn("forward: dial failed", "to", *to, "error", err)
				return
			}
			defer upstream.Close()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); _, _ = io.Copy(upstream, c); closeWrite(upstream) }()
			_, _ = io.Copy(c, upstream)
			closeWrite(c)
			wg.Wait()
		}()
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

func clientFrom(kubeconfig string) (*kubernetes.Clientset, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst = 50, 100
	return kubernetes.NewForConfig(rc)
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
}

func runScheduler(args []string) error {
	fs := flag.NewFlagSet("_scheduler", flag.ContinueOnError)
	kc := fs.String("kubeconfig", "", "kubeconfig")
	if err := fs.Parse(args); err != nil {
		return err
	}
	client, err := clientFrom(*kc)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	return scheduler.Run(ctx, client, slog.Default())
}

func runShim(args []string) error {
	fs := flag.NewFlagSet("_shim", flag.ContinueOnError)
	var cfg shim.Config
	kc := fs.String("kubeconfig", "", "kubeconfig")
	fs.StringVar(&cfg.NodeName, "node", "", "node name")
	nodeIPs := fs.String("node-ip", "", "the node's InternalIPs, comma-separated, IPv4 first")
	fs.StringVar(&cfg.CNIBinDir, "cni-bin", "", "CNI plugin directory")
	fs.StringVar(&cfg.CNIConfDir, "cni-conf", "", "CNI configuration directory")
	fs.StringVar(&cfg.CNICacheDir, "cni-cache", "", "libcni cache directory")
	fs.StringVar(&cfg.Agnhost, "agnhost", "", "agnhost binary")
	fs.StringVar(&cfg.Cgroup, "cgroup", "", "the node's cgroup v2 directory")
	fs.StringVar(&cfg.StateDir, "state", "", "the node's state directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	client, err := clientFrom(*kc)
	if err != nil {
		return err
	}
	cfg.Client = client
	cfg.NodeIPs = strings.Split(*nodeIPs, ",")
	cfg.NetnsPrefix = podNetns
	cfg.Log = slog.Default().With("node", cfg.NodeName)
	ctx, cancel := signalContext()
	defer cancel()
	// The CNI conflist appears once the agent's install step ran; the shim
	// starts after it, so a missing one is an error worth stopping for.
	sh, err := shim.New(cfg)
	if err != nil {
		return err
	}
	return sh.Run(ctx)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := range keys {
		for j := i + 1; j < len(keys); j++ {
			if keys[j] < keys[i] {
				keys[i], keys[j] = keys[j], keys[i]
			}
		}
	}
	return keys
}
