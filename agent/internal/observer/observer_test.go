package observer

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/sluice-net/sluice/agent/internal/flows"
	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/netpol/compile"
	"github.com/sluice-net/sluice/agent/internal/observe"
	svccompile "github.com/sluice-net/sluice/agent/internal/service/compile"
	"github.com/sluice-net/sluice/agent/internal/service/mapsync"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
	"github.com/sluice-net/sluice/internal/observeapi"
)

type fakeNames map[string]string // address -> pod

func (n fakeNames) Pod(a netip.Addr) string { return n[a.String()] }
func (n fakeNames) Node(a netip.Addr) string {
	if a.String() == "192.168.0.1" {
		return "node-a"
	}
	return ""
}

type services struct{ w *mapsync.Writer }

func (s services) Programmed() []mapsync.Programmed { return s.w.Programmed() }
func (s services) LastSync() time.Time              { return time.Time{} }
func (s services) ServiceName(id uint32) string {
	p, ok := s.w.ByID(id)
	if !ok {
		return ""
	}
	return p.Service.String() + ":" + p.PortName
}

type policies struct{ out *compile.Output }

func (p policies) Compiled() *compile.Output { return p.out }
func (p policies) LastSync() time.Time       { return time.Time{} }

var podNames = fakeNames{"10.0.1.10": "ns/web-1", "10.0.1.11": "ns/web-2", "10.0.1.12": "ns/web-old", "10.0.1.20": "ns/client"}

func newSource(t *testing.T, pols Policies) (*Source, *bpf.Datapath, *mapsync.Writer) {
	t.Helper()
	dp := bpftest.Load(t, bpf.Config{MaxServices: 64, MaxBackends: 256})
	w, err := mapsync.New(dp)
	if err != nil {
		t.Fatal(err)
	}
	if pols == nil {
		pols = policies{}
	}
	return New(Options{Node: "node-a"}, dp, services{w}, pols, podNames, flows.NewStore(16, nil)), dp, w
}

func be(s string, terminating bool) svccompile.Backend {
	return svccompile.Backend{Addr: netip.MustParseAddrPort(s), Terminating: terminating}
}

func TestServices(t *testing.T) {
	src, dp, w := newSource(t, nil)
	web := types.NamespacedName{Namespace: "ns", Name: "web"}
	f := svccompile.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: bpf.ProtoTCP, Scope: svccompile.ScopeInternal}
	if _, err := w.Sync(svccompile.Desired{f: {Service: web, PortName: "http", Kind: svccompile.KindClusterIP,
		Backends: []svccompile.Backend{be("10.0.1.10:8080", false), be("10.0.1.11:8080", false)},
		Draining: []svccompile.Backend{be("10.0.1.12:8080", true)}, AffinityTimeout: 60}}); err != nil {
		t.Fatal(err)
	}
	got := src.Services()
	if len(got) != 1 {
		t.Fatalf("services %+v, want one", got)
	}
	s := got[0]
	if s.Service != "ns/web" || s.Port != "http" || s.Frontend != "10.96.0.10:80/tcp" || s.Type != "ClusterIP" ||
		s.Scope != "internal" || s.AffinitySeconds != 60 || s.MaglevSize != 251 /* two backends: the smallest size */ || len(s.Backends) != 3 {
		t.Fatalf("service %+v", s)
	}
	total := 0
	for i, b := range s.Backends {
		total += b.Weight
		pod := []string{"ns/web-1", "ns/web-2", "ns/web-old"}[i]
		if b.Pod != pod || b.ID == 0 || (i < 2 && b.Weight < s.MaglevSize/3) || (i == 2 && (b.Weight != 0 || !b.Terminating)) {
			t.Errorf("backend %d: %+v, want %s with a fair share of the table (draining: none)", i, b, pod)
		}
	}
	if total != s.MaglevSize {
		t.Errorf("weights add up to %d, want the table size %d", total, s.MaglevSize)
	}

	// A conntrack entry of a flow to it, one of another protocol, and a
	// dead one.
	now := bpf.MonotonicNow()
	put := func(src, dst, nat string, proto uint8, expires uint64) {
		t.Helper()
		s, d, n := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst), netip.MustParseAddrPort(nat)
		k := bpf.CTKey{Src: bpf.Addr(s.Addr()), Dst: bpf.Addr(d.Addr()), Sport: bpf.Port(s.Port()), Dport: bpf.Port(d.Port()),
			Proto: proto, Dir: bpf.CTDirService}
		v := bpf.CTValue{NatAddr: bpf.Addr(n.Addr()), NatPort: bpf.Port(n.Port()), SvcId: s0(got).ID, ExpiresNs: expires,
			Flags: bpf.CTFlagEstablished}
		if err := dp.ConntrackMap(proto).Put(k, v); err != nil {
			t.Fatal(err)
		}
	}
	put("10.0.1.20:40000", "10.96.0.10:80", "10.0.1.11:8080", bpf.ProtoTCP, now+uint64(time.Minute))
	put("10.0.1.20:40001", "10.96.0.10:80", "10.0.1.10:8080", bpf.ProtoTCP, now-1)
	put("192.168.0.1:5353", "10.96.0.10:80", "10.0.1.10:8080", bpf.ProtoUDP, now+uint64(time.Minute))
	for _, tc := range []struct {
		filter observe.ConntrackFilter
		want   int
	}{
		{observe.ConntrackFilter{}, 2},
		{observe.ConntrackFilter{Pod: "ns/web-2"}, 1},
		{observe.ConntrackFilter{Pod: "ns/client", Proto: "tcp"}, 1},
		{observe.ConntrackFilter{Pod: "ns/web-1"}, 1}, // the UDP one: the dead TCP entry is not shown
		{observe.ConntrackFilter{Proto: "sctp"}, 0},
		{observe.ConntrackFilter{Service: "ns/web"}, 2},
		{observe.ConntrackFilter{Service: "ns/we"}, 0},
	} {
		entries, err := src.Conntrack(tc.filter)
		if err != nil || len(entries) != tc.want {
			t.Errorf("conntrack %+v: %d entries (%v), want %d", tc.filter, len(entries), err, tc.want)
		}
	}
	entries, _ := src.Conntrack(observe.ConntrackFilter{Pod: "ns/web-2"})
	if len(entries) == 1 {
		e := entries[0]
		if e.Kind != "service" || e.Proto != "tcp" || e.Src.Pod != "ns/client" || e.Dst.IP != "10.96.0.10" || e.Dst.Port != 80 ||
			e.Backend == nil || e.Backend.Pod != "ns/web-2" || e.Service != "ns/web:http" || fmt.Sprint(e.Flags) != "[established]" ||
			e.ExpiresIn <= 0 || e.ExpiresIn > time.Minute {
			t.Errorf("entry %+v", e)
		}
	}
	entries, _ = src.Conntrack(observe.ConntrackFilter{Proto: "udp"})
	if len(entries) != 1 || entries[0].Src.Node != "node-a" {
		t.Errorf("udp entries %+v, want one from node-a", entries)
	}
}

func s0(s []observeapi.Service) observeapi.Service { return s[0] }

const policyYAML = `
metadata: {namespace: beta, name: sql-from-alpha}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
    ports: [{port: 5432}, {port: 8000, endPort: 8099}]
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.3.0/24]}}]
---
metadata: {namespace: beta, name: deny-out}
spec: {podSelector: {}, policyTypes: [Egress]}`

func compiled(t *testing.T) *compile.Output {
	t.Helper()
	pod := func(ns, name, node, app string, ips ...string) *v1.Pod {
		p := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": app}},
			Spec: v1.PodSpec{NodeName: node}, Status: v1.PodStatus{Phase: v1.PodRunning, PodIP: ips[0]}}
		for _, ip := range ips {
			p.Status.PodIPs = append(p.Status.PodIPs, v1.PodIP{IP: ip})
		}
		return p
	}
	var nps []*networkingv1.NetworkPolicy
	for doc := range strings.SplitSeq(policyYAML, "\n---\n") {
		np := &networkingv1.NetworkPolicy{}
		if err := yaml.UnmarshalStrict([]byte(doc), np); err != nil {
			t.Fatal(err)
		}
		nps = append(nps, np)
	}
	out := compile.Compile(compile.Input{NodeName: "node-a",
		Pods: []*v1.Pod{pod("alpha", "web", "node-a", "web", "10.0.1.10"), pod("beta", "db", "node-a", "db", "10.0.2.11", "fd00::2:11"),
			pod("alpha", "api", "node-b", "web", "10.0.1.30")},
		Namespaces: []*v1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "alpha", Labels: map[string]string{"team": "a"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "beta", Labels: map[string]string{"team": "b"}}}},
		Policies: nps}, compile.NewAllocator())
	if len(out.Errors) > 0 {
		t.Fatal(out.Errors)
	}
	return &out
}

func TestPolicy(t *testing.T) {
	out := compiled(t)
	src := &Source{opts: Options{Node: "node-a"}, policies: policies{out}}
	eps := src.Endpoints()
	if len(eps) != 2 || eps[0].Pod != "alpha/web" || eps[1].Pod != "beta/db" {
		t.Fatalf("endpoints %+v, want alpha/web and beta/db", eps)
	}
	if eps[0].PolicyID != 0 || eps[0].IngressPolicies != nil || eps[0].Identity == 0 {
		t.Errorf("alpha/web: %+v, want not isolated, with an identity", eps[0])
	}
	db := eps[1]
	if fmt.Sprint(db.Addrs) != "[10.0.2.11 fd00::2:11]" || db.PolicyID == 0 || fmt.Sprint(db.IngressPolicies) != "[beta/sql-from-alpha]" ||
		fmt.Sprint(db.EgressPolicies) != "[beta/deny-out]" {
		t.Errorf("beta/db: %+v", db)
	}
	if _, err := src.Policy("beta/nope"); !errors.Is(err, observe.ErrNotFound) {
		t.Errorf("unknown pod: %v, want ErrNotFound", err)
	}
	if _, err := src.Policy("alpha/api"); !errors.Is(err, observe.ErrNotFound) {
		t.Errorf("pod of another node: %v, want ErrNotFound", err)
	}
	pol, err := src.Policy("beta/db")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range pol.Rules {
		peer := r.Peer.Kind
		switch r.Peer.Kind {
		case "pods":
			peer = fmt.Sprintf("pods %s %v %v", r.Peer.Namespace, r.Peer.Labels, r.Peer.Pods)
		case "cidr":
			peer = fmt.Sprintf("cidr %v", r.Peer.CIDRs)
		}
		got = append(got, fmt.Sprintf("%s %s %s/%s %v", r.Direction, peer, r.Proto, r.Ports, r.Policies))
	}
	want := []string{
		"ingress pods alpha map[app:web] [alpha/api alpha/web] TCP/5432 [beta/sql-from-alpha[ingress 0]]",
		"ingress pods alpha map[app:web] [alpha/api alpha/web] TCP/8000-8099 [beta/sql-from-alpha[ingress 0]]",
		"ingress cidr [10.0.0.0/8 except 10.0.3.0/24] any/any [beta/sql-from-alpha[ingress 1]]",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("beta/db admits\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDropsLastMinute(t *testing.T) {
	key := bpf.DropKey{Reason: bpf.DropPolicyIngress, Hook: bpf.HookToPod}
	count := uint64(10)
	w := newDropWindow(func() (map[bpf.DropKey]bpf.DropCounter, error) {
		return map[bpf.DropKey]bpf.DropCounter{key: {Packets: count, Bytes: count * 100}}, nil
	})
	t0 := time.Date(2026, 12, 1, 6, 0, 0, 0, time.UTC)
	at := func(d time.Duration, n uint64) {
		w.now = func() time.Time { return t0.Add(d) }
		count = n
		w.sample()
	}
	last := func() uint64 {
		d := w.snapshot(nil).Drops
		if len(d) != 1 || d[0].Reason != "policy_ingress" || d[0].Direction != "ingress" || d[0].Packets != count {
			t.Fatalf("drops %+v", d)
		}
		return d[0].LastMinute
	}
	at(0, 10)
	count = 15
	if got := last(); got != 5 {
		t.Errorf("5 s after start: last minute %d, want 5 (since the first sample)", got)
	}
	at(30*time.Second, 20)
	at(65*time.Second, 50)
	if got := last(); got != 40 {
		t.Errorf("last minute %d, want 40 (since the sample 65 s ago)", got)
	}
	at(95*time.Second, 80)
	if got := last(); got != 60 {
		t.Errorf("last minute %d, want 60 (since the sample at 30 s)", got)
	}
	if len(w.samples) > 3 {
		t.Errorf("%d samples kept, want only the minute's", len(w.samples))
	}
}

func TestFlowsAndStatus(t *testing.T) {
	src, dp, _ := newSource(t, nil)
	m := metrics.New()
	m.RegisterDatapath(dp)
	m.MapEntries.WithLabelValues("services").Set(3)
	src.opts.Metrics = m
	if err := dp.RecordEndpoint(7, []netip.Addr{netip.MustParseAddr("10.0.1.10"), netip.MustParseAddr("fd00::10")}, bpf.EndpointValue{}); err != nil {
		t.Fatal(err)
	}
	src.store.Add(observeapi.Flow{Verdict: observeapi.VerdictDropped})
	got, _ := src.Flows(context.Background(), observeapi.FlowFilter{})
	if len(got) != 1 {
		t.Errorf("flows %v", got)
	}
	st := src.Status()
	if st.Node != "node-a" || st.Flows.Buffered != 1 || st.Flows.Capacity != 16 || st.Flows.Seen != 1 || st.Version == "" {
		t.Errorf("status %+v", st)
	}
	fill := map[string]observeapi.MapFill{}
	for _, f := range st.Maps {
		fill[f.Name] = f
	}
	if f := fill["services"]; f.Entries != 3 || f.Capacity != 64 {
		t.Errorf("services map %+v, want 3 of 64 (as reported)", f)
	}
	if f := fill["endpoints"]; f.Entries != 2 || f.Capacity == 0 || f.MemoryBytes == 0 {
		t.Errorf("endpoints map %+v, want its 2 entries counted and its memory", f)
	}
	// A Maglev map: its memory only.
	if f := fill["maglev_251"]; f.Entries != -1 || f.Capacity != -1 || f.MemoryBytes == 0 {
		t.Errorf("maglev_251 map %+v, want its memory and no fill", f)
	}
}

func TestConntrackEntriesOfAFlowStandTogether(t *testing.T) {
	a := observeapi.Addr{IP: "10.0.1.20", Port: 40000, Pod: "ns/a"}
	b := observeapi.Addr{IP: "10.0.1.21", Port: 40000, Pod: "ns/b"}
	web := observeapi.Addr{IP: "10.0.1.11", Port: 8080, Pod: "ns/web-1"}
	vip := observeapi.Addr{IP: "10.96.0.10", Port: 80}
	entries := []observeapi.ConntrackEntry{
		{Proto: "tcp", Kind: "reply", Src: web, Dst: b},
		{Proto: "udp", Kind: "service", Src: a, Dst: vip},
		{Proto: "tcp", Kind: "service", Src: a, Dst: vip},
		{Proto: "tcp", Kind: "policy-egress", Src: b, Dst: web},
		{Proto: "tcp", Kind: "reply", Src: web, Dst: a},
		{Proto: "tcp", Kind: "service", Src: b, Dst: vip},
	}
	slices.SortFunc(entries, compareEntries)
	var got []string
	for _, e := range entries {
		client := e.Src
		if e.Kind == "reply" {
			client = e.Dst
		}
		got = append(got, e.Proto+" "+client.Pod+" "+e.Kind)
	}
	want := []string{"tcp ns/a reply", "tcp ns/a service", "tcp ns/b policy-egress", "tcp ns/b reply", "tcp ns/b service", "udp ns/a service"}
	if !slices.Equal(got, want) {
		t.Errorf("order:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
