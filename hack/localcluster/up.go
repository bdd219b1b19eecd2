package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/sluice-net/sluice/hack/localcluster/internal/nsexec"
	"github.com/sluice-net/sluice/hack/localcluster/internal/pki"
)

func up(args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	nodes := fs.Int("nodes", 2, "number of nodes (1..20)")
	proxies := fs.String("proxies", "", "what serves Services on each node, comma-separated: sluice, iptables or nftables (kube-proxy; for benchmarks); default sluice everywhere")
	apiPort := fs.Int("api-port", 16443, "loopback port in this machine's namespace that forwards to the API server")
	keep := fs.Bool("keep-on-failure", false, "leave everything in place when up fails, for debugging")
	overlay := fs.Bool("overlay", false, "put every other node on a second subnet, routed by the underlay, and run the agents in routingMode vxlan")
	dsr := fs.Bool("dsr", false, "run the agents with acceleration native and loadBalancerMode dsr (XDP on the uplinks, direct server return)")
	xdp := fs.Bool("xdp", false, "run the agents with acceleration native and loadBalancerMode snat (XDP on the uplinks, the XDP masquerade)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dsr && *xdp {
		return fmt.Errorf("--dsr and --xdp: choose one (both run XDP; --dsr with direct server return, --xdp with the XDP masquerade)")
	}
	if *nodes < 1 || *nodes > 20 {
		return fmt.Errorf("--nodes: %d is outside 1..20", *nodes)
	}
	if _, err := os.Stat(path("state.json")); err == nil {
		return fmt.Errorf("a local cluster is already up (%s); run `go run ./hack/localcluster down` first", stateDir)
	}
	if err := down(nil); err != nil { // leftovers of a crashed run
		return err
	}
	proxyOf, err := parseProxies(*proxies, *nodes)
	if err != nil {
		return err
	}
	s := &state{APIPort: *apiPort, Overlay: *overlay, DSR: *dsr, XDP: *xdp, Daemons: map[string]*daemon{}}
	err = bringUp(s, proxyOf)
	if err != nil && !*keep {
		fmt.Fprintf(os.Stderr, "localcluster: up failed: %v\nlocalcluster: cleaning up (pass --keep-on-failure to keep it for debugging)\n", err)
		if derr := down(nil); derr != nil {
			fmt.Fprintf(os.Stderr, "localcluster: cleanup: %v\n", derr)
		}
	}
	return err
}

func step(format string, a ...any) { fmt.Printf("==> "+format+"\n", a...) }

// bringUp runs the steps of `up` in order; each step records what it made
// in s (and saves it) before the next starts, so that `down` can remove a
// half-built cluster.
func bringUp(s *state, proxyOf []string) error {
	for _, d := range []string{"bin", "logs", "pki", "nodes"} {
		if err := os.MkdirAll(path(d), 0o755); err != nil {
			return err
		}
	}
	if err := buildBinaries(s, proxyOf); err != nil {
		return err
	}
	step("generating certificates")
	ca, err := writePKI()
	if err != nil {
		return err
	}
	if s.Overlay {
		step("creating two routed underlay subnets and %d node network namespaces (overlay)", len(proxyOf))
	} else {
		step("creating the underlay bridge and %d node network namespaces", len(proxyOf))
	}
	if err := makeNetworks(s, proxyOf); err != nil {
		return err
	}
	step("starting etcd, kube-apiserver and kube-controller-manager in %s (%s)", controlNS, controlPlaneIP)
	if err := startControlPlane(s); err != nil {
		return err
	}
	client, err := waitAPI(s)
	if err != nil {
		return err
	}
	step("applying manifests/sluice.yaml with kubectl (k8sServiceHost: %s)", controlPlaneIP)
	in, token, err := installSluice(s, client)
	if err != nil {
		return err
	}
	if err := startNodes(s, client, in, ca, token); err != nil {
		return err
	}
	if err := startScheduler(s); err != nil {
		return err
	}
	step("waiting for every agent to program its datapath and every node to be Ready")
	if err := waitNodes(s, client, in); err != nil {
		return err
	}
	printUsage(s)
	return nil
}

// buildBinaries builds everything the cluster runs before anything is
// started: a compile error should cost seconds, not a half-made cluster.
func buildBinaries(s *state, proxyOf []string) error {
	repo, err := repoRoot()
	if err != nil {
		return err
	}
	step("building Kubernetes from Go modules (hack/build-k8s.sh; cached after the first run)")
	if s.K8sBin, err = buildK8s(repo); err != nil {
		return err
	}
	step("building sluice-agent, sluice-cni, the sluice CLI and this tool")
	if err := buildSluice(repo); err != nil {
		return err
	}
	// kube-proxy nodes (benchmark layouts) use the reference CNI plugins.
	if slices.ContainsFunc(proxyOf, func(p string) bool { return p != proxySluice }) {
		if err := buildReferencePlugins(repo); err != nil {
			return err
		}
	}
	return s.save()
}

// makeNetworks creates the underlay, the control plane's namespace and one
// namespace per node with its host directories, recording each node in s:
// the whole network exists before any daemon needs it.
func makeNetworks(s *state, proxyOf []string) error {
	cg2, err := cgroup2Root()
	if err != nil {
		return err
	}
	if err := makeUnderlay(s.Overlay); err != nil {
		return err
	}
	if s.DSR || s.XDP {
		// The outside host is a wire's far end: what it sends carries full
		// checksums, which a veth's sender otherwise leaves to an offload
		// that XDP (given no socket buffer) cannot tell is pending.
		if err := ethtool(underlayNS, "-K", firstSubnet.bridge, "tx", "off"); err != nil {
			return err
		}
	}
	if err := attachToUnderlay(controlNS, firstSubnet.bridge, controlPlaneIP, controlPlaneIP6); err != nil {
		return err
	}
	// Nodes on the second subnet reach the control plane through the
	// underlay's routing.
	gw := firstSubnet.gateways()
	if err := ipCmds([]string{"-n", controlNS, "route", "add", "default", "via", gw[0].String()},
		[]string{"-n", controlNS, "-6", "route", "add", "default", "via", gw[1].String()}); err != nil {
		return err
	}
	for i, proxy := range proxyOf {
		n := nodeState{
			Name: nodeName(i), IPs: nodeIPs(i, s.Overlay), PodCIDRs: nodePodCIDRs(i), Netns: netnsPrefix + nodeName(i), Proxy: proxy,
			Host: hostPaths{
				Root: path("nodes", nodeName(i), "root"), BPFFS: filepath.Join(bpffsDir, nodeName(i)),
				Cgroup: filepath.Join(cg2, cgroupName, nodeName(i)),
			},
		}
		var addrs []netip.Addr
		for _, ip := range n.IPs {
			addrs = append(addrs, netip.MustParseAddr(ip))
		}
		sub := nodeSubnet(i, s.Overlay)
		if err := attachToUnderlay(n.Netns, sub.bridge, addrs...); err != nil {
			return err
		}
		if s.DSR || s.XDP {
			if err := xdpPass(underlayPort(n.Netns)); err != nil {
				return err
			}
		}
		if s.XDP {
			// So are the nodes, whose replies the XDP masquerade of
			// another node sends on.
			if err := ethtool(n.Netns, "-K", "eth0", "tx", "off"); err != nil {
				return err
			}
		}
		if err := setupNodeNetwork(n, sub); err != nil {
			return err
		}
		for _, d := range []string{n.Host.Root, n.Host.BPFFS, n.Host.Cgroup} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		s.Nodes = append(s.Nodes, n)
	}
	return s.save()
}

// installSluice applies the manifest as a user would, then reads back what
// every node needs to play the DaemonSet's pod: the install (DaemonSet and
// ConfigMap, from the API, not from the file) and the agent's token.
func installSluice(s *state, client kubernetes.Interface) (*install, string, error) {
	if err := applyManifest(s); err != nil {
		return nil, "", err
	}
	token, err := agentToken(client)
	if err != nil {
		return nil, "", err
	}
	in, err := readInstallFromAPI(client)
	if err != nil {
		return nil, "", err
	}
	return in, token, nil
}

// startNodes registers each node with the API server and starts its
// daemons, one node after the other, and shows each agent as a mirror Pod.
func startNodes(s *state, client kubernetes.Interface, in *install, ca *pki.CA, token string) error {
	for i, n := range s.Nodes {
		step("%s: Node object (InternalIPs %s, podCIDRs %s), CNI install, %s and node shim", n.Name,
			strings.Join(n.IPs, ","), strings.Join(n.PodCIDRs, ","), n.Proxy)
		if err := registerNode(client, i, n); err != nil {
			return err
		}
		if err := startNode(s, &s.Nodes[i], in, ca, token); err != nil {
			return err
		}
		if n.Proxy == proxySluice {
			if err := registerAgentPod(context.Background(), client, in, n.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// registerNode creates the Node object a kubelet would, with its pod CIDRs
// and InternalIPs: the agents read both, and there is no node IPAM
// controller to assign the CIDRs.
func registerNode(client kubernetes.Interface, i int, n nodeState) error {
	ctx := context.Background()
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
			"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
			"topology.kubernetes.io/zone": fmt.Sprintf("zone-%c", 'a'+i%2),
		}},
		Spec: v1.NodeSpec{PodCIDR: n.PodCIDRs[0], PodCIDRs: n.PodCIDRs},
	}
	for _, ip := range n.IPs {
		node.Status.Addresses = append(node.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip})
	}
	node.Status.Addresses = append(node.Status.Addresses, v1.NodeAddress{Type: v1.NodeHostName, Address: n.Name})
	created, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create Node %s: %w", n.Name, err)
	}
	created.Status = node.Status
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("status of Node %s: %w", n.Name, err)
	}
	return nil
}

// startScheduler starts the minimal scheduler once the nodes exist, so that
// pods created from now on are bound to a node that can run them.
func startScheduler(s *state) error {
	d := &daemon{Name: "scheduler", Netns: nsexec.Path(controlNS),
		Argv: []string{path("bin", "localcluster"), "_scheduler", "--kubeconfig", path("pki", "scheduler.kubeconfig")}}
	s.Daemons[d.Name] = d
	if err := d.start(); err != nil {
		return err
	}
	return s.save()
}

// repoRoot is the Sluice checkout this command runs from.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/sluice-net/sluice\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the Sluice repository (go run ./hack/localcluster up)")
		}
		dir = parent
	}
}

func buildK8s(repo string) (string, error) {
	cmd := exec.Command(filepath.Join(repo, "hack", "build-k8s.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/build-k8s.sh: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

func buildSluice(repo string) error {
	for pkg, out := range map[string]string{"./agent": "sluice-agent", "./cni": "sluice-cni", "./agent/cmd/sluice": "sluice", "./hack/localcluster": "localcluster"} {
		cmd := exec.Command("go", "build", "-o", path("bin", out), pkg)
		cmd.Dir = repo
		// VCS stamping on, whatever GOFLAGS says: the agent reports the
		// commit it was built from (sluice status).
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS="+strings.TrimSpace(os.Getenv("GOFLAGS")+" -buildvcs=auto"))
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
		}
	}
	return nil
}

// writePKI makes the CA, the API server's certificate, the service
// account key and the kubeconfigs of the admin and the components.
func writePKI() (*pki.CA, error) {
	ca, err := pki.NewCA("sluice-localcluster-ca")
	if err != nil {
		return nil, err
	}
	dir := path("pki")
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca.CertPEM, 0o644); err != nil {
		return nil, err
	}
	serving, err := ca.Serving("kube-apiserver",
		[]net.IP{net.ParseIP("127.0.0.1"), controlPlaneIP.AsSlice(), controlPlaneIP6.AsSlice(), net.ParseIP("10.96.0.1")},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"})
	if err != nil {
		return nil, err
	}
	if err := serving.Write(dir, "apiserver"); err != nil {
		return nil, err
	}
	saKey, err := pki.ServiceAccountKey()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.key"), saKey, 0o600); err != nil {
		return nil, err
	}
	inNS := fmt.Sprintf("https://%s:%d", controlPlaneIP, apiPortInNS)
	for _, u := range []struct{ file, user, group, server string }{
		{adminKubeconfig(), "localcluster-admin", "system:masters", ""}, // server set by writeAdminKubeconfig
		{filepath.Join(dir, "controller-manager.kubeconfig"), "system:kube-controller-manager", "", inNS},
		{filepath.Join(dir, "scheduler.kubeconfig"), "system:kube-scheduler", "system:masters", inNS},
		{filepath.Join(dir, "node.kubeconfig"), "system:node-shim", "system:masters", inNS},
	} {
		var groups []string
		if u.group != "" {
			groups = []string{u.group}
		}
		pair, err := ca.Client(u.user, groups...)
		if err != nil {
			return nil, err
		}
		server := u.server
		if server == "" {
			server = "https://127.0.0.1:0" // rewritten below once the port is known
		}
		if err := pki.WriteKubeconfig(u.file, server, ca.CertPEM, pki.Credentials{Client: pair}); err != nil {
			return nil, err
		}
	}
	return ca, nil
}

// makeUnderlay creates the namespace holding the bridges every node hangs
// off, and with routed, the second subnet and forwarding between the two.
// It has no link to anything else: the cluster's whole "network".
func makeUnderlay(routed bool) error {
	if err := nsexec.Create(underlayNS); err != nil {
		return err
	}
	subnets := []subnet{firstSubnet}
	if routed {
		subnets = append(subnets, secondSubnet)
	}
	cmds := [][]string{{"-n", underlayNS, "link", "set", "lo", "up"}}
	for _, sub := range subnets {
		cmds = append(cmds, []string{"-n", underlayNS, "link", "add", sub.bridge, "type", "bridge"})
		for _, gw := range sub.gateways() {
			cmds = append(cmds, addrCmd(underlayNS, sub.bridge, gw))
		}
		cmds = append(cmds, []string{"-n", underlayNS, "link", "set", sub.bridge, "up"})
	}
	if err := ipCmds(cmds...); err != nil {
		return err
	}
	if !routed {
		return nil
	}
	return nsexec.Do(nsexec.Path(underlayNS), func() error { return enableForwarding(underlayNS) })
}

// enableForwarding makes the calling thread's namespace, ns, a router.
func enableForwarding(ns string) error {
	for _, kv := range [][2]string{{"net/ipv4/ip_forward", "1"}, {"net/ipv6/conf/all/forwarding", "1"}} {
		if err := os.WriteFile("/proc/sys/"+kv[0], []byte(kv[1]), 0o644); err != nil {
			return fmt.Errorf("sysctl %s in %s: %w", kv[0], ns, err)
		}
	}
	return nil
}

// attachToUnderlay creates ns with eth0 on bridge at addrs.
func attachToUnderlay(ns, bridge string, addrs ...netip.Addr) error {
	if err := nsexec.Create(ns); err != nil {
		return err
	}
	port := underlayPort(ns)
	cmds := [][]string{
		{"-n", underlayNS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", underlayNS, "link", "set", port, "master", bridge, "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	}
	for _, a := range addrs {
		cmds = append(cmds, addrCmd(ns, "eth0", a))
	}
	return ipCmds(append(cmds, []string{"-n", ns, "link", "set", "eth0", "up"})...)
}

// underlayPort is the underlay's end of ns's veth.
func underlayPort(ns string) string { return "p-" + strings.TrimPrefix(ns, netnsPrefix) }

// ethtool runs ethtool in the namespace ns.
func ethtool(ns string, args ...string) error {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "ethtool"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ethtool %s in %s (hack/install-deps.sh installs it): %w: %s", strings.Join(args, " "), ns, err, bytes.TrimSpace(out))
	}
	return nil
}

// addrCmd adds an underlay address to dev in ns. IPv6 addresses skip
// duplicate address detection: the underlay is ours alone, and DAD would
// keep them unusable for the first seconds.
func addrCmd(ns, dev string, a netip.Addr) []string {
	if a.Is4() {
		return []string{"-n", ns, "addr", "add", netip.PrefixFrom(a, underlayBits).String(), "dev", dev}
	}
	return []string{"-n", ns, "addr", "add", netip.PrefixFrom(a, underlayBits6).String(), "dev", dev, "nodad"}
}

// setupNodeNetwork makes the namespace a router for its pods, with its
// subnet's gateway as its only way out.
func setupNodeNetwork(n nodeState, sub subnet) error {
	gw := sub.gateways()
	if err := ipCmds([]string{"-n", n.Netns, "route", "add", "default", "via", gw[0].String()},
		[]string{"-n", n.Netns, "-6", "route", "add", "default", "via", gw[1].String()}); err != nil {
		return err
	}
	return nsexec.Do(nsexec.Path(n.Netns), func() error { return enableForwarding(n.Netns) })
}

func ipCmds(cmds ...[]string) error {
	for _, args := range cmds {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
	}
	return nil
}

func startControlPlane(s *state) error {
	bin := func(name string) string { return filepath.Join(s.K8sBin, name) }
	pk := func(name string) string { return path("pki", name) }
	cp := nsexec.Path(controlNS)
	ds := []*daemon{
		{Name: "etcd", Netns: cp, Argv: []string{bin("etcd"), "--data-dir", path("etcd"), "--name", "default",
			"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
			"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
			"--initial-cluster", "default=http://127.0.0.1:2380"}},
		{Name: "kube-apiserver", Netns: cp, Argv: []string{bin("kube-apiserver"),
			"--etcd-servers", "http://127.0.0.1:2379", "--bind-address", "0.0.0.0", "--secure-port", strconv.Itoa(apiPortInNS),
			"--advertise-address", controlPlaneIP.String(), "--service-cluster-ip-range", serviceCIDRs,
			"--tls-cert-file", pk("apiserver.crt"), "--tls-private-key-file", pk("apiserver.key"),
			"--client-ca-file", pk("ca.crt"), "--authorization-mode", "RBAC", "--allow-privileged",
			"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file", pk("sa.key"), "--service-account-signing-key-file", pk("sa.key")}},
		{Name: "api-forward", Argv: []string{path("bin", "localcluster"), "_forward",
			"--listen", fmt.Sprintf("127.0.0.1:%d", s.APIPort), "--netns", cp,
			"--to", fmt.Sprintf("%s:%d", controlPlaneIP, apiPortInNS)}},
		{Name: "kube-controller-manager", Netns: cp, Argv: []string{bin("kube-controller-manager"),
			"--kubeconfig", pk("controller-manager.kubeconfig"), "--leader-elect=false",
			"--bind-address", "127.0.0.1", "--secure-port", "10257",
			"--controllers", "endpointslice-controller,endpointslice-mirroring-controller,serviceaccount-controller," +
				"serviceaccount-token-controller,namespace-controller,garbage-collector-controller,deployment-controller,replicaset-controller",
			"--use-service-account-credentials", "--service-account-private-key-file", pk("sa.key"),
			"--root-ca-file", pk("ca.crt")}},
	}
	for _, d := range ds {
		if d.Name == "kube-controller-manager" {
			if _, err := waitAPI(s); err != nil {
				return err
			}
		}
		if err := d.start(); err != nil {
			return err
		}
		s.Daemons[d.Name] = d
		if err := s.save(); err != nil {
			return err
		}
	}
	return nil
}

// adminClient talks to the API server through the loopback forward.
func adminClient(s *state) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.LoadFromFile(adminKubeconfig())
	if err != nil {
		return nil, err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", s.APIPort)
	if cfg.Clusters["sluice-local"].Server != server {
		cfg.Clusters["sluice-local"].Server = server
		if err := clientcmd.WriteToFile(*cfg, adminKubeconfig()); err != nil {
			return nil, err
		}
	}
	rc, err := clientcmd.BuildConfigFromFlags("", adminKubeconfig())
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(rc)
}

func waitAPI(s *state) (*kubernetes.Clientset, error) {
	client, err := adminClient(s)
	if err != nil {
		return nil, err
	}
	var last error
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if d := s.Daemons["kube-apiserver"]; d != nil && !d.alive() {
			return nil, fmt.Errorf("kube-apiserver exited; see %s", d.logPath())
		}
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
		if err == nil {
			return client, nil
		}
		last = fmt.Errorf("%w %s", err, body)
	}
	return nil, fmt.Errorf("kube-apiserver not ready after 2m: %v (log: %s)", last, path("logs", "kube-apiserver.log"))
}

func applyManifest(s *state) error {
	settings := map[string]any{}
	if s.Overlay {
		settings["routingMode"] = "vxlan"
	}
	if s.DSR {
		settings["acceleration"] = "native"
		settings["loadBalancerMode"] = "dsr"
	}
	if s.XDP {
		settings["acceleration"] = "native"
	}
	doc, err := manifestWithAPIServer(controlPlaneIP.String(), settings)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(s.K8sBin, "kubectl"), "--kubeconfig", adminKubeconfig(), "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(doc)
	out, err := cmd.CombinedOutput()
	os.Stdout.Write(out)
	if err != nil {
		return fmt.Errorf("kubectl apply -f manifests/sluice.yaml: %w", err)
	}
	return nil
}

// agentToken is a long-lived token of the manifest's ServiceAccount, from
// a service-account-token Secret the token controller fills in: the agent
// authenticates exactly as it would in its pod.
func agentToken(client kubernetes.Interface) (string, error) {
	ctx := context.Background()
	secrets := client.CoreV1().Secrets("sluice-system")
	sec := &v1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "sluice-agent-localcluster-token",
			Annotations: map[string]string{v1.ServiceAccountNameKey: "sluice-agent"}},
		Type: v1.SecretTypeServiceAccountToken,
	}
	if _, err := secrets.Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("create the agent's token Secret: %w", err)
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		got, err := secrets.Get(ctx, sec.Name, metav1.GetOptions{})
		if err == nil && len(got.Data[v1.ServiceAccountTokenKey]) > 0 {
			return string(got.Data[v1.ServiceAccountTokenKey]), nil
		}
	}
	return "", fmt.Errorf("the token controller did not fill Secret sluice-system/%s in 1m (kube-controller-manager log: %s)",
		sec.Name, path("logs", "kube-controller-manager.log"))
}

func readInstallFromAPI(client kubernetes.Interface) (*install, error) {
	ctx := context.Background()
	ds, err := client.AppsV1().DaemonSets("sluice-system").Get(ctx, "sluice-agent", metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("the applied DaemonSet: %w", err)
	}
	cm, err := client.CoreV1().ConfigMaps("sluice-system").Get(ctx, "sluice-config", metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("the applied ConfigMap: %w", err)
	}
	return readInstall(ds, cm)
}

// startNode installs the CNI and starts the agent and the node shim in the
// node's namespace and cgroup.
func startNode(s *state, n *nodeState, in *install, ca *pki.CA, token string) error {
	nodeDir := path("nodes", n.Name)
	netnsPath := nsexec.Path(n.Netns)
	if n.Proxy != proxySluice {
		if err := installReferenceCNI(n); err != nil {
			return fmt.Errorf("%s: install ptp: %w", n.Name, err)
		}
		proxy := kubeProxyDaemon(s, n)
		proxy.Netns, proxy.Cgroup = netnsPath, n.Host.Cgroup
		return s.startDaemons(proxy, shimDaemon(s, n, nodeDir))
	}
	configDir := filepath.Join(nodeDir, "config")
	if err := in.writeConfigMap(n.Host, configDir); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	if err := in.installCNI(n.Host, path("bin")); err != nil {
		return fmt.Errorf("%s: install CNI: %w", n.Name, err)
	}
	agentKubeconfig := filepath.Join(nodeDir, "agent.kubeconfig")
	server := fmt.Sprintf("https://%s:%d", controlPlaneIP, apiPortInNS)
	if err := pki.WriteKubeconfig(agentKubeconfig, server, ca.CertPEM, pki.Credentials{Token: token}); err != nil {
		return err
	}
	argv, env, err := in.agentArgv(n.Name, n.Host, configDir, path("bin"), agentKubeconfig)
	if err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	agent := &daemon{Name: "agent-" + n.Name, Netns: netnsPath, Cgroup: n.Host.Cgroup, Argv: argv, Env: env}
	return s.startDaemons(agent, shimDaemon(s, n, nodeDir))
}

// startDaemons starts a node's daemons and records them in the state, so
// that `down` finds each one by its PID.
func (s *state) startDaemons(ds ...*daemon) error {
	for _, d := range ds {
		if err := d.start(); err != nil {
			return err
		}
		s.Daemons[d.Name] = d
	}
	return s.save()
}

// shimDaemon is the node's kubelet stand-in.
func shimDaemon(s *state, n *nodeState, nodeDir string) *daemon {
	return &daemon{Name: "shim-" + n.Name, Netns: nsexec.Path(n.Netns), Cgroup: n.Host.Cgroup, Argv: []string{
		path("bin", "localcluster"), "_shim", "--node", n.Name, "--node-ip", strings.Join(n.IPs, ","),
		"--kubeconfig", path("pki", "node.kubeconfig"),
		"--cni-bin", n.Host.Map("/opt/cni/bin"), "--cni-conf", n.Host.Map("/etc/cni/net.d"),
		"--cni-cache", n.Host.Map("/var/lib/cni"), "--agnhost", filepath.Join(s.K8sBin, "agnhost"),
		"--cgroup", n.Host.Cgroup, "--state", nodeDir,
	}}
}

// healthPort is the agent's health port from the applied config.
func healthPort(in *install) string {
	var cfg struct {
		HealthAddr string `json:"healthAddr"`
	}
	_ = yaml.Unmarshal([]byte(in.configMap.Data["agent.yaml"]), &cfg)
	if _, port, err := net.SplitHostPort(cfg.HealthAddr); err == nil {
		return port
	}
	return "9963"
}

// proxyReady asks the node's Sluice agent (/readyz) or kube-proxy
// (/healthz) from inside its node.
func proxyReady(n nodeState, port, urlPath string) error {
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: nsexec.DialContext(nsexec.Path(n.Netns))}}
	resp, err := c.Get("http://127.0.0.1:" + port + urlPath)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return nil
}

func waitNodes(s *state, client kubernetes.Interface, in *install) error {
	port := healthPort(in)
	deadline := time.Now().Add(2 * time.Minute)
	for _, n := range s.Nodes {
		for {
			proxyName, proxyPort, proxyPath := "agent-"+n.Name, port, "/readyz"
			if n.Proxy != proxySluice {
				proxyName, proxyPort, proxyPath = "kube-proxy-"+n.Name, "10256", "/healthz"
			}
			for _, d := range []*daemon{s.Daemons[proxyName], s.Daemons["shim-"+n.Name]} {
				if !d.alive() {
					return fmt.Errorf("%s exited; see %s", d.Name, d.logPath())
				}
			}
			agentErr := proxyReady(n, proxyPort, proxyPath)
			node, err := client.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
			ready := err == nil && nodeReady(node)
			if agentErr == nil && ready {
				fmt.Printf("    %s: %s ready, node Ready\n", n.Name, n.Proxy)
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s not ready after 2m (%s %s: %v; node Ready: %v); logs in %s", n.Name, n.Proxy, proxyPath, agentErr, ready, path("logs"))
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	return nil
}

func nodeReady(n *v1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == v1.NodeReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

func printUsage(s *state) {
	sluiceNodes := 0
	for _, n := range s.Nodes {
		if n.Proxy == proxySluice {
			sluiceNodes++
		}
	}
	what := "kube-proxy absent, Sluice agent on every node"
	if sluiceNodes < len(s.Nodes) {
		what = fmt.Sprintf("Sluice on %d, kube-proxy on %d (benchmark layout)", sluiceNodes, len(s.Nodes)-sluiceNodes)
	}
	cli := ""
	if sluiceNodes == len(s.Nodes) {
		cli = fmt.Sprintf("  go run ./hack/localcluster sluice %s observe --follow   # the flows its datapath sees\n"+
			"  %s --kubeconfig %s observe -f   # every node's, merged\n", s.Nodes[0].Name, path("bin", "sluice"), adminKubeconfig())
	}
	fmt.Printf(`
Sluice local cluster is up: %d nodes, %s.

  export KUBECONFIG=%s
  %s/kubectl get nodes -o wide
  go run ./hack/localcluster exec NAMESPACE/POD -- /agnhost connect 10.96.0.1:443 --timeout=3s
%s  go run ./hack/localcluster status
  go run ./hack/localcluster down

Images run on this machine's binaries: agnhost images run the agnhost built from
the pinned Kubernetes module. Logs: %s
`, len(s.Nodes), what, adminKubeconfig(), s.K8sBin, cli, path("logs"))
}
