package compile

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/sluice-net/sluice/bpf"
)

func TestNumbering(t *testing.T) {
	n := newNumbering[string](10)
	get := func(k string, want uint32) {
		t.Helper()
		if got := n.get(k); got != want {
			t.Errorf("get(%q) = %d, want %d", k, got, want)
		}
	}
	get("a", 10)
	get("b", 11)
	get("a", 10)
	n.release() // both used: nothing freed

	get("a", 10)
	get("d", 12) // b is unused so far, but its number is not free until release
	n.release()  // frees b's 11

	get("e", 11)
	get("b", 13) // b is a new key now
	get("a", 10)
	n.release()  // frees d's 12
	n.release()  // a round without use frees the rest: 10, 11, 13
	get("x", 12) // the longest released first
	get("y", 10)
}

func TestEndpointIDsStable(t *testing.T) {
	c := newCluster()
	c.compile(t)
	first := endpointIDs(c.outs[nodeA])
	for _, id := range first {
		if id == 0 || id > uint32(len(first)) {
			t.Errorf("endpoint IDs %v, want 1..%d", first, len(first))
		}
	}

	// alpha/cache goes, a new local pod comes in the same compile: it must
	// not get alpha/cache's ID, which the datapath may still hold.
	cache := c.pod("alpha/cache")
	c.pods = slices.DeleteFunc(c.pods, func(p *v1.Pod) bool { return p == cache })
	c.pods = append(c.pods, podObj("alpha", "new", nodeA, map[string]string{"app": "new"}, []string{"10.0.1.99"}))
	c.compile(t)
	second := endpointIDs(c.outs[nodeA])
	newID := second[netip.MustParseAddr("10.0.1.99")]
	for addr, id := range first {
		if addr == netip.MustParseAddr("10.0.1.12") {
			if id == newID {
				t.Errorf("a new endpoint reused a number released in the same compile")
			}
			continue
		}
		if second[addr] != id {
			t.Errorf("%s: endpoint ID %d -> %d", addr, id, second[addr])
		}
	}
}

func TestCIDRIdentities(t *testing.T) {
	prefix := netip.MustParsePrefix
	tests := []struct {
		name     string
		policies string
		// groups of prefixes that share an identity; different groups
		// differ. A group starting with "world" is bpf.IdentityWorld.
		same     [][]string
		verdicts []string
	}{{
		name: "except on the inner block",
		policies: `
metadata: {namespace: alpha, name: http}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: 80}]}]
---
metadata: {namespace: alpha, name: https}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.2.0/24]}}], ports: [{port: 443}]}]`,
		// 10.1.2.0/24 is in the /8 block only, like the rest of the /8.
		same: [][]string{{"10.0.0.0/8", "10.1.2.0/24"}, {"10.1.0.0/16"}},
		verdicts: []string{
			"alpha/web > 10.5.5.5 tcp:80 allow",
			"alpha/web > 10.5.5.5 tcp:443 deny",
			"alpha/web > 10.1.5.5 tcp:80 allow",
			"alpha/web > 10.1.5.5 tcp:443 allow",
			"alpha/web > 10.1.2.3 tcp:80 allow",
			"alpha/web > 10.1.2.3 tcp:443 deny",
			"alpha/web > 11.0.0.1 tcp:80 deny",
			"alpha/web > beta/db tcp:80 allow", // a pod address, by ipBlock
			"alpha/web > beta/db tcp:443 deny",
		},
	}, {
		name: "except on the outer block",
		policies: `
metadata: {namespace: alpha, name: http}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.2.0/24]}}], ports: [{port: 80}]}]
---
metadata: {namespace: alpha, name: https}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.1.0.0/16}}], ports: [{port: 443}]}]`,
		same: [][]string{{"10.0.0.0/8"}, {"10.1.0.0/16"}, {"10.1.2.0/24"}},
		verdicts: []string{
			"alpha/web > 10.5.5.5 tcp:80 allow",
			"alpha/web > 10.5.5.5 tcp:443 deny",
			"alpha/web > 10.1.5.5 tcp:80 allow",
			"alpha/web > 10.1.5.5 tcp:443 allow",
			"alpha/web > 10.1.2.3 tcp:80 deny",
			"alpha/web > 10.1.2.3 tcp:443 allow",
		},
	}, {
		name: "a hole in no block, unnormalised prefixes, equal blocks in two policies",
		policies: `
metadata: {namespace: alpha, name: one}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.9.9.9/8, except: [10.0.2.7/24]}}]}]
---
metadata: {namespace: gamma, name: two}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.2.0/24]}}]}]`,
		same: [][]string{{"world", "10.0.2.0/24"}, {"10.0.0.0/8"}},
		verdicts: []string{
			"alpha/web > 10.9.9.9 tcp:80 allow",
			"alpha/web > beta/web tcp:9090 deny",
			"alpha/web > gamma/web tcp:8080 allow",
			"beta/web > gamma/web tcp:8080 deny",
			"10.0.2.99 > gamma/web tcp:8080 deny",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster()
			c.policies = parsePolicies(t, tt.policies)
			c.compile(t)
			cidrs := c.outs[nodeA].CIDRs
			n := 0
			groupIDs := map[uint32]int{}
			for g, group := range tt.same {
				want := cidrs[prefix(group[len(group)-1])]
				if group[0] == "world" {
					want, group = bpf.IdentityWorld, group[1:]
				} else if want < firstCIDRIdentity {
					t.Errorf("%s: identity %d, not a CIDR identity", group[0], want)
				}
				if prev, ok := groupIDs[want]; ok {
					t.Errorf("groups %v and %v share identity %d", tt.same[prev], group, want)
				}
				groupIDs[want] = g
				for _, p := range group {
					if got, ok := cidrs[prefix(p)]; !ok || got != want {
						t.Errorf("%s: identity %d (present %v), want %d", p, got, ok, want)
					}
					n++
				}
			}
			if len(cidrs) != n {
				t.Errorf("CIDRs %v, want only %v", cidrs, tt.same)
			}
			c.check(t, tt.verdicts...)
			c.crossCheck(t)
		})
	}
}

// TestRestoreKeepsNumbers: an agent restarting with the maps of its
// predecessor numbers every pod identity, CIDR identity and endpoint as
// before, even where a fresh allocator would number differently (here
// after pods and ipBlocks came and went, the survivors' numbers are not
// the lowest). A restart must rewrite nothing: entry-by-entry
// renumbering would let packets meet a mix of old and new numbers.
func TestRestoreKeepsNumbers(t *testing.T) {
	c := newCluster()
	c.policies = parsePolicies(t, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: blocks, namespace: alpha}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.9.0/24]}
    - ipBlock: {cidr: 172.16.0.0/12}
`)
	c.compile(t)
	// Churn: alpha's pods and the first ipBlock go; what remains keeps
	// numbers above the lowest.
	c.pods = slices.DeleteFunc(c.pods, func(p *v1.Pod) bool { return p.Namespace == "alpha" && p.Name != "web" })
	c.policies[0].Spec.Ingress[0].From = c.policies[0].Spec.Ingress[0].From[1:]
	c.compile(t)
	before := c.outs[nodeA]

	in := Input{NodeName: nodeA, HostAddrs: hostAddrs[nodeA], Pods: c.pods, Namespaces: c.namespaces, Policies: c.policies}
	fresh := Compile(in, NewAllocator())
	if maps.Equal(fresh.IPCache, before.IPCache) && maps.Equal(fresh.CIDRs, before.CIDRs) {
		t.Fatal("setup: a fresh allocator numbers like the old one; the test would prove nothing")
	}

	restored := NewAllocator()
	restored.Restore(hintsOf(before))
	after := Compile(in, restored)
	if !maps.Equal(after.IPCache, before.IPCache) {
		t.Errorf("pod identities renumbered by a restart:\nbefore %v\nafter  %v", before.IPCache, after.IPCache)
	}
	if !maps.Equal(after.CIDRs, before.CIDRs) {
		t.Errorf("CIDR identities renumbered by a restart:\nbefore %v\nafter  %v", before.CIDRs, after.CIDRs)
	}
	if !maps.Equal(endpointIDs(after), endpointIDs(before)) {
		t.Errorf("endpoint IDs renumbered by a restart:\nbefore %v\nafter  %v", endpointIDs(before), endpointIDs(after))
	}
	if !maps.Equal(after.Rules, before.Rules) {
		t.Errorf("rules differ after a restart: %d before, %d after", len(before.Rules), len(after.Rules))
	}

	// A new pod after the restart takes a number no one holds.
	c.pods = append(c.pods, podObj("beta", "new", nodeA, map[string]string{"app": "new"}, []string{"10.0.2.99"}))
	in.Pods = c.pods
	next := Compile(in, restored)
	id := next.IPCache[netip.MustParseAddr("10.0.2.99")]
	for addr, other := range before.IPCache {
		if other == id {
			t.Errorf("the new pod's identity %d is %s's", id, addr)
		}
	}
}

// hintsOf is what a restarted agent reads back from the maps out was
// written to.
func hintsOf(out Output) Hints {
	h := Hints{PodIdentities: out.IPCache, CIDRIdentities: out.CIDRs, Endpoints: map[netip.Addr]uint32{}}
	for a, ep := range out.Endpoints {
		h.Endpoints[a] = ep.ID
	}
	return h
}
