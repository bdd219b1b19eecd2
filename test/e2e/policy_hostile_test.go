//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// allowIngress lets pods labelled role=from reach pods labelled role=to on
// one TCP port; it isolates role=to for ingress.
func allowIngress(to, from string, port int32) *networkingv1.NetworkPolicy {
	p := intstr.FromInt32(port)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: to + "-from-" + from},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": to}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": from}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &p}},
			}},
		},
	}
}

// deletePolicies deletes every NetworkPolicy of the namespace.
func (f *testNS) deletePolicies() {
	f.t.Helper()
	if err := f.client.NetworkingV1().NetworkPolicies(f.name).DeleteCollection(f.t.Context(), metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		f.t.Fatalf("delete NetworkPolicies: %v", err)
	}
}

// TestPolicyICMPDenyAll: ICMP echo is judged like any protocol. Under an
// ingress deny-all a pod answers no ping; under an egress deny-all a pod's
// pings reach neither a pod nor another node. Replies to a pod's own
// pings (ingress deny-all) and its replies to others' (egress deny-all)
// still pass, and without the policies every ping is answered again.
func TestPolicyICMPDenyAll(t *testing.T) {
	t.Parallel()
	f := newTestNS(t)
	a, b := f.nodes[0], f.nodes[1]
	role := func(r string) map[string]string { return map[string]string{"role": r} }
	ips := f.runPods(
		netexecPod("target", a, role("target")), // ingress deny-all
		netexecPod("sender", a, role("sender")), // egress deny-all
		netexecPod("client", b, role("client")),
		netexecPod("peer", b, role("peer")))
	target, sender, client, peer := ips[0], ips[1], ips[2], ips[3]
	nodeB := f.nodeIP(b)
	type ping struct {
		from, to, what string
		denied         bool
	}
	pings := []ping{
		{"client", target, "into a pod under ingress deny-all", true},
		{"sender", peer, "from a pod under egress deny-all to a pod", true},
		{"sender", nodeB, "from a pod under egress deny-all to another node", true},
		{"target", client, "from a pod under ingress deny-all (the replies come in)", false},
		{"peer", sender, "to a pod under egress deny-all (its replies go out)", false},
	}
	// The control: without policies every ping is answered.
	for _, p := range pings {
		f.eventually(fmt.Sprintf("ping %s from %s to %s answered", p.what, p.from, p.to), datapathTimeout,
			func(context.Context) error { return f.ping(p.from, p.to) })
	}

	f.applyPolicy(&networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "target-deny-ingress"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: role("target")},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	})
	f.applyPolicy(&networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "sender-deny-egress"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: role("sender")},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		},
	})
	// Once TCP between the same pods is dropped, both policies are in the
	// datapath: from then on ICMP must be dropped too, at once.
	port := strconv.Itoa(podHTTPPort)
	f.expectPolicyDrop("client", net.JoinHostPort(target, port))
	f.expectPolicyDrop("sender", net.JoinHostPort(peer, port))
	for _, p := range pings {
		for range 3 {
			err := f.ping(p.from, p.to)
			switch {
			case p.denied && err == nil:
				t.Errorf("ping %s (%s to %s): answered, want dropped", p.what, p.from, p.to)
			case !p.denied && err != nil:
				t.Errorf("ping %s (%s to %s): %v, want answered", p.what, p.from, p.to, err)
			}
		}
	}

	f.deletePolicies()
	for _, p := range pings {
		f.eventually(fmt.Sprintf("ping %s from %s to %s answered without policies", p.what, p.from, p.to), policyTimeout,
			func(context.Context) error { return f.ping(p.from, p.to) })
	}
}

// verdict is what a TCP connect attempt saw.
type verdict string

const (
	connected verdict = "connected"
	timedOut  verdict = "timeout" // nothing came back: a policy drop
	refused   verdict = "refused" // a reset or an ICMP error came back
	noVerdict verdict = "probe error"
)

func verdictOf(err error) verdict {
	switch {
	case err == nil:
		return connected
	case strings.Contains(err.Error(), "TIMEOUT"):
		return timedOut
	case strings.Contains(err.Error(), "REFUSED"):
		return refused
	}
	return noVerdict
}

// pairProbe connects from a client pod to a target address again and
// again, expecting one verdict (connected or timeout), and records every
// attempt with the phase it started in.
type pairProbe struct {
	client, target string
	want           verdict

	mu       sync.Mutex
	attempts []probeAttempt
}

type probeAttempt struct {
	phase string
	at    time.Time
	got   verdict
	err   error
}

// verdictProbes runs pairProbes side by side, in phases.
type verdictProbes struct {
	f      *testNS
	probes []*pairProbe
	phase  atomic.Pointer[string]
	phases []string
	stop   chan struct{}
	wg     sync.WaitGroup
	halt   func()
}

func (f *testNS) startVerdictProbes(phase string, probes ...*pairProbe) *verdictProbes {
	vp := &verdictProbes{f: f, probes: probes, stop: make(chan struct{})}
	vp.halt = sync.OnceFunc(func() {
		close(vp.stop)
		vp.wg.Wait()
	})
	vp.enter(phase)
	for _, p := range probes {
		vp.wg.Add(1)
		go vp.run(p)
	}
	f.t.Cleanup(vp.halt)
	return vp
}

func (vp *verdictProbes) run(p *pairProbe) {
	defer vp.wg.Done()
	for {
		phase := *vp.phase.Load()
		start := time.Now()
		err := vp.f.connects(p.client, p.target)
		p.mu.Lock()
		p.attempts = append(p.attempts, probeAttempt{phase: phase, at: start, got: verdictOf(err), err: err})
		p.mu.Unlock()
		select {
		case <-vp.stop:
			return
		case <-time.After(probeGap):
		}
	}
}

// enter starts a new phase; attempts that start from now on count in it.
func (vp *verdictProbes) enter(phase string) {
	vp.f.t.Logf("%s phase %q", time.Now().Format(time.StampMilli), phase)
	vp.phases = append(vp.phases, phase)
	vp.phase.Store(&phase)
}

// finish stops probing, logs each probe's verdicts per phase and every
// wrong one, and returns how many verdicts were wrong and how many
// attempts gave none.
func (vp *verdictProbes) finish() (wrong, errs int) {
	vp.halt()
	t := vp.f.t
	for _, p := range vp.probes {
		for _, phase := range vp.phases {
			counts := map[verdict]int{}
			for _, a := range p.attempts {
				if a.phase == phase {
					counts[a.got]++
				}
			}
			t.Logf("%s -> %s (want %s), phase %q: %v", p.client, p.target, p.want, phase, counts)
		}
		for _, a := range p.attempts {
			switch {
			case a.got == noVerdict:
				errs++
				t.Logf("  %s: no verdict: %v", a.at.Format(time.StampMilli), a.err)
			case a.got != p.want:
				wrong++
				t.Logf("  %s: WRONG: %s, want %s (%v)", a.at.Format(time.StampMilli), a.got, p.want, a.err)
			}
		}
	}
	return wrong, errs
}

// TestPolicyAgentRestartVerdicts: restarting the agent on each node in
// turn while every pair of three pods is probed both ways changes no
// verdict. The policies allow a->b, b->c and c->a on one port, so every
// identity is an allowed peer of some pod and a mix of old and new numbers
// can turn into a wrong verdict either way; the rest (b->a, c->b, a->c,
// a->b on another port) is denied. The datapath and its maps outlive the
// agent, and a restarted agent must find them saying what it would write:
// no allowed connect may fail and no denied one succeed at any moment.
// Each probe is a new connection; a window shorter than the gaps between
// them (a millisecond of a sync) can pass unseen.
//
// Not parallel: a restart would disturb the other tests' traffic, and a
// failure it caused would be blamed on them.
func TestPolicyAgentRestartVerdicts(t *testing.T) {
	f := newTestNS(t)
	n0, n1 := f.nodes[0], f.nodes[1]
	role := func(r string) map[string]string { return map[string]string{"role": r} }
	// Created one after the other, in the reverse of the order a starting
	// agent numbers them in (by namespace and name): the restarts
	// renumber identities and endpoints unless numbering is carried over.
	cIP := f.runPods(netexecPod("c", n0, role("c")))[0]
	bIP := f.runPods(policyServerPod("b", n1, role("b")))[0]
	aIP := f.runPods(netexecPod("a", n0, role("a")))[0]
	a, b, c := net.JoinHostPort(aIP, strconv.Itoa(podHTTPPort)), net.JoinHostPort(bIP, strconv.Itoa(podHTTPPort)), net.JoinHostPort(cIP, strconv.Itoa(podHTTPPort))
	probes := []*pairProbe{
		{client: "a", target: b, want: connected},
		{client: "b", target: c, want: connected},
		{client: "c", target: a, want: connected},
		{client: "b", target: a, want: timedOut},
		{client: "c", target: b, want: timedOut},
		{client: "a", target: c, want: timedOut},
		{client: "a", target: net.JoinHostPort(bIP, strconv.Itoa(podOtherPort)), want: timedOut},
	}
	// The control: without policies every pair connects.
	for _, p := range probes {
		f.expectReach(p.client, p.target)
	}
	f.applyPolicy(allowIngress("b", "a", podHTTPPort))
	f.applyPolicy(allowIngress("c", "b", podHTTPPort))
	f.applyPolicy(allowIngress("a", "c", podHTTPPort))
	for _, p := range probes {
		if p.want == connected {
			f.expectReach(p.client, p.target)
		} else {
			f.expectPolicyDrop(p.client, p.target)
		}
	}

	vp := f.startVerdictProbes("before restarts", probes...)
	time.Sleep(settleDwell)
	for _, node := range f.nodes {
		vp.enter("restart agent on " + node)
		f.restartAgent(node)
		time.Sleep(agentRestartSettle)
	}
	wrong, errs := vp.finish()
	if wrong > 0 {
		t.Errorf("%d wrong verdicts across agent restarts, want none", wrong)
	}
	if errs > 0 {
		t.Errorf("%d probes gave no verdict", errs)
	}
}
