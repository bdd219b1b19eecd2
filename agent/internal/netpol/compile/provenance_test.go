package compile

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/sluice-net/sluice/bpf"
)

// k8sAttribution is the reference attribution of traffic of pod self with
// remote in direction dir, from the API objects: the policies isolating
// self that way, and the policy rules allowing the traffic, as
// RuleSource.String writes them.
func (c *cluster) k8sAttribution(self, remote endpoint, dir Direction, proto v1.Protocol, port int32) (isolating, allowing []string) {
	for _, np := range c.policies {
		if np.Namespace != self.pod.Namespace || !selects(&np.Spec.PodSelector, self.pod.Labels) {
			continue
		}
		types := np.Spec.PolicyTypes
		if len(types) == 0 {
			types = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
			if len(np.Spec.Egress) > 0 {
				types = append(types, networkingv1.PolicyTypeEgress)
			}
		}
		name := np.Namespace + "/" + np.Name
		if dir == Ingress && slices.Contains(types, networkingv1.PolicyTypeIngress) {
			isolating = append(isolating, name)
			for i, r := range np.Spec.Ingress {
				if c.peersMatch(np, r.From, remote) && portsMatch(r.Ports, self.pod, proto, port) {
					allowing = append(allowing, fmt.Sprintf("%s[ingress %d]", name, i))
				}
			}
		}
		if dir == Egress && slices.Contains(types, networkingv1.PolicyTypeEgress) {
			isolating = append(isolating, name)
			for i, r := range np.Spec.Egress {
				if c.peersMatch(np, r.To, remote) && portsMatch(r.Ports, remote.pod, proto, port) {
					allowing = append(allowing, fmt.Sprintf("%s[egress %d]", name, i))
				}
			}
		}
	}
	slices.Sort(isolating)
	slices.Sort(allowing)
	return isolating, allowing
}

// attribution is what the compiled output says of the same traffic, as
// the agent names a datapath event with it: isolation by endpoint ID,
// allowing rules by endpoint, direction, remote address and port.
func attribution(out Output, self, remote endpoint, dir Direction, proto uint8, port uint16) (isolating, allowing []string) {
	ep := out.Endpoints[self.addr]
	for _, p := range out.Isolation[ep.ID].In(dir) {
		isolating = append(isolating, p.String())
	}
	for _, s := range out.Allowing(ep.ID, dir, remote.addr, proto, uint16(port)) {
		allowing = append(allowing, s.String())
	}
	return isolating, allowing
}

// checkAttribution compares, for every pair of endpoints and every probe
// port (as crossCheck does), the attribution of each pod side with the
// reference's. Traffic with the pod's own node passes unjudged, so it is
// left out.
func (c *cluster) checkAttribution(t *testing.T) {
	t.Helper()
	eps := c.probeEndpoints()
	failures := 0
	check := func(self, remote endpoint, dir Direction, pp string) {
		if self.pod == nil || (remote.pod == nil && remote.node == self.node) {
			return
		}
		name, portStr, _ := strings.Cut(pp, ":")
		port, _ := strconv.Atoi(portStr)
		proto := protocols[name]
		wantIso, wantAllow := c.k8sAttribution(self, remote, dir, proto.k8s, int32(port))
		gotIso, gotAllow := attribution(c.outs[self.node], self, remote, dir, proto.num, uint16(port))
		if !slices.Equal(gotIso, wantIso) || !slices.Equal(gotAllow, wantAllow) {
			if failures++; failures <= 10 {
				t.Errorf("%s of %s with %s %s: isolated by %q allowed by %q, want %q and %q",
					dir, self.addr, remote.addr, pp, gotIso, gotAllow, wantIso, wantAllow)
			}
		}
	}
	for _, src := range eps {
		for _, dst := range eps {
			if src.addr == dst.addr || src.addr.Is6() != dst.addr.Is6() || (src.pod == nil && dst.pod == nil) {
				continue
			}
			for _, pp := range probePorts {
				check(src, dst, Egress, pp)
				check(dst, src, Ingress, pp)
			}
		}
	}
	if failures > 10 {
		t.Errorf("... %d mismatches in all", failures)
	}
}

func TestAttributionExamples(t *testing.T) {
	c := newCluster()
	c.policies = parsePolicies(t, `
metadata: {namespace: beta, name: sql-from-alpha}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
    ports: [{port: 5432}]
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.3.0/24]}}]
    ports: [{port: 5400, endPort: 5499}]
---
metadata: {namespace: beta, name: deny-out}
spec: {podSelector: {}, policyTypes: [Egress]}
---
metadata: {namespace: beta, name: also-sql}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}, namespaceSelector: {matchLabels: {team: a}}}]
    ports: [{port: 5432}]
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
    ports: [{port: 5432}, {port: 9999}]`)
	c.compile(t)
	out := c.outs[nodeA] // beta/db runs on node-a
	db := out.Endpoints[netip.MustParseAddr("10.0.2.11")]
	got := out.Allowing(db.ID, Ingress, netip.MustParseAddr("10.0.1.10"), bpf.ProtoTCP, 5432)
	want := []string{"beta/also-sql[ingress 0]", "beta/also-sql[ingress 1]", "beta/sql-from-alpha[ingress 0]", "beta/sql-from-alpha[ingress 1]"}
	if s := sourceStrings(got); !slices.Equal(s, want) {
		t.Errorf("alpha/web > beta/db tcp:5432 allowed by %q, want %q", s, want)
	}
	// One rule key, made by three policy rules.
	key := Rule{Endpoint: db.ID, Remote: out.IPCache[netip.MustParseAddr("10.0.1.10")], Dir: Ingress, Proto: bpf.ProtoTCP, Port: 5432, PortBits: 16}
	want = []string{"beta/also-sql[ingress 0]", "beta/also-sql[ingress 1]", "beta/sql-from-alpha[ingress 0]"}
	if s := sourceStrings(out.Sources(key)); !slices.Equal(s, want) {
		t.Errorf("rule %v comes from %q, want %q", key, s, want)
	}
	if s := sourceStrings(out.Allowing(db.ID, Ingress, netip.MustParseAddr("10.0.3.10"), bpf.ProtoTCP, 5432)); len(s) != 0 {
		t.Errorf("gamma/web > beta/db tcp:5432 (denied) allowed by %q", s)
	}
	iso := out.Isolation[db.ID]
	if fmt.Sprint(iso.Ingress) != "[beta/also-sql beta/sql-from-alpha]" || fmt.Sprint(iso.Egress) != "[beta/deny-out]" {
		t.Errorf("beta/db isolated by %v", iso)
	}
	if p := out.EndpointPods[db.ID]; p.Pod.String() != "beta/db" || p.Identity != out.IPCache[netip.MustParseAddr("10.0.2.11")] {
		t.Errorf("endpoint %d is %+v, want beta/db with its identity", db.ID, p)
	}
	web := out.Identities[out.IPCache[netip.MustParseAddr("10.0.1.10")]]
	if web.Namespace != "alpha" || web.Labels["app"] != "web" || fmt.Sprint(web.Pods) != "[alpha/web]" {
		t.Errorf("alpha/web's identity described as %+v", web)
	}
	cidr := out.CIDRIdentity(netip.MustParseAddr("10.9.9.9"))
	if d := out.Identities[cidr]; !IsCIDR(cidr) || fmt.Sprint(d.Blocks) != "[10.0.0.0/8 except 10.0.3.0/24]" {
		t.Errorf("10.9.9.9's identity %d described as %+v", cidr, d)
	}
	if id := out.CIDRIdentity(netip.MustParseAddr("10.0.3.7")); id != bpf.IdentityWorld {
		t.Errorf("10.0.3.7 (in the except) has CIDR identity %d, want world", id)
	}
}

func sourceStrings(srcs []RuleSource) []string {
	var out []string
	for _, s := range srcs {
		out = append(out, s.String())
	}
	return out
}
