package observe

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-net/sluice/internal/observeapi"
)

// fakeSource serves fixed answers; each follower gets a channel of its own
// that the test feeds through push.
type fakeSource struct {
	flows []observeapi.Flow

	mu        sync.Mutex
	followers []chan observeapi.Flow
	gone      chan observeapi.FlowFilter // a follower's ctx ended
	lastCT    ConntrackFilter
	lastFlows observeapi.FlowFilter
}

func newFakeSource() *fakeSource {
	t0 := time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC)
	return &fakeSource{
		gone: make(chan observeapi.FlowFilter, 16),
		flows: []observeapi.Flow{
			{Time: t0, Node: "node-a", Verdict: observeapi.VerdictDropped, Reason: "policy_ingress", Proto: "tcp",
				Src: observeapi.Addr{IP: "10.244.1.5", Port: 40000, Pod: "demo/client"}, Dst: observeapi.Addr{IP: "10.244.0.7", Port: 8080, Pod: "demo/web"},
				Policies: []string{"demo/deny"}},
			{Time: t0.Add(time.Second), Node: "node-a", Verdict: observeapi.VerdictTranslated, Proto: "tcp",
				Src: observeapi.Addr{IP: "10.244.1.5", Port: 40001, Pod: "demo/client"}, Dst: observeapi.Addr{IP: "10.96.0.10", Port: 80},
				Service: "demo/web:http", Backend: &observeapi.Addr{IP: "10.244.0.7", Port: 8080, Pod: "demo/web"}},
			{Time: t0.Add(2 * time.Second), Node: "node-a", Verdict: observeapi.VerdictForwarded, Proto: "udp",
				Src: observeapi.Addr{IP: "10.244.2.9", Port: 5353, Pod: "other/dns"}, Dst: observeapi.Addr{IP: "10.244.0.8", Port: 53, Pod: "other/x"}},
		},
	}
}

func (s *fakeSource) Status() observeapi.Status {
	return observeapi.Status{Node: "node-a", Version: "v-test", Ready: true, Attach: "tcx",
		Maps: []observeapi.MapFill{{Name: "services", Entries: 3, Capacity: 100}}}
}

func (s *fakeSource) Services() []observeapi.Service {
	return []observeapi.Service{{Service: "demo/web", Port: "http", Frontend: "10.96.0.10:80/TCP", ID: 7,
		Backends: []observeapi.Backend{{Addr: "10.244.0.7:8080", Pod: "demo/web", ID: 3, Weight: 251}}}}
}

func (s *fakeSource) Endpoints() []observeapi.Endpoint { return nil }

func (s *fakeSource) Policy(pod string) (observeapi.Policy, error) {
	if pod != "demo/web" {
		return observeapi.Policy{}, fmt.Errorf("pod %s: %w on node node-a", pod, ErrNotFound)
	}
	return observeapi.Policy{Endpoint: observeapi.Endpoint{Pod: pod, Identity: 9}}, nil
}

func (s *fakeSource) Conntrack(f ConntrackFilter) ([]observeapi.ConntrackEntry, error) {
	s.mu.Lock()
	s.lastCT = f
	s.mu.Unlock()
	if f.Service == "demo/broken" {
		return nil, errors.New("dump conntrack: map is gone")
	}
	return []observeapi.ConntrackEntry{{Proto: "tcp", Kind: "service"}}, nil
}

func (s *fakeSource) Drops() observeapi.Drops { return observeapi.Drops{} }

func (s *fakeSource) Flows(ctx context.Context, f observeapi.FlowFilter) ([]observeapi.Flow, <-chan observeapi.Flow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastFlows = f
	var buffered []observeapi.Flow
	for _, fl := range s.flows {
		if f.Match(fl) {
			buffered = append(buffered, fl)
		}
	}
	if f.Last > 0 && len(buffered) > f.Last {
		buffered = buffered[len(buffered)-f.Last:]
	}
	if !f.Follow {
		return buffered, nil
	}
	ch := make(chan observeapi.Flow, 16)
	s.followers = append(s.followers, ch)
	go func() {
		<-ctx.Done()
		s.gone <- f
	}()
	return buffered, ch
}

// push sends fl to every follower (dropping it for a full one, as the
// agent does).
func (s *fakeSource) push(fl observeapi.Flow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range s.followers {
		select {
		case ch <- fl:
		default:
		}
	}
}

func (s *fakeSource) followerCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.followers)
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// serve runs Serve until the test ends and waits for its listeners.
func serve(t *testing.T, opts Options, src Source) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, testLog(t), opts, src) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok := true
		if opts.Socket != "" {
			c, err := net.Dial("unix", opts.Socket)
			ok = ok && err == nil
			if c != nil {
				c.Close()
			}
		}
		if opts.Addr != "" {
			c, err := net.Dial("tcp", opts.Addr)
			ok = ok && err == nil
			if c != nil {
				c.Close()
			}
		}
		if ok {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("Serve returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the observer server does not listen after 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func socketServer(t *testing.T, src Source) *observeapi.Client {
	sock := filepath.Join(t.TempDir(), "run", "observer.sock")
	serve(t, Options{Socket: sock}, src)
	return observeapi.NewClient(sock)
}

func TestSocketServesTheSource(t *testing.T) {
	src := newFakeSource()
	sock := filepath.Join(t.TempDir(), "observer.sock")
	// A stale socket of an earlier run is replaced.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	serve(t, Options{Socket: sock}, src)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600 (root only)", fi.Mode().Perm())
	}
	c := observeapi.NewClient(sock)
	ctx := context.Background()

	var st observeapi.Status
	if err := c.Get(ctx, observeapi.PathStatus, nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Node != "node-a" || st.Attach != "tcx" || len(st.Maps) != 1 || st.Maps[0].Capacity != 100 {
		t.Errorf("status %+v", st)
	}
	var svcs []observeapi.Service
	if err := c.Get(ctx, observeapi.PathServices, nil, &svcs); err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 || svcs[0].Backends[0].Pod != "demo/web" {
		t.Errorf("services %+v", svcs)
	}
	// An empty list is [], not null.
	body, err := c.Stream(ctx, observeapi.PathEndpoints, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(body)
	body.Close()
	if strings.TrimSpace(string(b)) != "[]" {
		t.Errorf("no endpoints: %q, want []", b)
	}
	var pol observeapi.Policy
	if err := c.Get(ctx, observeapi.PathPolicy, url.Values{"pod": {"demo/web"}}, &pol); err != nil || pol.Endpoint.Identity != 9 {
		t.Errorf("policy %+v, %v", pol, err)
	}
	var ct []observeapi.ConntrackEntry
	if err := c.Get(ctx, observeapi.PathConntrack, url.Values{"pod": {"demo/web"}, "proto": {"TCP"}}, &ct); err != nil || len(ct) != 1 {
		t.Errorf("conntrack %+v, %v", ct, err)
	}
	if src.lastCT != (ConntrackFilter{Pod: "demo/web", Proto: "tcp"}) {
		t.Errorf("conntrack filter %+v", src.lastCT)
	}
	var drops observeapi.Drops
	if err := c.Get(ctx, observeapi.PathDrops, nil, &drops); err != nil || drops.Drops == nil {
		t.Errorf("drops %+v, %v", drops, err)
	}
}

// TestErrorsNameTheParameter: a bad request is refused with 400 and a
// message naming the parameter and what it wants; an unknown pod is 404.
func TestErrorsNameTheParameter(t *testing.T) {
	c := socketServer(t, newFakeSource())
	for _, tc := range []struct {
		path   string
		q      url.Values
		status int
		want   []string
	}{
		{observeapi.PathFlows, url.Values{"verdict": {"denied"}}, 400, []string{"verdict", "dropped"}},
		{observeapi.PathFlows, url.Values{"pod": {"web"}}, 400, []string{"pod", "NAMESPACE/NAME"}},
		{observeapi.PathFlows, url.Values{"since": {"5m"}}, 400, []string{"since", "RFC 3339"}},
		{observeapi.PathFlows, url.Values{"last": {"-1"}}, 400, []string{"last"}},
		{observeapi.PathFlows, url.Values{"follow": {"maybe"}}, 400, []string{"follow"}},
		{observeapi.PathFlows, url.Values{"podd": {"a/b"}}, 400, []string{`"podd"`, "pod, namespace"}},
		{observeapi.PathPolicy, nil, 400, []string{"missing parameter pod", "NAMESPACE/NAME"}},
		{observeapi.PathPolicy, url.Values{"pod": {"a/b/c"}}, 400, []string{"pod", "NAMESPACE/NAME"}},
		{observeapi.PathPolicy, url.Values{"pod": {"demo/nope"}}, 404, []string{"demo/nope", "not found"}},
		{observeapi.PathConntrack, url.Values{"proto": {"gre"}}, 400, []string{"proto", "tcp, udp"}},
		{observeapi.PathConntrack, url.Values{"service": {"web"}}, 400, []string{"service", "NAMESPACE/NAME"}},
		{observeapi.PathConntrack, url.Values{"service": {"demo/broken"}}, 500, []string{"map is gone"}},
		{observeapi.PathStatus, url.Values{"x": {"1"}}, 400, []string{`"x"`, "none"}},
		{"/v1/nope", nil, 404, []string{"/v1/status"}},
	} {
		body, err := c.Stream(context.Background(), tc.path, tc.q)
		if body != nil {
			body.Close()
		}
		var e *observeapi.Error
		if !errors.As(err, &e) || e.Status != tc.status {
			t.Errorf("%s?%s: %v, want HTTP %d", tc.path, tc.q.Encode(), err, tc.status)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(e.Message, w) {
				t.Errorf("%s?%s: message %q lacks %q", tc.path, tc.q.Encode(), e.Message, w)
			}
		}
	}

	// Only GET.
	sockClient := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", c.Socket)
	}}}
	resp, err := sockClient.Post("http://agent"+observeapi.PathStatus, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: HTTP %d, want 405", resp.StatusCode)
	}
}

func TestFlowsBufferedThenFollowed(t *testing.T) {
	src := newFakeSource()
	c := socketServer(t, src)
	ctx := context.Background()

	// Without follow: the matching buffered flows, then the end.
	var got []observeapi.Flow
	body, err := c.Stream(ctx, observeapi.PathFlows, observeapi.FlowFilter{Namespace: "demo", Last: 5}.Query())
	if err != nil {
		t.Fatal(err)
	}
	if err := observeapi.DecodeFlows(body, func(fl observeapi.Flow) error { got = append(got, fl); return nil }); err != nil {
		t.Fatal(err)
	}
	body.Close()
	if len(got) != 2 || got[0].Verdict != observeapi.VerdictDropped || got[1].Backend == nil || got[1].Backend.Pod != "demo/web" {
		t.Errorf("buffered flows of demo: %+v", got)
	}
	if src.lastFlows.Namespace != "demo" || src.lastFlows.Last != 5 || src.lastFlows.Follow {
		t.Errorf("filter passed to the source: %+v", src.lastFlows)
	}

	// Follow: the buffered flows, then each pushed flow arrives on its own,
	// before the next is pushed (flushed per flow).
	fctx, cancel := context.WithCancel(ctx)
	body, err = c.Stream(fctx, observeapi.PathFlows, observeapi.FlowFilter{Verdict: observeapi.VerdictDropped, Follow: true}.Query())
	if err != nil {
		t.Fatal(err)
	}
	lines := make(chan observeapi.Flow)
	go func() {
		_ = observeapi.DecodeFlows(body, func(fl observeapi.Flow) error { lines <- fl; return nil })
		close(lines)
	}()
	next := func(what string) observeapi.Flow {
		t.Helper()
		select {
		case fl, ok := <-lines:
			if !ok {
				t.Fatalf("%s: the stream ended", what)
			}
			return fl
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no flow after 5s", what)
		}
		return observeapi.Flow{}
	}
	if fl := next("buffered"); fl.Reason != "policy_ingress" {
		t.Errorf("buffered flow %+v", fl)
	}
	for src.followerCount() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	for i := range 3 {
		src.push(observeapi.Flow{Verdict: observeapi.VerdictDropped, Reason: fmt.Sprint("r", i)})
		if fl := next("followed"); fl.Reason != fmt.Sprint("r", i) {
			t.Errorf("followed flow %d: %+v", i, fl)
		}
	}
	// The client goes: the source learns its follower is gone.
	cancel()
	body.Close()
	select {
	case f := <-src.gone:
		if !f.Follow || f.Verdict != observeapi.VerdictDropped {
			t.Errorf("gone follower's filter %+v", f)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the source's context did not end when the client went away")
	}
}

// TestStuckFollowerHoldsOnlyItself: a follower that stops reading does
// not hold back another.
func TestStuckFollowerHoldsOnlyItself(t *testing.T) {
	src := newFakeSource()
	c := socketServer(t, src)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stuck, err := c.Stream(ctx, observeapi.PathFlows, observeapi.FlowFilter{Follow: true, Last: 1}.Query())
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	live, err := c.Stream(ctx, observeapi.PathFlows, observeapi.FlowFilter{Follow: true, Last: 1}.Query())
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	for src.followerCount() < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	lines := make(chan string)
	go func() {
		r := bufio.NewReader(live)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				close(lines)
				return
			}
			lines <- line
		}
	}()
	next := func(what string) string {
		t.Helper()
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("%s: the live follower's stream ended", what)
			}
			return line
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: nothing for the live follower after 5s", what)
		}
		return ""
	}
	next("the buffered flow")
	big := strings.Repeat("x", 4096) // fills the stuck client's socket buffers soon
	for i := range 200 {
		src.push(observeapi.Flow{Reason: fmt.Sprint(i), Policies: []string{big}})
		line := next(fmt.Sprint("flow ", i))
		var fl observeapi.Flow
		if err := json.Unmarshal([]byte(line), &fl); err != nil || fl.Reason != fmt.Sprint(i) {
			t.Fatalf("live follower, flow %d: %q (%v)", i, line[:min(len(line), 60)], err)
		}
	}
}

// freeAddr is a loopback address with a free port.
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestTLSPortNeedsAnAcceptedToken(t *testing.T) {
	const good = "good-token"
	var reviewed []string
	var mu sync.Mutex
	review := func(_ context.Context, token string) error {
		mu.Lock()
		reviewed = append(reviewed, token)
		mu.Unlock()
		switch token {
		case good:
			return nil
		case "api-down":
			return errors.New("token review: connection refused")
		}
		return fmt.Errorf("%w: a token of system:serviceaccount:x:y", ErrUnauthenticated)
	}
	addr := freeAddr(t)
	sock := filepath.Join(t.TempDir(), "observer.sock")
	serve(t, Options{Socket: sock, Addr: addr, Review: review}, newFakeSource())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	get := func(token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+observeapi.PathStatus, nil)
		if token != "" {
			req.Header.Set(observeapi.TokenHeader, token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		token  string
		status int
		want   string
	}{
		{"", 401, observeapi.TokenHeader},
		{"bad", 401, "system:serviceaccount:x:y"},
		{"api-down", 503, "connection refused"},
		{good, 200, `"node": "node-a"`},
	} {
		status, body := get(tc.token)
		if status != tc.status || !strings.Contains(body, tc.want) {
			t.Errorf("token %q: HTTP %d %q, want %d with %q", tc.token, status, body, tc.status, tc.want)
		}
	}
	mu.Lock()
	if strings.Join(reviewed, ",") != "bad,api-down,"+good {
		t.Errorf("reviewed tokens %q: the missing one must not be reviewed", reviewed)
	}
	mu.Unlock()
	// Plain HTTP on the TLS port is refused.
	if resp, err := http.Get("http://" + addr + observeapi.PathStatus); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plain HTTP served on the TLS port")
		}
	}
	// The socket needs no token.
	var st observeapi.Status
	if err := observeapi.NewClient(sock).Get(context.Background(), observeapi.PathStatus, nil, &st); err != nil {
		t.Errorf("socket: %v", err)
	}
}

func TestNoReviewerRefusesRemoteRequests(t *testing.T) {
	addr := freeAddr(t)
	serve(t, Options{Addr: addr}, newFakeSource())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	req, _ := http.NewRequest(http.MethodGet, "https://"+addr+observeapi.PathStatus, nil)
	req.Header.Set(observeapi.TokenHeader, "anything")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("HTTP %d, want 401", resp.StatusCode)
	}
}

func TestServeFailsOnABusyAddress(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sock := filepath.Join(t.TempDir(), "observer.sock")
	err = Serve(context.Background(), testLog(t), Options{Socket: sock, Addr: l.Addr().String()}, newFakeSource())
	if err == nil || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Errorf("Serve on a busy address: %v", err)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Errorf("a failed start left a dead socket at %s", sock)
	}
}
