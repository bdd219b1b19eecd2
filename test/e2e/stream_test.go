//go:build e2e

package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// streamRate is the requests a stream sends per second, one every 100 ms.
const streamRate = 10

// A request that takes this long is a failure; it is a bound for
// requests that are lost, not a latency target.
const streamRequestTimeout = 5 * time.Second

// stream is one curl process sending GET /hostname every 100 ms, in a pod
// or on the outside host, a fixed number of times, and reading each answer:
// over one kept-alive TCP connection, or over a new connection each time.
// It ends by itself; the test waits for it. Each request's outcome comes
// back as one line on curl's stderr as it happens (%{stderr} in -w), each
// answer's body as one line on stdout.
type stream struct {
	f         *testNS
	what      string // where from and to, for messages
	keepAlive bool
	total     int
	start     time.Time
	done      chan struct{}

	mu      sync.Mutex
	results []streamResult
	bodies  []string
	other   []string // curl's own stderr lines
	runErr  error
}

type streamResult struct {
	at        time.Time // when the line arrived
	code      string    // HTTP status, 000 when none came
	connects  string    // new connections this request made
	localPort string
	seconds   float64
	errmsg    string
}

func (r streamResult) ok() bool { return r.code == "200" }

// startStream starts a stream of seconds*streamRate requests to url, from
// the pod named from or, when from is "", from the outside host.
func (f *testNS) startStream(from, url string, seconds int, keepAlive bool) *stream {
	f.t.Helper()
	total := seconds * streamRate
	args := []string{"curl", "-sS", "--rate", fmt.Sprintf("%d/s", streamRate),
		"--max-time", strconv.Itoa(int(streamRequestTimeout.Seconds())),
		"-w", `\n%{stderr}stream|%{http_code}|%{num_connects}|%{local_port}|%{time_total}|%{errormsg}\n`}
	if !keepAlive {
		args = append(args, "-H", "Connection: close")
	}
	// curl's URL globbing: one request per number, in order.
	args = append(args, fmt.Sprintf("%s?seq=[1-%d]", url, total))
	what := "outside"
	if from == "" {
		args = append([]string{"outside", "--"}, args...)
	} else {
		what = from
		args = append([]string{"exec", f.name + "/" + from, "--"}, args...)
	}
	s := &stream{f: f, what: what + " -> " + url, keepAlive: keepAlive, total: total, done: make(chan struct{})}
	// The stream ends by itself; the context only bounds a wedged one.
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds)*time.Second+2*time.Minute)
	cmd := exec.CommandContext(ctx, f.driver, args...)
	cmd.WaitDelay = 5 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		f.t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		f.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		f.t.Fatalf("start the stream %s: %v", s.what, err)
	}
	s.start = time.Now()
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if b := strings.TrimSpace(sc.Text()); b != "" {
				s.mu.Lock()
				s.bodies = append(s.bodies, b)
				s.mu.Unlock()
			}
		}
	}()
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			s.addLine(sc.Text())
		}
	}()
	go func() {
		defer close(s.done)
		defer cancel()
		readers.Wait()
		err := cmd.Wait()
		s.mu.Lock()
		s.runErr = err
		s.mu.Unlock()
	}()
	f.t.Cleanup(func() { cancel(); <-s.done })
	f.t.Logf("%s stream of %d requests (%d/s, %s) %s", s.start.Format(time.StampMilli), total, streamRate, s.kind(), s.what)
	return s
}

func (s *stream) kind() string {
	if s.keepAlive {
		return "one connection"
	}
	return "a new connection each"
}

func (s *stream) addLine(line string) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	rest, ok := strings.CutPrefix(line, "stream|")
	if !ok {
		s.other = append(s.other, line)
		return
	}
	parts := strings.SplitN(rest, "|", 5)
	for len(parts) < 5 {
		parts = append(parts, "")
	}
	secs, _ := strconv.ParseFloat(parts[3], 64)
	s.results = append(s.results, streamResult{at: now, code: parts[0], connects: parts[1], localPort: parts[2], seconds: secs, errmsg: parts[4]})
}

// snapshot is a copy of the results so far.
func (s *stream) snapshot() []streamResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.results)
}

// waitAnswered waits until n requests have been answered, so that a fault
// comes after the connection is established; it fails the test if the
// stream fails or ends first.
func (s *stream) waitAnswered(n int) {
	s.f.t.Helper()
	deadline := time.Now().Add(datapathTimeout)
	for {
		res := s.snapshot()
		answered := 0
		for _, r := range res {
			if !r.ok() {
				s.f.t.Fatalf("stream %s: request %d failed before the fault: %s %s", s.what, len(res), r.code, r.errmsg)
			}
			answered++
		}
		if answered >= n {
			return
		}
		select {
		case <-s.done:
			s.f.t.Fatalf("stream %s ended after %d answers, before the fault: %v %v", s.what, answered, s.runErr, s.other)
		default:
		}
		if time.Now().After(deadline) {
			s.f.t.Fatalf("stream %s: %d answers after %v, want %d", s.what, answered, datapathTimeout, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// requireRunning fails the test if the stream has already ended: the fault
// just injected would not have been tested under load.
func (s *stream) requireRunning(fault string) {
	s.f.t.Helper()
	select {
	case <-s.done:
		s.f.t.Fatalf("the stream %s ended before %s was over: lengthen it", s.what, fault)
	default:
	}
}

// streamReport is what a stream saw.
type streamReport struct {
	// reconnects counts the new connections a kept-alive stream opened
	// after its first (each one a break curl retried on), moved the
	// requests sent on a connection other than the first.
	requests, failed, reconnects, moved int
	backends                            []string
	maxSeconds                          float64
}

// finish waits for the stream to end, logs one greppable line
//
//	reliability: fault=F path=P load=L requests=N failed=N reconnects=N moved=N
//
// and fails the test if a request failed, a kept-alive stream opened a
// second connection (its first one broke), or requests are missing.
func (s *stream) finish(fault, path string) streamReport {
	s.f.t.Helper()
	t := s.f.t
	select {
	case <-s.done:
	case <-time.After(time.Until(s.start.Add(time.Duration(s.total/streamRate)*time.Second + 2*time.Minute))):
		t.Fatalf("stream %s did not end", s.what)
	}
	s.mu.Lock()
	res, bodies, other, runErr := slices.Clone(s.results), slices.Clone(s.bodies), slices.Clone(s.other), s.runErr
	s.mu.Unlock()

	rep := streamReport{requests: len(res)}
	var bad []string
	for i, r := range res {
		rep.maxSeconds = max(rep.maxSeconds, r.seconds)
		at := r.at.Sub(s.start).Round(time.Millisecond)
		if !r.ok() {
			rep.failed++
			bad = append(bad, fmt.Sprintf("request %d at +%v: %s %s", i+1, at, r.code, r.errmsg))
			continue
		}
		// The first request connects; every other one must reuse its
		// connection: a new connect or source port means it broke.
		if s.keepAlive && i > 0 && (r.connects != "0" || r.localPort != res[0].localPort) {
			rep.moved++
			if r.connects != "0" {
				rep.reconnects++
				bad = append(bad, fmt.Sprintf("request %d at +%v: on a new connection (port %s, first %s)", i+1, at, r.localPort, res[0].localPort))
			}
		}
	}
	seen := map[string]bool{}
	for _, b := range bodies {
		if !seen[b] {
			seen[b] = true
			rep.backends = append(rep.backends, b)
		}
	}
	load := fmt.Sprintf("%s@%d/s", strings.ReplaceAll(s.kind(), " ", "-"), streamRate)
	t.Logf("reliability: fault=%s path=%s load=%s requests=%d failed=%d reconnects=%d moved=%d slowest=%.3fs backends=%s",
		fault, path, load, rep.requests, rep.failed, rep.reconnects, rep.moved, rep.maxSeconds, strings.Join(rep.backends, ","))
	for i, b := range bad {
		if i == 20 {
			t.Logf("  ... and %d more", len(bad)-i)
			break
		}
		t.Logf("  %s", b)
	}
	if rep.failed > 0 || rep.moved > 0 {
		t.Errorf("stream %s through %s: %d of %d requests failed, %d went on another connection (%d new ones); want none",
			s.what, fault, rep.failed, rep.requests, rep.moved, rep.reconnects)
		if len(other) > 0 {
			t.Logf("curl: %s", strings.Join(other[:min(len(other), 10)], "\n"))
		}
	}
	if rep.requests != s.total {
		t.Errorf("stream %s: %d of %d requests reported (curl: %v %s)", s.what, rep.requests, s.total, runErr, strings.Join(other, "; "))
	}
	return rep
}

// answeredAfter counts the requests answered after at.
func (s *stream) answeredAfter(at time.Time) int {
	n := 0
	for _, r := range s.snapshot() {
		if r.ok() && r.at.After(at) {
			n++
		}
	}
	return n
}

// driverUnsupported is the exit code of a driver asked for a command it
// cannot do on its cluster (doc.go); a test that needs it skips.
const driverUnsupported = 3

// driverOrSkip runs a driver command and returns its output; the test
// skips if the driver cannot do it here and fails on any other error.
func (f *testNS) driverOrSkip(timeout time.Duration, args ...string) string {
	f.t.Helper()
	out, err := f.driverRun(timeout, args...)
	if exitCode(err) == driverUnsupported {
		f.t.Skipf("skipped: the driver cannot %q on this cluster: %v", args[0], err)
	}
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

// driverCan reports whether the driver does a command on this cluster,
// by asking it with args; other errors fail the test.
func (f *testNS) driverCan(args ...string) bool {
	f.t.Helper()
	_, err := f.driverRun(execTimeout, args...)
	if exitCode(err) == driverUnsupported {
		f.t.Logf("the driver cannot %q on this cluster: %v", args[0], err)
		return false
	}
	if err != nil {
		f.t.Fatal(err)
	}
	return true
}

// programIDs are the BPF program IDs on a pod's host veth or a node's
// uplink (driver `programs`), by hook; nil when the driver cannot tell.
func (f *testNS) programIDs(podOrNode string) map[string]string {
	f.t.Helper()
	out, err := f.driverRun(execTimeout, "programs", podOrNode)
	if exitCode(err) == driverUnsupported {
		return nil
	}
	if err != nil {
		f.t.Fatalf("programs on %s: %v", podOrNode, err)
	}
	ids := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if fields := strings.Fields(line); len(fields) == 3 {
			ids[fields[0]] = strings.TrimSpace(ids[fields[0]] + " " + fields[1] + ":" + fields[2])
		}
	}
	return ids
}

// expectProgramsReplaced checks that every hook of podOrNode runs another
// program than before: the restarted agent took the device over.
func (f *testNS) expectProgramsReplaced(podOrNode string, before map[string]string) {
	f.t.Helper()
	if before == nil {
		f.t.Logf("programs on %s not checked: the driver cannot list them on this cluster", podOrNode)
		return
	}
	after := f.programIDs(podOrNode)
	f.t.Logf("reliability: programs on %s: before %v, after %v", podOrNode, before, after)
	for _, hook := range []string{"ingress", "egress"} {
		if before[hook] == "" || after[hook] == "" {
			f.t.Errorf("programs on %s: %s hook empty (before %q, after %q)", podOrNode, hook, before[hook], after[hook])
		} else if before[hook] == after[hook] {
			f.t.Errorf("programs on %s: the %s hook still runs %s after the agent restarted: the new agent did not take it over", podOrNode, hook, after[hook])
		}
	}
}
