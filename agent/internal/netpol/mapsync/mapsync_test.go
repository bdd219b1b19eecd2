package mapsync

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/sluice-net/sluice/agent/internal/netpol/compile"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
)

func TestApplyWritesTheDifference(t *testing.T) {
	dp := bpftest.Load(t, bpf.Config{MaxPolicyRules: 4})
	w := New(dp)
	pod := netip.MustParseAddr("10.244.0.2")
	out := compile.Output{
		IPCache:   map[netip.Addr]uint32{pod: 300, netip.MustParseAddr("10.244.1.5"): 301},
		CIDRs:     map[netip.Prefix]uint32{netip.MustParsePrefix("192.168.0.0/16"): 1 << 24},
		Endpoints: map[netip.Addr]compile.Endpoint{pod: {ID: 1, IngressIsolated: true}},
		Rules: map[compile.Rule]compile.SourceSet{
			{Endpoint: 1, Remote: 301, Dir: compile.Ingress, Proto: bpf.ProtoTCP, Port: 8080, PortBits: 16}: 0,
		},
	}
	st, err := w.Apply(out)
	if err != nil {
		t.Fatal(err)
	}
	// 2 addresses, 1 prefix plus the IPv4 world entry, 1 endpoint, 1 rule.
	if st.Written != 6 || st.Deleted != 0 || st.Isolated != 1 {
		t.Errorf("first apply: %+v, want 6 written, 1 isolated", st)
	}
	var ep bpf.PolicyEndpointValue
	if err := dp.PolicyEndpoints.Lookup(bpf.EndpointKey{Addr: bpf.Addr(pod)}, &ep); err != nil || ep.Flags != bpf.PolicyIngressIsolated {
		t.Errorf("endpoint entry %+v, %v", ep, err)
	}
	var state bpf.PolicyState
	if err := dp.PolicyState.Lookup(uint32(0), &state); err != nil || state.IsolatedEndpoints != 1 {
		t.Errorf("policy state %+v, %v; want 1 isolated endpoint", state, err)
	}

	// Same state again: nothing to do.
	if st, err := w.Apply(out); err != nil || st.Written+st.Deleted != 0 {
		t.Errorf("unchanged apply: %+v, %v; want no writes", st, err)
	}

	// The policy goes: isolation and rules are removed, the count drops.
	out.Endpoints = map[netip.Addr]compile.Endpoint{pod: {ID: 1}}
	out.Rules = nil
	st, err = w.Apply(out)
	if err != nil || st.Written != 1 || st.Deleted != 1 || st.Isolated != 0 {
		t.Errorf("policy removed: %+v, %v; want 1 written (endpoint), 1 deleted (rule), 0 isolated", st, err)
	}
	if err := dp.PolicyState.Lookup(uint32(0), &state); err != nil || state.IsolatedEndpoints != 0 {
		t.Errorf("policy state %+v, %v; want 0 isolated endpoints", state, err)
	}

	// More rules than the map holds: an error naming the map, and the
	// rules that fit are written.
	out.Rules = map[compile.Rule]compile.SourceSet{}
	for i := range 6 {
		out.Rules[compile.Rule{Endpoint: 1, Remote: 301, Dir: compile.Ingress, Proto: bpf.ProtoTCP, Port: uint16(1000 + i), PortBits: 16}] = 0
	}
	st, err = w.Apply(out)
	full := FullErrors(err)
	if len(full) != 1 || full[0].Map != "sluice_policy_v1" || full[0].Setting != "maxPolicyRules" || full[0].Unwritten != 2 ||
		!strings.Contains(err.Error(), "map sluice_policy_v1 is full (capacity 4; raise maxPolicyRules)") {
		t.Errorf("overfull rules: err %v, want one full error naming sluice_policy_v1, its capacity, maxPolicyRules and the 2 rules left out", err)
	}
	if st.Written != 4 {
		t.Errorf("overfull rules: %d written, want the 4 that fit", st.Written)
	}
}
