// Package mapsync writes compiled NetworkPolicy into the datapath's
// maps: it reads what the maps hold, and applies only the difference to
// the desired state: rules first, then the identities of addresses, then
// the endpoints' isolation; removals last. A rule for a new identity thus
// exists before any address carries that identity.
package mapsync

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/agent/internal/netpol/compile"
	"github.com/sluice-net/sluice/bpf"
)

// Writer applies compile.Output to one node's datapath.
type Writer struct {
	dp *bpf.Datapath
}

// New returns a writer for dp.
func New(dp *bpf.Datapath) *Writer { return &Writer{dp: dp} }

// Stats counts what an Apply changed and what the maps hold after it.
type Stats struct {
	Written, Deleted                           int
	IPCache, CIDRs, Endpoints, Rules, Isolated int
}

// Apply makes the maps hold exactly out. On a map error (a full map) it
// goes on with the rest and returns every error, each naming the map.
func (w *Writer) Apply(out compile.Output) (Stats, error) {
	var st Stats
	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}

	ipcache := make(map[bpf.EndpointKey]bpf.IPCacheValue, len(out.IPCache))
	for a, id := range out.IPCache {
		ipcache[bpf.EndpointKey{Addr: bpf.Addr(a)}] = bpf.IPCacheValue{Identity: id}
	}
	cidrs := make(map[bpf.CIDRKey]bpf.IPCacheValue, len(out.CIDRs)+1)
	// IPv4 addresses live in the IPv4-mapped part of one IPv6 trie: without
	// an entry of their own, an IPv6 ipBlock such as ::/0 would match them.
	cidrs[bpf.CIDR(netip.PrefixFrom(netip.IPv4Unspecified(), 0))] = bpf.IPCacheValue{Identity: bpf.IdentityWorld}
	for p, id := range out.CIDRs {
		cidrs[bpf.CIDR(p)] = bpf.IPCacheValue{Identity: id}
	}
	rules := make(map[bpf.PolicyKey]bpf.PolicyValue, len(out.Rules))
	for r := range out.Rules {
		rules[bpf.PolicyRule(r.Endpoint, r.Remote, uint8(r.Dir), r.Proto, r.Port, r.PortBits)] = bpf.PolicyValue{}
	}
	endpoints := make(map[bpf.EndpointKey]bpf.PolicyEndpointValue, len(out.Endpoints))
	for a, ep := range out.Endpoints {
		v := bpf.PolicyEndpointValue{Id: ep.ID}
		if ep.IngressIsolated {
			v.Flags |= bpf.PolicyIngressIsolated
		}
		if ep.EgressIsolated {
			v.Flags |= bpf.PolicyEgressIsolated
		}
		if v.Flags != 0 {
			st.Isolated++
		}
		endpoints[bpf.EndpointKey{Addr: bpf.Addr(a)}] = v
	}

	ipcacheDiff, err := diff(w.dp.IPCache, "ipcache", ipcache)
	note(err)
	cidrDiff, err := diff(w.dp.PolicyCIDRs, "policy_cidrs", cidrs)
	note(err)
	ruleDiff, err := diff(w.dp.Policy, "policy", rules)
	note(err)
	endpointDiff, err := diff(w.dp.PolicyEndpoints, "policy_endpoints", endpoints)
	note(err)

	// Additions and changes: rules before the identities that use them,
	// and what the new state allows before any endpoint becomes (more)
	// isolated.
	st.Written += ruleDiff.put(&errs)
	st.Written += ipcacheDiff.put(&errs)
	st.Written += cidrDiff.put(&errs)
	st.Written += endpointDiff.put(&errs)
	if st.Isolated > 0 {
		note(w.setIsolated(st.Isolated))
	}
	// Removals: isolation flags first, then what they used.
	st.Deleted += endpointDiff.delete(&errs)
	st.Deleted += ruleDiff.delete(&errs)
	st.Deleted += cidrDiff.delete(&errs)
	st.Deleted += ipcacheDiff.delete(&errs)
	note(w.setIsolated(st.Isolated))

	st.IPCache, st.CIDRs, st.Rules, st.Endpoints = len(ipcache), len(cidrs), len(rules), len(endpoints)
	return st, errors.Join(errs...)
}

// Hints reads back the numbers the maps hold (a restarted agent finds its
// predecessor's), for compile.Allocator.Restore.
func (w *Writer) Hints() (compile.Hints, error) {
	h := compile.Hints{PodIdentities: map[netip.Addr]uint32{}, CIDRIdentities: map[netip.Prefix]uint32{}, Endpoints: map[netip.Addr]uint32{}}
	var errs []error
	var ek bpf.EndpointKey
	var iv bpf.IPCacheValue
	it := w.dp.IPCache.Iterate()
	for it.Next(&ek, &iv) {
		h.PodIdentities[bpf.AddrFrom(ek.Addr)] = iv.Identity
	}
	errs = append(errs, wrapRead("ipcache", it.Err()))
	var ck bpf.CIDRKey
	it = w.dp.PolicyCIDRs.Iterate()
	for it.Next(&ck, &iv) {
		h.CIDRIdentities[bpf.PrefixFrom(ck)] = iv.Identity
	}
	errs = append(errs, wrapRead("policy_cidrs", it.Err()))
	var ev bpf.PolicyEndpointValue
	it = w.dp.PolicyEndpoints.Iterate()
	for it.Next(&ek, &ev) {
		h.Endpoints[bpf.AddrFrom(ek.Addr)] = ev.Id
	}
	errs = append(errs, wrapRead("policy_endpoints", it.Err()))
	return h, errors.Join(errs...)
}

func wrapRead(name string, err error) error {
	if err != nil {
		return fmt.Errorf("read map %s: %w", name, err)
	}
	return nil
}

func (w *Writer) setIsolated(n int) error {
	if err := w.dp.PolicyState.Put(uint32(0), bpf.PolicyState{IsolatedEndpoints: uint32(n)}); err != nil {
		return fmt.Errorf("map policy_state: %w", err)
	}
	return nil
}

// mapDiff is what one map needs: entries to write and keys to delete.
type mapDiff[K comparable, V any] struct {
	m    *ebpf.Map
	name string
	puts map[K]V
	dels []K
}

// diff reads the map and compares it with want.
func diff[K comparable, V comparable](m *ebpf.Map, name string, want map[K]V) (*mapDiff[K, V], error) {
	d := &mapDiff[K, V]{m: m, name: name, puts: map[K]V{}}
	seen := make(map[K]bool, len(want))
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		seen[k] = true
		if w, ok := want[k]; !ok {
			d.dels = append(d.dels, k)
		} else if w != v {
			d.puts[k] = w
		}
	}
	for k, v := range want {
		if !seen[k] {
			d.puts[k] = v
		}
	}
	if err := it.Err(); err != nil {
		return d, fmt.Errorf("read map %s: %w", name, err)
	}
	return d, nil
}

func (d *mapDiff[K, V]) put(errs *[]error) int {
	n, full := 0, 0
	for k, v := range d.puts {
		if err := d.m.Put(k, v); err != nil {
			if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
				full++
				continue
			}
			*errs = append(*errs, fmt.Errorf("map %s (capacity %d): write: %w", d.name, d.m.MaxEntries(), err))
			continue
		}
		n++
	}
	if full > 0 {
		*errs = append(*errs, &FullError{Map: "sluice_" + d.name + "_v1", Label: d.name, Capacity: d.m.MaxEntries(),
			Setting: settings[d.name], Unwritten: full})
	}
	return n
}

// settings are the agent settings that size the policy maps.
var settings = map[string]string{
	"ipcache": "maxIPCache", "policy_cidrs": "maxPolicyCIDRs", "policy": "maxPolicyRules", "policy_endpoints": "maxEndpoints",
}

// FullError says entries were left out of a full policy map. What is left
// out fails closed: a rule not written admits nothing, an address without
// its identity is judged as the world's, an endpoint not written stays as
// it was.
type FullError struct {
	Map       string // e.g. sluice_policy_v1
	Label     string // the map in the agent's metrics: policy, ipcache, ...
	Capacity  uint32
	Setting   string // the agent setting that sizes the map
	Unwritten int    // entries that did not fit
}

func (e *FullError) Error() string {
	return fmt.Sprintf("map %s is full (capacity %d; raise %s): %d entries not written", e.Map, e.Capacity, e.Setting, e.Unwritten)
}

// FullErrors lists the *FullErrors in err as Apply returns it.
func FullErrors(err error) []*FullError {
	var out []*FullError
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range u.Unwrap() {
			out = append(out, FullErrors(e)...)
		}
	} else if fe, ok := err.(*FullError); ok {
		out = append(out, fe)
	}
	return out
}

func (d *mapDiff[K, V]) delete(errs *[]error) int {
	n := 0
	for _, k := range d.dels {
		if err := d.m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			*errs = append(*errs, fmt.Errorf("map %s: delete: %w", d.name, err))
			continue
		}
		n++
	}
	return n
}
