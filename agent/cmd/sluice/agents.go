package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"

	"github.com/sluice-net/sluice/internal/observeapi"
)

// agent is one agent to ask: the local one (Node "") or a node's.
type agent struct {
	Node string // "" in local mode
	// name says which agent, for errors.
	name   string
	stream observeapi.StreamFunc
}

// get decodes the agent's JSON answer to path?q into out.
func (a *agent) get(ctx context.Context, path string, q url.Values, out any) error {
	return observeapi.GetJSON(ctx, a.stream, a.name, path, q, out)
}

// remoteMode decides where to ask: remote when asked (--all-nodes,
// --kubeconfig, --context, --node); local when --socket is given or the
// socket exists; otherwise remote when a kubeconfig is at hand ($KUBECONFIG
// or ~/.kube/config), else local (which then fails saying what to do).
func remoteMode(remoteAsked, socketChanged, socketExists, kubeconfigAtHand bool) bool {
	switch {
	case remoteAsked:
		return true
	case socketChanged || socketExists:
		return false
	default:
		return kubeconfigAtHand
	}
}

func kubeconfigAtHand() bool {
	if os.Getenv("KUBECONFIG") != "" {
		return true
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(home, ".kube", "config"))
	return err == nil
}

// agents returns the agents the command asks, and whether they are remote.
func (g *globals) agents(ctx context.Context) ([]*agent, bool, error) {
	_, statErr := os.Stat(g.socket)
	if remoteMode(g.remoteAsked, g.socketChanged, statErr == nil, kubeconfigAtHand()) {
		as, err := g.remoteAgents(ctx)
		return as, true, err
	}
	a, err := localAgent(g.socket)
	return []*agent{a}, false, err
}

func localAgent(socket string) (*agent, error) {
	if _, err := os.Stat(socket); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no agent socket at %s: run sluice inside the agent's pod "+
				"(kubectl -n sluice-system exec ds/sluice-agent -- sluice ...) or on a node as root, "+
				"or from a workstation with --kubeconfig (or --all-nodes) to ask every agent through the API server", socket)
		}
		return nil, fmt.Errorf("agent socket: %w", err)
	}
	c := observeapi.NewClient(socket)
	name := "agent at " + socket
	return &agent{name: name, stream: func(ctx context.Context, path string, q url.Values) (io.ReadCloser, error) {
		body, err := c.Stream(ctx, path, q)
		if errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("%s: permission denied: the socket is root's; run sluice as root", name)
		}
		return body, err
	}}, nil
}

// result is one agent's answer, or its error.
type result[T any] struct {
	agent *agent
	val   T
	err   error
}

// askAll asks every agent in parallel for path?q, answers in node order.
func askAll[T any](ctx context.Context, g *globals, agents []*agent, path string, q url.Values) []result[T] {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	res := make([]result[T], len(agents))
	var wg sync.WaitGroup
	for i, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i].agent = a
			res[i].err = a.get(ctx, path, q, &res[i].val)
		}()
	}
	wg.Wait()
	sort.SliceStable(res, func(i, j int) bool { return res[i].agent.Node < res[j].agent.Node })
	return res
}

// report prints the failed agents' errors and returns the successful
// answers; the error is errPartial when some failed (the answers are
// still printed), or all the errors when all failed.
func report[T any](g *globals, res []result[T]) ([]result[T], error) {
	var ok []result[T]
	var errs []error
	for _, r := range res {
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		ok = append(ok, r)
	}
	switch {
	case len(errs) == 0:
		return ok, nil
	case len(ok) == 0:
		return nil, errors.Join(errs...)
	}
	for _, err := range errs {
		fmt.Fprintln(g.stderr, "sluice:", err)
	}
	return ok, errPartial
}

// isNotFound reports whether err is an agent's 404.
func isNotFound(err error) bool {
	var e *observeapi.Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}
