package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/sluice-net/sluice/internal/observeapi"
)

// agentSelector selects the agent pods.
const agentSelector = "app.kubernetes.io/name=sluice-agent"

// tokenSeconds is the life of the observer token the CLI asks for.
const tokenSeconds = 600

// remoteAgents finds the agent pods and returns one agent each, asked
// through the API server's pod proxy with a fresh observer token.
func (g *globals) remoteAgents(ctx context.Context) ([]*agent, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = g.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: g.kubeContext}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("remote mode: kubeconfig: %w", err)
	}
	cfg.UserAgent = "sluice-cli"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("remote mode: %w", err)
	}
	lctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	pods, err := client.CoreV1().Pods(g.agentNS).List(lctx, metav1.ListOptions{LabelSelector: agentSelector})
	if err != nil {
		if apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("remote mode: you may not list pods in namespace %s (needed to find the agents; "+
				"the ClusterRole sluice-observer-user grants it, see docs/cli.md): %w", g.agentNS, err)
		}
		return nil, fmt.Errorf("remote mode: list the agent pods (%s) in namespace %s: %w", agentSelector, g.agentNS, err)
	}
	var targets []corev1.Pod
	for _, p := range pods.Items {
		if len(g.nodes) > 0 && !slices.Contains(g.nodes, p.Spec.NodeName) {
			continue
		}
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			fmt.Fprintf(g.stderr, "sluice: node %s: agent pod %s is %s, skipped\n", p.Spec.NodeName, p.Name, podState(p))
			continue
		}
		targets = append(targets, p)
	}
	if len(targets) == 0 {
		what := "no running agent pods"
		if len(g.nodes) > 0 {
			what += " on nodes " + strings.Join(g.nodes, ", ")
		}
		return nil, fmt.Errorf("remote mode: %s (%s in namespace %s; --namespace-agent)", what, agentSelector, g.agentNS)
	}

	tr, err := client.CoreV1().ServiceAccounts(g.agentNS).CreateToken(lctx, g.observerSA, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{Audiences: []string{observeapi.TokenAudience}, ExpirationSeconds: ptr.To[int64](tokenSeconds)},
	}, metav1.CreateOptions{})
	if err != nil {
		if apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("remote mode: you may not create a token of ServiceAccount %s/%s "+
				"(needs create on serviceaccounts/token in namespace %s; the ClusterRole sluice-observer-user grants it, see docs/cli.md): %w",
				g.agentNS, g.observerSA, g.agentNS, err)
		}
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("remote mode: no ServiceAccount %s/%s (manifests/sluice.yaml creates it; --observer-serviceaccount): %w",
				g.agentNS, g.observerSA, err)
		}
		return nil, fmt.Errorf("remote mode: token of ServiceAccount %s/%s: %w", g.agentNS, g.observerSA, err)
	}
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("remote mode: %w", err)
	}
	base, err := url.Parse(cfg.Host)
	if err != nil || base.Host == "" {
		// A host without a scheme ("10.0.0.1:6443").
		base, err = url.Parse("https://" + cfg.Host)
		if err != nil {
			return nil, fmt.Errorf("remote mode: API server address %q: %w", cfg.Host, err)
		}
	}
	var agents []*agent
	for _, p := range targets {
		agents = append(agents, proxyAgent(httpClient, base, g.agentNS, p, tr.Status.Token))
	}
	return agents, nil
}

func podState(p corev1.Pod) string {
	if p.DeletionTimestamp != nil {
		return "terminating"
	}
	return strings.ToLower(string(p.Status.Phase))
}

// observerPort is the agent container's port named observeapi.PortName.
func observerPort(p corev1.Pod) int {
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == observeapi.PortName {
				return int(port.ContainerPort)
			}
		}
	}
	return observeapi.DefaultPort
}

// proxyURL is the pod proxy URL of path on the agent pod's TLS port.
func proxyURL(base *url.URL, ns, pod string, port int, apiPath string, q url.Values) string {
	u := *base
	u.Path = path.Join("/", base.Path, "api/v1/namespaces", ns, "pods", "https:"+pod+":"+strconv.Itoa(port), "proxy", apiPath)
	u.RawQuery = q.Encode()
	return u.String()
}

func proxyAgent(hc *http.Client, base *url.URL, ns string, p corev1.Pod, token string) *agent {
	port := observerPort(p)
	name := fmt.Sprintf("node %s (agent pod %s)", p.Spec.NodeName, p.Name)
	return &agent{Node: p.Spec.NodeName, name: name, stream: func(ctx context.Context, apiPath string, q url.Values) (io.ReadCloser, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, proxyURL(base, ns, p.Name, port, apiPath, q), nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set(observeapi.TokenHeader, token)
		resp, err := hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if resp.StatusCode == http.StatusOK {
			return resp.Body, nil
		}
		defer resp.Body.Close()
		return nil, proxyError(name, ns, resp)
	}}
}

// proxyError explains an error answer: the API server's own (a Status:
// forbidden, the pod unreachable) or the agent's (text).
func proxyError(name, ns string, resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	var st metav1.Status
	if mt == "application/json" && json.Unmarshal(body, &st) == nil && st.Kind == "Status" {
		switch {
		case resp.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%s: you may not use the pod proxy of the agent pods (needs get on pods/proxy in namespace %s; "+
				"the ClusterRole sluice-observer-user grants it, see docs/cli.md): %s", name, ns, st.Message)
		case resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusBadGateway ||
			resp.StatusCode == http.StatusInternalServerError:
			return fmt.Errorf("%s: the API server cannot reach the agent's observer port (is the agent running with observerAddr set?): %s",
				name, st.Message)
		}
		return fmt.Errorf("%s: API server: %s (HTTP %d)", name, st.Message, resp.StatusCode)
	}
	err := observeapi.ReadError(resp.StatusCode, strings.NewReader(string(body)))
	if resp.StatusCode == http.StatusUnauthorized {
		return fmt.Errorf("%s: the agent refused the observer token: %w", name, err)
	}
	return fmt.Errorf("%s: %w", name, err)
}
