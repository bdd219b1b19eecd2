package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/sluice-net/sluice/agent/internal/observe"
	"github.com/sluice-net/sluice/internal/observeapi"
)

// testSource is one node's agent with fixed answers.
type testSource struct {
	node     string
	flows    []observeapi.Flow
	services []observeapi.Service
	policy   map[string]observeapi.Policy
	ct       []observeapi.ConntrackEntry
	drops    observeapi.Drops
}

func (s *testSource) Status() observeapi.Status {
	return observeapi.Status{Node: s.node, Version: "v0.test", Ready: true, Attach: "tcx", Uplinks: []string{"eth0"},
		Maps: []observeapi.MapFill{{Name: "sluice_services_v2", Entries: 25, Capacity: 100, MemoryBytes: 3 << 20},
			{Name: "maglev_1021", Entries: -1, Capacity: -1, MemoryBytes: 1 << 19}},
		Flows: observeapi.FlowBufferStatus{Buffered: len(s.flows), Capacity: 4096, Seen: 10}}
}
func (s *testSource) Services() []observeapi.Service   { return s.services }
func (s *testSource) Endpoints() []observeapi.Endpoint { return nil }
func (s *testSource) Policy(pod string) (observeapi.Policy, error) {
	p, ok := s.policy[pod]
	if !ok {
		return p, fmt.Errorf("pod %s is not on node %s: %w", pod, s.node, observe.ErrNotFound)
	}
	return p, nil
}
func (s *testSource) Conntrack(observe.ConntrackFilter) ([]observeapi.ConntrackEntry, error) {
	return s.ct, nil
}
func (s *testSource) Drops() observeapi.Drops { return s.drops }
func (s *testSource) Flows(_ context.Context, f observeapi.FlowFilter) ([]observeapi.Flow, <-chan observeapi.Flow) {
	var out []observeapi.Flow
	for _, fl := range s.flows {
		if f.Match(fl) {
			out = append(out, fl)
		}
	}
	if f.Last > 0 && len(out) > f.Last {
		out = out[len(out)-f.Last:]
	}
	return out, nil
}

func nodeA() *testSource {
	return &testSource{
		node: "node-a",
		flows: []observeapi.Flow{
			{Time: t0.Add(1 * time.Second), Node: "node-a", Verdict: observeapi.VerdictDropped, Reason: "policy_ingress", Hook: "to_pod",
				Direction: "ingress", Proto: "tcp",
				Src: observeapi.Addr{IP: "10.244.1.5", Port: 41000, Pod: "demo/client"}, Dst: observeapi.Addr{IP: "10.244.0.7", Port: 8080, Pod: "demo/web"},
				Policies: []string{"demo/deny-all"}},
			{Time: t0.Add(3 * time.Second), Node: "node-a", Verdict: observeapi.VerdictTranslated, Hook: "from_pod", Proto: "tcp",
				Src: observeapi.Addr{IP: "10.244.0.9", Port: 41001, Pod: "demo/client-2"}, Dst: observeapi.Addr{IP: "10.96.0.10", Port: 80},
				Service: "demo/web:http", Backend: &observeapi.Addr{IP: "10.244.1.8", Port: 8080, Pod: "demo/web-1"}},
		},
		services: []observeapi.Service{{Service: "demo/web", Port: "http", Frontend: "10.96.0.10:80/TCP", Type: "ClusterIP", Scope: "internal",
			ID: 4, MaglevSize: 251, AffinitySeconds: 10800, Backends: []observeapi.Backend{
				{Addr: "10.244.0.7:8080", Pod: "demo/web", ID: 1, Weight: 126, Local: true},
				{Addr: "10.244.1.8:8080", Pod: "demo/web-1", ID: 2, Weight: 125, Terminating: true}}}},
		policy: map[string]observeapi.Policy{"demo/web": {
			Endpoint: observeapi.Endpoint{Pod: "demo/web", Addrs: []string{"10.244.0.7"}, PolicyID: 3, Identity: 77,
				IngressPolicies: []string{"demo/allow-client"}},
			Rules: []observeapi.PolicyRule{{Direction: "ingress", Proto: "TCP", Ports: "8080",
				Peer:     observeapi.Peer{Identity: 78, Kind: "pods", Namespace: "demo", Labels: map[string]string{"app": "client"}, Pods: []string{"demo/client"}},
				Policies: []string{"demo/allow-client[ingress 0]"}}},
		}},
		ct: []observeapi.ConntrackEntry{{Proto: "tcp", Kind: "service", Src: observeapi.Addr{IP: "10.244.0.9", Port: 41001, Pod: "demo/client-2"},
			Dst: observeapi.Addr{IP: "10.96.0.10", Port: 80}, Service: "demo/web:http",
			Backend: &observeapi.Addr{IP: "10.244.1.8", Port: 8080, Pod: "demo/web-1"}, Flags: []string{"established"}, ExpiresIn: 21594 * time.Second}},
		drops: observeapi.Drops{Since: t0, Drops: []observeapi.DropCount{{Reason: "policy_ingress", Hook: "to_pod", Direction: "ingress",
			Packets: 3, Bytes: 180, LastMinute: 1}}},
	}
}

func nodeB() *testSource {
	return &testSource{
		node: "node-b",
		flows: []observeapi.Flow{
			{Time: t0.Add(2 * time.Second), Node: "node-b", Verdict: observeapi.VerdictForwarded, Hook: "to_pod", Direction: "ingress", Proto: "tcp",
				Src: observeapi.Addr{IP: "10.244.0.9", Port: 41001, Pod: "demo/client-2"}, Dst: observeapi.Addr{IP: "10.244.1.8", Port: 8080, Pod: "demo/web-1"},
				Policies: []string{"demo/allow-client[ingress 0]"}},
			{Time: t0.Add(4 * time.Second), Node: "node-b", Verdict: observeapi.VerdictDropped, Reason: "no_backend", Hook: "from_netdev", Proto: "udp",
				Src: observeapi.Addr{IP: "192.168.1.10", Port: 5000, Node: "node-c"}, Dst: observeapi.Addr{IP: "192.168.1.11", Port: 30053},
				Service: "demo/dns:dns", Suppressed: 12},
		},
		services: nodeA().services,
		drops:    observeapi.Drops{Since: t0},
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// serveSocket serves src on a unix socket until the test ends.
func serveSocket(t *testing.T, src observe.Source) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "observer.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- observe.Serve(ctx, testLogger(t), observe.Options{Socket: sock}, src) }()
	t.Cleanup(func() { cancel(); <-done })
	for range 500 {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no socket")
	return ""
}

// run runs the CLI with args; stdout, stderr and the error.
func run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRoot(&out, &errb)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

// squash collapses runs of spaces, so tests do not depend on widths.
func squash(s string) string {
	return regexp.MustCompile(` {2,}`).ReplaceAllString(s, "  ")
}

func TestLocalCommands(t *testing.T) {
	t.Setenv("TZ", "UTC")
	time.Local = time.UTC
	sock := serveSocket(t, nodeA())
	for _, tc := range []struct {
		args []string
		want []string // lines (spaces squashed) that must be in the output
	}{
		{[]string{"observe"}, []string{
			"TIME  SOURCE  DESTINATION  PROTO  VERDICT  REASON  POLICY",
			"Dec  1 05:00:01.000  demo/client  ->  demo/web  TCP/8080  DROPPED  policy_ingress  demo/deny-all",
			"Dec  1 05:00:03.000  demo/client-2  ->  Service demo/web:http -> demo/web-1  TCP/80  TRANSLATED  -  -",
		}},
		{[]string{"observe", "--verdict", "dropped", "--last", "1"}, []string{
			"Dec  1 05:00:01.000  demo/client  ->  demo/web  TCP/8080  DROPPED  policy_ingress  demo/deny-all"}},
		{[]string{"service", "list"}, []string{
			"ID  FRONTEND  SERVICE  TYPE  FLAGS  BACKENDS",
			"4  10.96.0.10:80/TCP  demo/web:http  ClusterIP  internal,affinity=10800s,maglev=251  1 => 10.244.0.7:8080 demo/web (weight 126, local)",
			"  2 => 10.244.1.8:8080 demo/web-1 (weight 125, terminating)",
		}},
		{[]string{"policy", "get", "demo/web"}, []string{
			"Pod:  demo/web",
			"Ingress:  isolated by demo/allow-client",
			"Egress:  not isolated: every egress peer is admitted",
			"ingress  pods in demo {app=client} (identity 78)  TCP  8080  demo/allow-client[ingress 0]",
			"  pods: demo/client",
		}},
		{[]string{"ct", "list", "--pod", "demo/client-2", "--proto", "TCP"}, []string{
			"PROTO  KIND  SOURCE  DESTINATION  SERVICE  BACKEND  FLAGS  EXPIRES",
			"TCP  service  demo/client-2:41001  10.96.0.10:80  demo/web:http  demo/web-1:8080  established  6h",
		}},
		{[]string{"drops"}, []string{"policy_ingress  to_pod  ingress  3  180  1  2026-12-01 05:00:00"}},
		{[]string{"status"}, []string{"Node:  node-a", "Ready:  yes", "Attach:  tcx", "sluice_services_v2  25  100  25.0%  3.0 MiB",
			"maglev_1021  -  -  -  512.0 KiB", "total  -  -  -  3.5 MiB"}},
	} {
		out, errOut, err := run(t, append(tc.args, "--socket", sock)...)
		if err != nil {
			t.Errorf("%v: %v\n%s", tc.args, err, errOut)
			continue
		}
		lines := strings.Split(squash(out), "\n")
		for _, w := range tc.want {
			found := false
			for _, l := range lines {
				if strings.TrimSpace(l) == strings.TrimSpace(w) {
					found = true
				}
			}
			if !found {
				t.Errorf("%v: no line %q in\n%s", tc.args, w, out)
			}
		}
		if tc.args[0] == "observe" && len(tc.args) > 1 && strings.Count(out, "\n") != 2 {
			t.Errorf("%v: want a header and one flow:\n%s", tc.args, out)
		}
	}

	// -o json: the agent's answer.
	out, _, err := run(t, "service", "list", "-o", "json", "--socket", sock)
	var svcs []observeapi.Service
	if err != nil || json.Unmarshal([]byte(out), &svcs) != nil || len(svcs) != 1 || svcs[0].MaglevSize != 251 {
		t.Errorf("service list -o json: %v\n%s", err, out)
	}
	out, _, err = run(t, "observe", "-o", "json", "--socket", sock)
	var n int
	derr := observeapi.DecodeFlows(strings.NewReader(out), func(observeapi.Flow) error { n++; return nil })
	if err != nil || derr != nil || n != 2 {
		t.Errorf("observe -o json: %d flows, %v, %v\n%s", n, err, derr, out)
	}
}

func TestLocalErrors(t *testing.T) {
	sock := serveSocket(t, nodeA())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"policy", "get", "demo/nope"}, "pod demo/nope is not on node node-a"},
		{[]string{"policy", "get", "nope"}, "want NAMESPACE/POD"},
		{[]string{"observe", "--verdict", "denied"}, "--verdict"},
		{[]string{"observe", "--pod", "web"}, "--pod"},
		{[]string{"observe", "--since", "yesterday"}, "--since"},
		{[]string{"ct", "list", "--proto", "gre"}, "proto"},
		{[]string{"status", "-o", "yaml"}, "--output"},
		// testSource follows nothing: its stream ends after the buffered flows.
		{[]string{"observe", "--follow"}, "the agent ended the flow stream"},
		{[]string{"status", "--socket", filepath.Join(t.TempDir(), "none.sock")}, "run sluice inside the agent's pod"},
	} {
		args := tc.args
		if !strings.Contains(strings.Join(args, " "), "--socket") {
			args = append(args, "--socket", sock)
		}
		_, _, err := run(t, args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}

// fakeAPIServer stands for the API server: it lists the agent pods, makes
// observer tokens, and proxies pods/https:POD:4245/proxy/... to the
// agents' handlers, as kube-apiserver does. (The real pod proxy is driven
// in agent/observer_apiserver_test.go and the e2e suite.)
type fakeAPIServer struct {
	srv          *httptest.Server
	agents       map[string]http.Handler // pod name -> the agent's TLS port handler
	forbidProxy  atomic.Bool
	forbidToken  atomic.Bool
	tokenAudient atomic.Value
}

const fakeToken = "observer-token"

func newFakeAPIServer(t *testing.T, sources map[string]*testSource) *fakeAPIServer {
	f := &fakeAPIServer{agents: map[string]http.Handler{}}
	review := func(_ context.Context, tok string) error {
		if tok != fakeToken {
			return fmt.Errorf("%w: not the observer's token", observe.ErrUnauthenticated)
		}
		return nil
	}
	pods := corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}}
	for pod, src := range sources {
		f.agents[pod] = observe.Authenticate(testLogger(t), review, observe.Handler(testLogger(t), src))
		pods.Items = append(pods.Items, corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: "sluice-system", Labels: map[string]string{"app.kubernetes.io/name": "sluice-agent"}},
			Spec: corev1.PodSpec{NodeName: src.node, Containers: []corev1.Container{{Name: "agent",
				Ports: []corev1.ContainerPort{{Name: "observer", ContainerPort: 4245}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning},
		})
	}
	pods.Items = append(pods.Items, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agent-pending", Namespace: "sluice-system"},
		Spec: corev1.PodSpec{NodeName: "node-z"}, Status: corev1.PodStatus{Phase: corev1.PodPending}})
	status := func(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
			Status: "Failure", Code: int32(code), Reason: reason, Message: msg})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/namespaces/sluice-system/pods", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("labelSelector") != agentSelector {
			t.Errorf("pods listed with selector %q", r.URL.Query().Get("labelSelector"))
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(pods)
	})
	mux.HandleFunc("POST /api/v1/namespaces/sluice-system/serviceaccounts/sluice-observer/token", func(w http.ResponseWriter, r *http.Request) {
		if f.forbidToken.Load() {
			status(w, 403, metav1.StatusReasonForbidden, `serviceaccounts "sluice-observer" is forbidden: User "dev" cannot create resource "serviceaccounts/token"`)
			return
		}
		body, _ := io.ReadAll(r.Body)
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(body, nil, nil)
		tr, ok := obj.(*authv1.TokenRequest)
		if err != nil || !ok {
			t.Errorf("token request body: %v (%T)", err, obj)
			tr = &authv1.TokenRequest{}
		}
		f.tokenAudient.Store(strings.Join(tr.Spec.Audiences, ","))
		tr.Status.Token = fakeToken
		tr.Kind, tr.APIVersion = "TokenRequest", "authentication.k8s.io/v1"
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(tr)
	})
	mux.HandleFunc("/api/v1/namespaces/sluice-system/pods/{target}/proxy/{rest...}", func(w http.ResponseWriter, r *http.Request) {
		if f.forbidProxy.Load() {
			status(w, 403, metav1.StatusReasonForbidden, `pods "x" is forbidden: User "dev" cannot get resource "pods/proxy"`)
			return
		}
		pod, ok := strings.CutPrefix(r.PathValue("target"), "https:")
		pod, ok2 := strings.CutSuffix(pod, ":4245")
		h := f.agents[pod]
		if !ok || !ok2 || h == nil {
			status(w, 503, metav1.StatusReasonServiceUnavailable, "error trying to reach service: dial tcp: connection refused")
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/" + r.PathValue("rest")
		h.ServeHTTP(w, r2)
	})
	f.srv = httptest.NewTLSServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAPIServer) kubeconfig(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "`+f.srv.URL+`", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: dev}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRemoteCommands(t *testing.T) {
	time.Local = time.UTC
	api := newFakeAPIServer(t, map[string]*testSource{"agent-a": nodeA(), "agent-b": nodeB()})
	kc := api.kubeconfig(t)

	out, errOut, err := run(t, "observe", "--kubeconfig", kc)
	if err != nil {
		t.Fatalf("observe: %v\n%s", err, errOut)
	}
	if api.tokenAudient.Load() != observeapi.TokenAudience {
		t.Errorf("token requested for audiences %q", api.tokenAudient.Load())
	}
	if !strings.Contains(errOut, "node node-z: agent pod agent-pending is pending, skipped") {
		t.Errorf("stderr lacks the skipped pending agent: %q", errOut)
	}
	want := []string{
		"TIME  NODE  SOURCE  DESTINATION  PROTO  VERDICT  REASON  POLICY",
		"Dec  1 05:00:01.000  node-a  demo/client  ->  demo/web  TCP/8080  DROPPED  policy_ingress  demo/deny-all",
		"Dec  1 05:00:02.000  node-b  demo/client-2  ->  demo/web-1  TCP/8080  FORWARDED  ingress allowed  demo/allow-client[ingress 0]",
		"Dec  1 05:00:03.000  node-a  demo/client-2  ->  Service demo/web:http -> demo/web-1  TCP/80  TRANSLATED  -  -",
		"Dec  1 05:00:04.000  node-b  node:node-c  ->  Service demo/dns:dns  UDP/30053  DROPPED  no_backend  -  (+12 suppressed before)",
	}
	if got := strings.TrimSpace(squash(out)); got != strings.Join(want, "\n") {
		t.Errorf("observe from two nodes:\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
	// The columns line up.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	col := strings.Index(lines[0], "VERDICT")
	for _, l := range lines[1:] {
		if !strings.Contains(l[col:col+10], "DROPPED") && !strings.Contains(l[col:col+10], "FORWARDED") &&
			!strings.Contains(l[col:col+10], "TRANSLATED") {
			t.Errorf("VERDICT column not aligned:\n%s", out)
			break
		}
	}

	// --last N is the newest N of all nodes.
	out, _, err = run(t, "observe", "--kubeconfig", kc, "--last", "1")
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, "no_backend") {
		t.Errorf("observe --last 1: %v\n%s", err, out)
	}

	out, _, err = run(t, "service", "list", "--kubeconfig", kc)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"NODE  ID  FRONTEND", "node-a  4  10.96.0.10:80/TCP", "node-b  4  10.96.0.10:80/TCP"} {
		if !strings.Contains(squash(out), w) {
			t.Errorf("service list: no %q in\n%s", w, out)
		}
	}
	out, _, err = run(t, "service", "list", "--kubeconfig", kc, "-o", "json")
	var byNode map[string][]observeapi.Service
	if err != nil || json.Unmarshal([]byte(out), &byNode) != nil || len(byNode["node-a"]) != 1 || len(byNode["node-b"]) != 1 {
		t.Errorf("service list -o json: %v\n%s", err, out)
	}

	// The pod is on node-a: node-b's 404 is not an error.
	out, errOut, err = run(t, "policy", "get", "demo/web", "--kubeconfig", kc)
	if err != nil || !strings.Contains(squash(out), "Node:  node-a") || strings.Contains(out, "node-b") {
		t.Errorf("policy get: %v\n%s\n%s", err, out, errOut)
	}
	_, _, err = run(t, "policy", "get", "demo/nope", "--kubeconfig", kc)
	if err == nil || !strings.Contains(err.Error(), "not an endpoint of any agent") {
		t.Errorf("policy get of an unknown pod: %v", err)
	}

	// --node asks one agent.
	out, _, err = run(t, "drops", "--kubeconfig", kc, "--node", "node-b")
	if err != nil || strings.Contains(out, "node-a") || !strings.Contains(out, "node-b") {
		t.Errorf("drops --node node-b: %v\n%s", err, out)
	}

	// RBAC: the error names the permission.
	api.forbidProxy.Store(true)
	_, _, err = run(t, "status", "--kubeconfig", kc)
	if err == nil || !strings.Contains(err.Error(), "get on pods/proxy in namespace sluice-system") {
		t.Errorf("pods/proxy forbidden: %v", err)
	}
	api.forbidProxy.Store(false)
	api.forbidToken.Store(true)
	_, _, err = run(t, "status", "--kubeconfig", kc)
	if err == nil || !strings.Contains(err.Error(), "create on serviceaccounts/token in namespace sluice-system") {
		t.Errorf("token forbidden: %v", err)
	}
}
