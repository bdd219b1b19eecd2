package main

// Faults the e2e suite injects that only the local cluster can, and what
// it reads back: the API server stopped and started by its own PID, an
// agent started without waiting for it to be ready, its readiness asked
// without the API server, the programs on a pod's veth or a node's uplink,
// a flood of new TCP flows from a pod or the outside host, and the fill
// level of a node's TCP conntrack map.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/sluice-net/sluice/hack/localcluster/internal/nsexec"
)

// localConntrackTCP is the agents' TCP conntrack capacity in the local
// cluster (entries; a flow takes two): small enough that the e2e suite's
// flood fills it in seconds.
const localConntrackTCP = 16384

// apiServer loads the cluster's state and its kube-apiserver daemon for a
// command that takes no arguments, or fails with usage.
func apiServer(args []string, usage string) (*state, *daemon, error) {
	if len(args) != 0 {
		return nil, nil, errors.New("usage: " + usage)
	}
	s, err := loadState()
	if err != nil {
		return nil, nil, err
	}
	d := s.Daemons["kube-apiserver"]
	if d == nil {
		return nil, nil, errors.New("no kube-apiserver recorded")
	}
	return s, d, nil
}

func stopAPIServer(args []string) error {
	_, d, err := apiServer(args, "stop-apiserver")
	if err != nil {
		return err
	}
	pid := d.PID
	if err := d.stop(10 * time.Second); err != nil {
		return err
	}
	fmt.Printf("kube-apiserver stopped (PID %d)\n", pid)
	return nil
}

func startAPIServer(args []string) error {
	s, d, err := apiServer(args, "start-apiserver")
	if err != nil {
		return err
	}
	if d.alive() {
		return fmt.Errorf("kube-apiserver is running (PID %d)", d.PID)
	}
	if err := d.start(); err != nil {
		return err
	}
	// Recorded before waiting, so that `down` finds the new PID.
	if err := s.save(); err != nil {
		return err
	}
	if _, err := waitAPI(s); err != nil {
		return err
	}
	fmt.Printf("kube-apiserver started and ready (PID %d)\n", d.PID)
	return nil
}

// agentReady exits 0 when the node's agent answers /readyz with 200, and
// fails with the answer otherwise; it needs no API server.
func agentReady(args []string) error {
	s, node, err := loadNode(args, "agent-ready NODE")
	if err != nil {
		return err
	}
	d := s.Daemons["agent-"+node.Name]
	if d == nil {
		return fmt.Errorf("node %s runs kube-proxy, not the Sluice agent", node.Name)
	}
	if !d.alive() {
		return fmt.Errorf("the agent on %s (PID %d) is not running; see %s", node.Name, d.PID, d.logPath())
	}
	port, err := nodeHealthPort(*node)
	if err != nil {
		return err
	}
	if err := proxyReady(*node, port, "/readyz"); err != nil {
		return fmt.Errorf("the agent on %s (PID %d) is not ready: /readyz: %w", node.Name, d.PID, err)
	}
	fmt.Printf("agent on %s ready (PID %d)\n", node.Name, d.PID)
	return nil
}

// conntrack prints the entries and capacity of the node's TCP conntrack
// map, read from its pin: "tcp entries=N capacity=M".
func conntrack(args []string) error {
	_, node, err := loadNode(args, "conntrack NODE")
	if err != nil {
		return err
	}
	cfg, err := nodeAgentConfig(*node)
	if err != nil {
		return err
	}
	pins, _ := filepath.Glob(filepath.Join(cfg.BPFRoot, "maps", "sluice_ct_tcp_v*"))
	if len(pins) != 1 {
		return fmt.Errorf("want one TCP conntrack map pinned under %s/maps, found %v", cfg.BPFRoot, pins)
	}
	m, err := ebpf.LoadPinnedMap(pins[0], &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	defer m.Close()
	key, val := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
	n := 0
	it := m.Iterate()
	for it.Next(&key, &val) {
		n++
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", pins[0], err)
	}
	fmt.Printf("tcp entries=%d capacity=%d\n", n, m.MaxEntries())
	return nil
}

// agentConfig is what the driver reads of a node's agent config.
type agentConfig struct {
	HealthAddr     string `json:"healthAddr"`
	BPFRoot        string `json:"bpfRoot"`
	ObserverSocket string `json:"observerSocket"`
}

// nodeAgentConfig reads the config the node's agent runs with (paths
// already mapped to the node), not the API server's copy, which may be
// out of reach.
func nodeAgentConfig(n nodeState) (agentConfig, error) {
	var cfg agentConfig
	b, err := os.ReadFile(path("nodes", n.Name, "config", "agent.yaml"))
	if err != nil {
		return cfg, err
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		return cfg, fmt.Errorf("the agent config of %s: %w", n.Name, err)
	}
	return cfg, nil
}

// nodeHealthPort reads the agent's health port from the config the node
// runs, not from the API server, which may be down.
func nodeHealthPort(n nodeState) (string, error) {
	cfg, err := nodeAgentConfig(n)
	if err != nil {
		return "", err
	}
	_, port, err := net.SplitHostPort(cfg.HealthAddr)
	if err != nil {
		return "", fmt.Errorf("the agent config of %s: healthAddr %q: %w", n.Name, cfg.HealthAddr, err)
	}
	return port, nil
}

// programs prints the BPF programs on a pod's host-side veth (the pod's
// eth0 peer) or on a node's uplink (eth0), one line per program:
// HOOK ID NAME.
func programs(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: programs NAMESPACE/POD | NODE")
	}
	s, err := loadState()
	if err != nil {
		return err
	}
	var node *nodeState
	ifindex := 0
	if strings.Contains(args[0], "/") {
		target, n, err := podTarget(s, args[0])
		if err != nil {
			return err
		}
		if target.Netns == nsexec.Path(n.Netns) {
			return fmt.Errorf("pod %s uses the host network: it has no veth", args[0])
		}
		node = n
		err = nsexec.Do(target.Netns, func() error {
			eth0, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			// A veth's IFLA_LINK is its peer's ifindex in the peer's namespace.
			ifindex = eth0.Attrs().ParentIndex
			return nil
		})
		if err != nil {
			return fmt.Errorf("the veth of pod %s: %w", args[0], err)
		}
	} else if node, err = s.node(args[0]); err != nil {
		return err
	}
	return nsexec.Do(nsexec.Path(node.Netns), func() error {
		if ifindex == 0 {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			ifindex = l.Attrs().Index
		}
		return printPrograms(ifindex)
	})
}

// printPrograms lists the tcx programs and cls_bpf filters on a device of
// the calling thread's network namespace.
func printPrograms(ifindex int) error {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("ifindex %d: %w", ifindex, err)
	}
	n := 0
	for _, h := range []struct {
		name   string
		tcx    ebpf.AttachType
		parent uint32
	}{{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS}, {"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS}} {
		var ids []ebpf.ProgramID
		if res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: h.tcx}); err == nil {
			for _, p := range res.Programs {
				ids = append(ids, p.ID)
			}
		}
		if filters, err := netlink.FilterList(l, h.parent); err == nil {
			for _, f := range filters {
				if bf, ok := f.(*netlink.BpfFilter); ok {
					ids = append(ids, ebpf.ProgramID(bf.Id))
				}
			}
		}
		for _, id := range ids {
			name := "?"
			if p, err := ebpf.NewProgramFromID(id); err == nil {
				if info, err := p.Info(); err == nil {
					name = info.Name
				}
				p.Close()
			}
			fmt.Printf("%s %d %s\n", h.name, id, name)
			n++
		}
	}
	if n == 0 {
		return fmt.Errorf("no BPF program on %s (ifindex %d)", l.Attrs().Name, ifindex)
	}
	return nil
}

// flood opens and resets many TCP connections to a target, from a pod's
// network namespace or the outside host's, each from its own source port:
// every one is a new flow for the conntrack of the node it crosses.
func flood(args []string) error {
	fs := flag.NewFlagSet("flood", flag.ContinueOnError)
	flows := fs.Int("flows", 20000, "connections to open, each from its own source port")
	workers := fs.Int("concurrency", 32, "connections in flight")
	firstPort := fs.Int("first-port", 10000, "the first flow's source port; each next flow takes the next one")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return errors.New("usage: flood [--flows N] [--concurrency C] NAMESPACE/POD|outside HOST:PORT")
	}
	from, to := fs.Arg(0), fs.Arg(1)
	if *flows < 1 || *firstPort < 1024 || *firstPort+*flows > 65536 {
		return fmt.Errorf("--flows %d from --first-port %d: want ports within 1024..65535", *flows, *firstPort)
	}
	s, err := loadState()
	if err != nil {
		return err
	}
	target := nsexec.Target{Netns: nsexec.Path(underlayNS), Interactive: true}
	if from != "outside" {
		if target, _, err = podTarget(s, from); err != nil {
			return err
		}
		target.Interactive = true
	}
	// Its own process, started inside the namespace: every thread of it,
	// so every socket, is there.
	cmd := exec.Command(path("bin", "localcluster"), "_flood", "--to", to,
		"--flows", fmt.Sprint(*flows),
		"--concurrency", fmt.Sprint(*workers), "--first-port", fmt.Sprint(*firstPort))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := nsexec.Start(target, cmd); err != nil {
		return err
	}
	return cmd.Wait()
}

// runFlood is the flood itself, in the namespace flood started it in.
func runFlood(args []string) error {
	fs := flag.NewFlagSet("_flood", flag.ContinueOnError)
	to := fs.String("to", "", "HOST:PORT")
	flows := fs.Int("flows", 0, "connections")
	workers := fs.Int("concurrency", 32, "connections in flight")
	firstPort := fs.Int("first-port", 10000, "the first flow's source port")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var next, connected, failed atomic.Int64
	var firstErr error
	var once sync.Once
	start := time.Now()
	var wg sync.WaitGroup
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(*flows) {
					return
				}
				d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{Port: *firstPort + int(i)}}
				c, err := d.Dial("tcp", *to)
				if err != nil {
					failed.Add(1)
					once.Do(func() { firstErr = err })
					continue
				}
				// A reset, not a FIN: no TIME_WAIT holds the port.
				_ = c.(*net.TCPConn).SetLinger(0)
				c.Close()
				connected.Add(1)
			}
		}()
	}
	wg.Wait()
	fmt.Printf("flood: to=%s flows=%d connected=%d failed=%d seconds=%.1f\n",
		*to, *flows, connected.Load(), failed.Load(), time.Since(start).Seconds())
	if firstErr != nil {
		fmt.Fprintf(os.Stderr, "flood: first failure: %v\n", firstErr)
	}
	return nil
}

// podTarget is where a pod's processes run (its network namespace, UTS
// namespace and cgroup), and its node.
func podTarget(s *state, nsName string) (nsexec.Target, *nodeState, error) {
	ns, name, _ := strings.Cut(nsName, "/")
	client, err := adminClient(s)
	if err != nil {
		return nsexec.Target{}, nil, err
	}
	pod, err := client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nsexec.Target{}, nil, err
	}
	node, err := s.node(pod.Spec.NodeName)
	if err != nil {
		return nsexec.Target{}, nil, fmt.Errorf("pod %s is not running on a node (%w)", nsName, err)
	}
	target := nsexec.Target{Netns: nsexec.Path(podNetns + string(pod.UID)), Cgroup: filepath.Join(node.Host.Cgroup, "pod-"+string(pod.UID))}
	if pod.Spec.HostNetwork {
		target.Netns = nsexec.Path(node.Netns)
	} else {
		target.UTS = path("nodes", node.Name, "pods", string(pod.UID), "uts")
	}
	if _, err := os.Stat(target.Netns); err != nil {
		return nsexec.Target{}, nil, fmt.Errorf("pod %s has no network namespace yet (phase %s)", nsName, pod.Status.Phase)
	}
	return target, node, nil
}
