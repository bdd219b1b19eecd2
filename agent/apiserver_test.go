package main_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/nodestate"
	"github.com/sluice-net/sluice/internal/observeapi"
	"github.com/sluice-net/sluice/internal/testutil/bpffs"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
	"github.com/sluice-net/sluice/manifests"
)

// controlPlane is etcd and kube-apiserver running inside the test's own
// network namespace, reachable on its loopback only.
type controlPlane struct {
	kubeconfig string
	client     *kubernetes.Clientset
}

// k8sBin is where hack/build-k8s.sh put the Kubernetes binaries; make test
// sets SLUICE_K8S_BIN.
func k8sBin(t testing.TB) string {
	dir := os.Getenv("SLUICE_K8S_BIN")
	if dir == "" {
		t.Skip("SLUICE_K8S_BIN not set: run through make test, which builds etcd and kube-apiserver (hack/build-k8s.sh)")
	}
	return dir
}

// start runs a command in ns, logging to a file, and stops it by its PID
// when the test ends.
func start(t testing.TB, ns *netnstest.NS, dir, name string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	ns.Do(t, func() {
		cmd = exec.Command(args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = logf, logf
		err = cmd.Start()
	})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		logf.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			t.Logf("%s log (tail):\n%s", name, tail(string(out), 30))
		}
	})
	return cmd
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func startControlPlane(t testing.TB, ns *netnstest.NS) *controlPlane {
	t.Helper()
	bin := k8sBin(t)
	dir := t.TempDir()
	start(t, ns, dir, "etcd", filepath.Join(bin, "etcd"), "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "default=http://127.0.0.1:2380", "--name", "default")

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "sa.key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte("sluice-test-admin-token,admin,admin,system:masters\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	start(t, ns, dir, "kube-apiserver", filepath.Join(bin, "kube-apiserver"),
		"--etcd-servers", "http://127.0.0.1:2379", "--bind-address", "127.0.0.1", "--secure-port", "6443",
		"--advertise-address", "127.0.0.1", "--endpoint-reconciler-type", "none",
		"--cert-dir", filepath.Join(dir, "certs"), "--token-auth-file", tokens, "--authorization-mode", "RBAC",
		"--service-cluster-ip-range", "10.96.0.0/16", "--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", keyFile, "--service-account-signing-key-file", keyFile)

	kubeconfig := filepath.Join(dir, "kubeconfig")
	writeKubeconfig(t, kubeconfig, "sluice-test-admin-token")
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	// The client runs in the test process; its connections must be made
	// from inside the namespace, so dial from a thread in it.
	cfg.Dial = ns.Dialer(t)
	cfg.QPS, cfg.Burst = 500, 1000 // the scale benchmark creates 20,000 objects
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		if _, err = client.CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-apiserver not ready after 90s: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	return &controlPlane{kubeconfig: kubeconfig, client: client}
}

// TestAgentAgainstAPIServer runs the real agent binary against a real
// kube-apiserver and etcd, all inside one network namespace, and follows a
// Service from creation to its endpoints in the datapath maps, then a
// NetworkPolicy into the policy maps.
func TestAgentAgainstAPIServer(t *testing.T) {
	bpffs.Require(t)
	ns := netnstest.New(t, "sl-agent")
	ns.IP(t, "link", "set", "lo", "up")
	// A managed neighbour entry an agent under loadBalancerMode dsr left:
	// this one, under snat, removes it.
	ns.VethPair(t, "v0", nil, "v0p")
	ns.IP(t, "neigh", "replace", "192.0.2.50", "dev", "v0", "managed")
	cp := startControlPlane(t, ns)
	ctx := context.Background()

	agentBin := filepath.Join(t.TempDir(), "sluice-agent")
	if out, err := exec.Command("go", "build", "-o", agentBin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	root := bpffs.Root(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "node.json")

	// The agent runs as the manifest's ServiceAccount with the manifest's
	// ClusterRole: RBAC is tested for real.
	token := applyRBAC(t, cp)
	agentKubeconfig := filepath.Join(dir, "agent.kubeconfig")
	writeKubeconfig(t, agentKubeconfig, token)
	agentConfig := filepath.Join(dir, "agent.yaml")
	shipped, err := manifests.ConfigData("agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(agentConfig, []byte(shipped), 0o600); err != nil {
		t.Fatal(err)
	}

	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Spec: v1.NodeSpec{PodCIDRs: []string{"10.244.0.0/24"}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.50.10"}}}}
	if _, err := cp.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start(t, ns, dir, "sluice-agent", agentBin, "--config", agentConfig, "--kubeconfig", agentKubeconfig, "--nodeName", "node-a",
		"--bpfRoot", root, "--maglevTableSize", "251", "--nodeStateFile", state,
		"--endpointSocket", filepath.Join(dir, "agent.sock"),
		"--metricsAddr", "127.0.0.1:9962", "--healthAddr", "127.0.0.1:9963", "--syncMinInterval", "50ms",
		"--logFormat", "text", "--observerSocket", filepath.Join(dir, "observer.sock"),
		// Never the machine's cgroups: socket LB is tested on a cgroup of
		// its own in package bpf.
		"--socketLBCgroup", "")

	httpGet := func(path string) (int, string) {
		resp, err := ns.HTTPClient(t).Get("http://127.0.0.1" + path)
		if err != nil {
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually(t, "agent ready", func() bool { c, _ := httpGet(":9963/readyz"); return c == 200 })
	if out, err := exec.Command("ip", "-n", ns.Name, "neigh", "show", "dev", "v0").CombinedOutput(); err != nil || strings.Contains(string(out), "managed") {
		t.Errorf("neighbours on v0: %q %v; want the managed entry of an earlier dsr agent removed", out, err)
	}
	if s, err := nodestate.Read(state); err != nil || s.PodCIDRs[0] != "10.244.0.0/24" {
		t.Fatalf("node state for the CNI: %+v, %v", s, err)
	}

	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}}}
	svc, err = cp.client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)
	name, port, proto := "http", int32(8080), v1.ProtocolTCP
	slice := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{discovery.LabelServiceName: "web"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
		Endpoints:   []discovery.Endpoint{{Addresses: []string{"10.244.1.5"}}, {Addresses: []string{"10.244.2.5"}}},
	}
	if _, err := cp.client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	dp, err := bpf.OpenPinned(root)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	backends := func() int {
		var v bpf.ServiceValue
		if err := dp.Services.Lookup(bpf.ServiceKey{Addr: bpf.Addr(vip.Addr()), Port: bpf.Port(80), Proto: bpf.ProtoTCP}, &v); err != nil {
			return -1
		}
		return int(v.BackendCount)
	}
	eventually(t, fmt.Sprintf("ClusterIP %v with 2 backends in the datapath", vip), func() bool { return backends() == 2 })

	if err := cp.client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Service gone from the datapath", func() bool { return backends() == -1 })

	followNetworkPolicy(t, cp, dp)
	checkObserver(t, cp, ns, filepath.Join(dir, "observer.sock"))

	_, metrics := httpGet(":9962/metrics")
	for _, m := range []string{
		`sluice_sync_duration_seconds_count{controller="service"}`, `sluice_sync_duration_seconds_count{controller="netpol"}`,
		"sluice_services_programmed", `sluice_map_capacity{map="services"}`,
	} {
		if !strings.Contains(metrics, m) {
			t.Errorf("metrics lack %s", m)
		}
	}
}

// followNetworkPolicy creates a pod on the agent's node and a client pod
// on another, then a NetworkPolicy letting only the client reach the pod
// on TCP 8080, and waits for the policy maps to isolate the pod and hold
// that rule.
func followNetworkPolicy(t *testing.T, cp *controlPlane, dp *bpf.Datapath) {
	t.Helper()
	// Pods need their namespace's default ServiceAccount, which
	// kube-controller-manager would create.
	sa := &v1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "default"}}
	if _, err := cp.client.CoreV1().ServiceAccounts("default").Create(context.Background(), sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web, client := netip.MustParseAddr("10.244.0.5"), netip.MustParseAddr("10.244.1.7")
	createRunningPod(t, cp, "web", "node-a", web, map[string]string{"app": "web"})
	createRunningPod(t, cp, "client", "node-b", client, map[string]string{"app": "client"})
	tcp, port := v1.ProtocolTCP, intstr.FromInt32(8080)
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-from-client"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	}
	if _, err := cp.client.NetworkingV1().NetworkPolicies("default").Create(context.Background(), np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "web isolated, and client allowed in on TCP 8080, in the policy maps", func() bool {
		var ep bpf.PolicyEndpointValue
		if err := dp.PolicyEndpoints.Lookup(bpf.EndpointKey{Addr: bpf.Addr(web)}, &ep); err != nil || ep.Flags&bpf.PolicyIngressIsolated == 0 {
			return false
		}
		var remote bpf.IPCacheValue
		if err := dp.IPCache.Lookup(bpf.EndpointKey{Addr: bpf.Addr(client)}, &remote); err != nil {
			return false
		}
		var allow bpf.PolicyValue
		rule := bpf.PolicyRule(ep.Id, remote.Identity, bpf.PolicyIngress, bpf.ProtoTCP, 8080, 16)
		return dp.Policy.Lookup(rule, &allow) == nil
	})
}

// checkObserver asks the agent's observer API what it holds after
// followNetworkPolicy: on the unix socket, and on the TLS port with a
// sluice-observer token the agent reviews with its own RBAC.
func checkObserver(t *testing.T, cp *controlPlane, ns *netnstest.NS, socket string) {
	t.Helper()
	ctx := context.Background()
	c := observeapi.NewClient(socket)
	var st observeapi.Status
	if err := c.Get(ctx, observeapi.PathStatus, nil, &st); err != nil {
		t.Fatalf("observer status: %v", err)
	}
	if st.Node != "node-a" || !st.Ready || st.LastSync["netpol"].IsZero() || len(st.Maps) == 0 || st.Flows.Capacity != 4096 {
		t.Errorf("observer status %+v", st)
	}
	var pol observeapi.Policy
	if err := c.Get(ctx, observeapi.PathPolicy, url.Values{"pod": {"default/web"}}, &pol); err != nil {
		t.Fatalf("observer policy: %v", err)
	}
	want := "ingress pods default [default/client] TCP/8080 [default/web-from-client[ingress 0]]"
	var got []string
	for _, r := range pol.Rules {
		got = append(got, fmt.Sprintf("%s %s %s %v %s/%s %v", r.Direction, r.Peer.Kind, r.Peer.Namespace, r.Peer.Pods, r.Proto, r.Ports, r.Policies))
	}
	if len(got) != 1 || got[0] != want || fmt.Sprint(pol.Endpoint.IngressPolicies) != "[default/web-from-client]" {
		t.Errorf("policy of default/web: %q (endpoint %+v), want %q", got, pol.Endpoint, want)
	}

	// Remote: the TLS port, in the agent's network namespace.
	tr, err := cp.client.CoreV1().ServiceAccounts("sluice-system").CreateToken(ctx, "sluice-observer",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{Audiences: []string{observeapi.TokenAudience}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for sluice-observer: %v", err)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: ns.Dialer(t),
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the agent's certificate is self-signed
	get := func(token string) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://127.0.0.1:4245"+observeapi.PathStatus, nil)
		req.Header.Set(observeapi.TokenHeader, token)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("observer TLS port: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(tr.Status.Token); code != http.StatusOK {
		t.Errorf("status with a sluice-observer token: HTTP %d, want 200 (RBAC for tokenreviews?)", code)
	}
	if code := get("not-a-token"); code != http.StatusUnauthorized {
		t.Errorf("status with a bad token: HTTP %d, want 401", code)
	}
}

// createRunningPod creates a pod bound to node and reports it running at
// addr, as the kubelet would.
func createRunningPod(t *testing.T, cp *controlPlane, name, node string, addr netip.Addr, lbls map[string]string) {
	t.Helper()
	ctx := context.Background()
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: lbls},
		Spec:       v1.PodSpec{NodeName: node, Containers: []v1.Container{{Name: "app", Image: "app"}}},
	}
	pod, err := cp.client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = v1.PodStatus{Phase: v1.PodRunning, PodIP: addr.String(), PodIPs: []v1.PodIP{{IP: addr.String()}}}
	if _, err := cp.client.CoreV1().Pods("default").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func writeKubeconfig(t testing.TB, path, token string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: user, user: {token: `+token+`}}]
contexts: [{name: test, context: {cluster: test, user: user}}]
current-context: test
`), 0o600); err != nil {
		t.Fatal(err)
	}
}

// applyRBAC creates the manifest's Namespace, ServiceAccount, ClusterRole
// and ClusterRoleBinding, and returns a token of that ServiceAccount.
func applyRBAC(t testing.TB, cp *controlPlane) string {
	t.Helper()
	ctx := context.Background()
	decode := scheme.Codecs.UniversalDeserializer().Decode
	for _, doc := range manifests.Documents() {
		obj, _, err := decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("manifest document does not decode: %v\n%s", err, doc)
		}
		switch o := obj.(type) {
		case *v1.Namespace:
			_, err = cp.client.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
		case *v1.ServiceAccount:
			_, err = cp.client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_, err = cp.client.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = cp.client.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatalf("apply %T: %v", obj, err)
		}
	}
	tr, err := cp.client.CoreV1().ServiceAccounts("sluice-system").CreateToken(ctx, "sluice-agent",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for the agent's ServiceAccount: %v", err)
	}
	return tr.Status.Token
}
