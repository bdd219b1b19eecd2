// Package observer is what the agent's observer API (agent/internal/observe)
// shows: it implements observe.Source from the datapath's maps, the
// service and NetworkPolicy controllers' state, the informer caches and the
// flow store, naming every number it reads.
package observer

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/agent/internal/flows"
	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/netpol/compile"
	"github.com/sluice-net/sluice/agent/internal/observe"
	svccompile "github.com/sluice-net/sluice/agent/internal/service/compile"
	"github.com/sluice-net/sluice/agent/internal/service/mapsync"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/observeapi"
)

// Services is the service controller's view (*service.Controller).
type Services interface {
	Programmed() []mapsync.Programmed
	ServiceName(svcID uint32) string
	LastSync() time.Time
}

// Policies is the NetworkPolicy controller's view (*netpol.Controller).
type Policies interface {
	Compiled() *compile.Output
	LastSync() time.Time
}

// Names names addresses (*flows.Cluster).
type Names interface {
	Pod(addr netip.Addr) string
	Node(addr netip.Addr) string
}

// Options configure a Source.
type Options struct {
	Node    string
	Uplinks []string
	// Ready says whether the agent is ready, and if not why.
	Ready func() (bool, string)
	// Metrics holds the map fill levels the controllers report.
	Metrics *metrics.Metrics
}

// Source implements observe.Source.
type Source struct {
	opts     Options
	dp       *bpf.Datapath
	services Services
	policies Policies
	names    Names
	store    *flows.Store
	started  time.Time
	drops    *dropWindow
}

var _ observe.Source = (*Source)(nil)

// New returns the Source of the agent; run Run to keep the drops' last
// minute.
func New(opts Options, dp *bpf.Datapath, services Services, policies Policies, names Names, store *flows.Store) *Source {
	return &Source{opts: opts, dp: dp, services: services, policies: policies, names: names, store: store,
		started: time.Now(), drops: newDropWindow(dp.DropCountsByHook)}
}

// Run samples the drop counters until ctx ends, for the last minute's
// counts.
func (s *Source) Run(ctx context.Context) {
	s.drops.run(ctx, dropSampleEvery)
}

// Status is the agent and its datapath.
func (s *Source) Status() observeapi.Status {
	st := observeapi.Status{Node: s.opts.Node, Version: version(), Attach: attachMode(s.dp.PinRoot()),
		Uplinks: s.opts.Uplinks, StartedAt: s.started, LastSync: map[string]time.Time{}}
	if s.opts.Ready != nil {
		st.Ready, st.NotReady = s.opts.Ready()
	}
	for name, t := range map[string]time.Time{"service": s.services.LastSync(), "netpol": s.policies.LastSync()} {
		if !t.IsZero() {
			st.LastSync[name] = t
		}
	}
	st.Maps = s.mapFill()
	st.Flows = observeapi.FlowBufferStatus{Buffered: s.store.Len(), Capacity: s.store.Cap(), Seen: s.store.Seen()}
	if c, err := s.dp.CounterValues(); err == nil {
		st.Flows.Lost, st.Flows.Suppressed = c[bpf.CounterEventsLost], c[bpf.CounterEventsSuppressed]
	}
	return st
}

// mapFill reads the maps' fill levels and kernel memory the agent reports
// as metrics (sluice_map_entries against sluice_map_capacity,
// sluice_bpf_map_memory_bytes).
func (s *Source) mapFill() []observeapi.MapFill {
	if s.opts.Metrics == nil {
		return nil
	}
	fams, err := s.opts.Metrics.Registry.Gather()
	if err != nil {
		return nil
	}
	byName := map[string]*observeapi.MapFill{}
	entries := map[string]bool{} // reported by sluice_map_entries
	sized := map[string]bool{}   // reported by sluice_map_capacity
	get := func(m *dto.Metric) *observeapi.MapFill {
		var name string
		for _, l := range m.GetLabel() {
			if l.GetName() == "map" {
				name = l.GetValue()
			}
		}
		if byName[name] == nil {
			byName[name] = &observeapi.MapFill{Name: name}
		}
		return byName[name]
	}
	for _, f := range fams {
		switch f.GetName() {
		case "sluice_map_entries":
			for _, m := range f.GetMetric() {
				fill := get(m)
				fill.Entries = int(m.GetGauge().GetValue())
				entries[fill.Name] = true
			}
		case "sluice_map_capacity":
			for _, m := range f.GetMetric() {
				fill := get(m)
				fill.Capacity = int(m.GetGauge().GetValue())
				sized[fill.Name] = true
			}
		case "sluice_bpf_map_memory_bytes":
			for _, m := range f.GetMetric() {
				get(m).MemoryBytes = uint64(m.GetGauge().GetValue())
			}
		}
	}
	// Maps with only their memory reported have no fill to show.
	for name, f := range byName {
		if !sized[name] && !entries[name] {
			f.Entries, f.Capacity = -1, -1
		}
	}
	// Maps no controller reports entries of (the CNI plugin writes
	// endpoints, the datapath affinity and socket LB entries, the agent
	// the pods socket LB serves, the service writer the source ranges) are
	// counted now.
	for name, m := range map[string]*ebpf.Map{"endpoints": s.dp.Endpoints, "affinity": s.dp.Affinity, "sock_revnat": s.dp.SockRevnat, "sock_netns": s.dp.SockNetns, "lb_ranges": s.dp.LBRanges} {
		if f := byName[name]; f != nil && !entries[name] && m != nil {
			f.Entries = countEntries(m)
		}
	}
	out := make([]observeapi.MapFill, 0, len(byName))
	for _, m := range byName {
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b observeapi.MapFill) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// countEntries counts a map's entries (-1 when it cannot be read).
func countEntries(m *ebpf.Map) int {
	k, v := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if it.Err() != nil {
		return -1
	}
	return n
}

// attachMode is "tcx" when the datapath's attachments are tcx links
// (pinned under the pin root's links directory), else "tc".
func attachMode(root string) string {
	if ents, err := os.ReadDir(filepath.Join(root, "links")); err == nil && len(ents) > 0 {
		return "tcx"
	}
	return "tc"
}

// buildVersion is set at link time (the Makefile's VERSION).
var buildVersion string

// version is the agent's version: the one linked in, else the module
// version and VCS revision the binary was stamped with.
func version() string {
	if buildVersion != "" {
		return buildVersion
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " (" + s.Value[:12] + ")"
		}
	}
	return v
}

// Services lists the frontends the datapath holds, with their backends
// and each backend's share of the Maglev table.
func (s *Source) Services() []observeapi.Service {
	var out []observeapi.Service
	for _, p := range s.services.Programmed() {
		// Each frontend's table is sized to its backends.
		size := int(s.dp.MaglevClassSize(p.MaglevClass))
		svc := observeapi.Service{
			Frontend: fmt.Sprintf("%s/%s", p.Frontend.Addr, flows.ProtoName(p.Frontend.Proto)), Type: p.Kind,
			Scope: "internal", ID: p.ID, LocalOnly: p.LocalOnly, TerminatingFallback: p.TerminatingFallback,
			AffinitySeconds: p.AffinityTimeout, MaglevSize: size, Port: p.PortName, Backends: []observeapi.Backend{},
		}
		if p.Service.Name != "" {
			svc.Service = p.Service.String()
		}
		if p.Frontend.Scope == svccompile.ScopeExternal {
			svc.Scope = "external"
		}
		weights := map[uint32]int{}
		if table, ok, err := s.dp.MaglevTable(p.MaglevClass, p.ID); err == nil && ok {
			for _, id := range table {
				weights[id]++
			}
		}
		for _, b := range p.Backends {
			svc.Backends = append(svc.Backends, observeapi.Backend{Addr: b.Addr.String(), Pod: s.names.Pod(b.Addr.Addr()),
				ID: b.ID, Weight: weights[b.ID], Local: b.Local, Terminating: b.Terminating})
		}
		out = append(out, svc)
	}
	return out
}

// Endpoints lists this node's pods as policy sees them.
func (s *Source) Endpoints() []observeapi.Endpoint {
	out := s.policies.Compiled()
	if out == nil {
		return nil
	}
	var eps []observeapi.Endpoint
	for _, pod := range localPods(out) {
		eps = append(eps, endpoint(out, pod))
	}
	return eps
}

// Policy is what pod NAMESPACE/NAME admits.
func (s *Source) Policy(pod string) (observeapi.Policy, error) {
	out := s.policies.Compiled()
	ns, name, _ := strings.Cut(pod, "/")
	key := types.NamespacedName{Namespace: ns, Name: name}
	if out == nil || !slices.Contains(localPods(out), key) {
		return observeapi.Policy{}, fmt.Errorf("pod %s: no such pod on node %s: %w", pod, s.opts.Node, observe.ErrNotFound)
	}
	return observeapi.Policy{Endpoint: endpoint(out, key), Rules: policyRules(out, key)}, nil
}

// Drops are the drop counters with their last minute.
func (s *Source) Drops() observeapi.Drops {
	return s.drops.snapshot(s.dp)
}

// Flows are the buffered flows and, to follow, the next ones.
func (s *Source) Flows(ctx context.Context, f observeapi.FlowFilter) ([]observeapi.Flow, <-chan observeapi.Flow) {
	return s.store.Flows(ctx, f)
}
