package main_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	authv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/sluice-net/sluice/agent/internal/observe"
	"github.com/sluice-net/sluice/internal/observeapi"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

// observerSource is an agent's observer data with flows a test pushes.
type observerSource struct {
	node string
	mu   sync.Mutex
	subs []chan observeapi.Flow
}

func (s *observerSource) Status() observeapi.Status {
	return observeapi.Status{Node: s.node, Version: "test", Ready: true, Attach: "tcx"}
}
func (s *observerSource) Services() []observeapi.Service   { return nil }
func (s *observerSource) Endpoints() []observeapi.Endpoint { return nil }
func (s *observerSource) Policy(pod string) (observeapi.Policy, error) {
	return observeapi.Policy{}, fmt.Errorf("pod %s: %w", pod, observe.ErrNotFound)
}
func (s *observerSource) Conntrack(observe.ConntrackFilter) ([]observeapi.ConntrackEntry, error) {
	return nil, nil
}
func (s *observerSource) Drops() observeapi.Drops { return observeapi.Drops{} }
func (s *observerSource) Flows(ctx context.Context, f observeapi.FlowFilter) ([]observeapi.Flow, <-chan observeapi.Flow) {
	buffered := []observeapi.Flow{{Time: time.Now().Add(-time.Minute), Node: s.node, Verdict: observeapi.VerdictDropped,
		Reason: "policy_ingress", Proto: "tcp", Src: observeapi.Addr{IP: "10.244.1.5", Pod: "demo/client"},
		Dst: observeapi.Addr{IP: "10.244.0.7", Port: 8080, Pod: "demo/web"}, Policies: []string{"demo/deny-all"}}}
	if !f.Follow {
		return buffered, nil
	}
	ch := make(chan observeapi.Flow, 8)
	s.mu.Lock()
	s.subs = append(s.subs, ch)
	s.mu.Unlock()
	return buffered, ch
}

func (s *observerSource) push(fl observeapi.Flow) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range s.subs {
		ch <- fl
	}
	return len(s.subs)
}

// serveInNS runs observe.Serve with its listeners inside ns until the test
// ends.
func serveInNS(t *testing.T, ns *netnstest.NS, opts observe.Options, src observe.Source) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		// The thread stays locked and in ns: Go retires it with the
		// goroutine.
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns.Name)
		if err == nil {
			err = netns.Set(h)
			h.Close()
		}
		if err != nil {
			done <- err
			return
		}
		done <- observe.Serve(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), opts, src)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("observe.Serve: %v", err)
		}
	})
}

// TestObserverThroughAPIServer runs the observer server (real TokenReview
// with the manifest's agent RBAC) behind a real kube-apiserver's pod
// proxy, and the sluice CLI in remote mode as a user holding only the
// manifest's sluice-observer-user ClusterRole in sluice-system.
func TestObserverThroughAPIServer(t *testing.T) {
	ns := netnstest.New(t, "sl-obs")
	ns.IP(t, "link", "set", "lo", "up")
	// A pod address the API server will proxy to (it refuses loopback).
	const podIP = "10.99.0.1"
	ns.IP(t, "addr", "add", podIP+"/32", "dev", "lo")
	cp := startControlPlane(t, ns)
	ctx := context.Background()
	dir := t.TempDir()

	sluice := filepath.Join(dir, "sluice")
	if out, err := exec.Command("go", "build", "-o", sluice, "./cmd/sluice").CombinedOutput(); err != nil {
		t.Fatalf("build sluice: %v\n%s", err, out)
	}

	agentToken := applyRBAC(t, cp)
	if _, err := cp.client.CoreV1().ServiceAccounts("sluice-system").Create(ctx,
		&v1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "sluice-observer"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	agentClient := clientFor(t, ns, dir, "agent", agentToken)

	src := &observerSource{node: "node-a"}
	serveInNS(t, ns, observe.Options{Addr: fmt.Sprintf("%s:%d", podIP, observeapi.DefaultPort),
		Review: observe.NewTokenReviewer(agentClient, "sluice-system", "sluice-observer")}, src)

	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "sluice-system", Name: "sluice-agent-node-a",
			Labels: map[string]string{"app.kubernetes.io/name": "sluice-agent"}},
		// The manifest's ServiceAccount: no controller made a default one.
		Spec: v1.PodSpec{NodeName: "node-a", HostNetwork: true, ServiceAccountName: "sluice-agent",
			AutomountServiceAccountToken: ptr.To(false), Containers: []v1.Container{{Name: "agent", Image: "sluice",
				Ports: []v1.ContainerPort{{Name: observeapi.PortName, ContainerPort: observeapi.DefaultPort}}}}},
	}
	pod, err := cp.client.CoreV1().Pods("sluice-system").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = v1.PodStatus{Phase: v1.PodRunning, PodIP: podIP, PodIPs: []v1.PodIP{{IP: podIP}}, HostIP: podIP}
	if _, err := cp.client.CoreV1().Pods("sluice-system").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The CLI's user: a ServiceAccount bound to sluice-observer-user in
	// sluice-system, as docs/cli.md says; and one bound to nothing.
	for _, name := range []string{"dev", "nobody"} {
		if _, err := cp.client.CoreV1().ServiceAccounts("default").Create(ctx,
			&v1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cp.client.RbacV1().RoleBindings("sluice-system").Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "dev-observes"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "sluice-observer-user"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "default", Name: "dev"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	userKubeconfig := func(name string) string {
		tr, err := cp.client.CoreV1().ServiceAccounts("default").CreateToken(ctx, name, &authv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name+".kubeconfig")
		writeKubeconfig(t, p, tr.Status.Token)
		return p
	}
	dev, nobody := userKubeconfig("dev"), userKubeconfig("nobody")

	cli := func(kubeconfig string, args ...string) (string, error) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, sluice, "--kubeconfig", kubeconfig}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("%v: %s", err, stderr.String())
		}
		return string(out), nil
	}
	out, err := cli(dev, "status")
	if err != nil || !strings.Contains(out, "node-a") {
		t.Fatalf("sluice status through the API server: %v\n%s", err, out)
	}
	out, err = cli(dev, "observe", "--verdict", "dropped")
	if err != nil || !strings.Contains(out, "NODE") || !strings.Contains(out, "node-a") || !strings.Contains(out, "demo/deny-all") {
		t.Errorf("sluice observe through the API server: %v\n%s", err, out)
	}
	// The user without the role is told which permission is missing.
	if _, err := cli(nobody, "status"); err == nil || !strings.Contains(err.Error(), "list pods in namespace sluice-system") {
		t.Errorf("sluice status without RBAC: %v", err)
	}

	// --follow: a flow pushed after the stream opened comes through the
	// proxy as it is sent.
	cmd := exec.Command("ip", "netns", "exec", ns.Name, sluice, "--kubeconfig", dev, "observe", "--follow", "-o", "json")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func(what string) string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("%s: the CLI's output ended", what)
			}
			return l
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: nothing after 10s", what)
		}
		return ""
	}
	if l := next("buffered flow"); !strings.Contains(l, "policy_ingress") {
		t.Errorf("buffered flow: %s", l)
	}
	eventually(t, "the follower at the agent", func() bool { return src.push(observeapi.Flow{}) > 0 })
	// push above sent an empty flow to the follower; now a real one.
	_ = next("the probe flow")
	start := time.Now()
	src.push(observeapi.Flow{Time: time.Now(), Node: "node-a", Verdict: observeapi.VerdictTranslated, Service: "demo/web:http"})
	if l := next("followed flow"); !strings.Contains(l, "demo/web:http") {
		t.Errorf("followed flow: %s", l)
	} else if d := time.Since(start); d > 2*time.Second {
		t.Errorf("followed flow took %v through the pod proxy", d)
	}

	// The agent's token review through the real API server.
	tokenOf := func(sa string, audiences ...string) string {
		ns := "sluice-system"
		if sa == "dev" {
			ns = "default"
		}
		tr, err := cp.client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authv1.TokenRequest{
			Spec: authv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: ptr.To[int64](600)}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	review := observe.NewTokenReviewer(agentClient, "sluice-system", "sluice-observer")
	for _, tc := range []struct {
		name, token string
		ok          bool
	}{
		{"the observer's token", tokenOf("sluice-observer", observeapi.TokenAudience), true},
		{"the observer's token for the API server", tokenOf("sluice-observer"), false},
		{"another account's token for observers", tokenOf("dev", observeapi.TokenAudience), false},
	} {
		err := review(ctx, tc.token)
		if tc.ok && err != nil || !tc.ok && !errors.Is(err, observe.ErrUnauthenticated) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// Straight through the proxy with a wrong token: the agent's 401.
	hc := &http.Client{Transport: &http.Transport{DialContext: ns.Dialer(t), TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	req, _ := http.NewRequest(http.MethodGet, "https://127.0.0.1:6443/api/v1/namespaces/sluice-system/pods/https:sluice-agent-node-a:4245/proxy/v1/status", nil)
	req.Header.Set("Authorization", "Bearer sluice-test-admin-token")
	req.Header.Set(observeapi.TokenHeader, tokenOf("dev", observeapi.TokenAudience))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "system:serviceaccount:default:dev") {
		t.Errorf("wrong token through the proxy: HTTP %d %s", resp.StatusCode, body)
	}
}

// clientFor is a client of the API server with token, dialing from ns.
func clientFor(t *testing.T, ns *netnstest.NS, dir, name, token string) kubernetes.Interface {
	t.Helper()
	p := filepath.Join(dir, name+".kubeconfig")
	writeKubeconfig(t, p, token)
	cfg, err := clientcmd.BuildConfigFromFlags("", p)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dial = ns.Dialer(t)
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
