package mapsync

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/sluice-net/sluice/agent/internal/service/compile"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
)

// TestSourceRanges: a restricted LoadBalancer IP gets its flags and its
// ranges (one set for both scopes), packets follow them, a restart
// rewrites nothing, and lifting the restriction or deleting the frontend
// deletes the ranges.
func TestSourceRanges(t *testing.T) {
	dp, root := loadDatapath(t)
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.RecordEndpoint(1, []netip.Addr{synSource}, bpf.EndpointValue{}); err != nil {
		t.Fatal(err)
	}
	lb := "198.51.100.9:80"
	internal, external := fe(lb), fe(lb)
	external.Scope = compile.ScopeExternal
	office, pods := netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("10.244.0.0/16")
	restricted := func(ranges ...netip.Prefix) compile.Entry {
		return compile.Entry{Service: web, Kind: compile.KindLoadBalancer, Backends: backends("10.244.1.5:8080"),
			Restricted: true, SourceRanges: ranges, NodeInRanges: true}
	}
	desired := compile.Desired{internal: restricted(office, pods), external: restricted(office, pods)}
	ranges := func(t *testing.T, d *bpf.Datapath) []netip.Prefix {
		t.Helper()
		entries, err := d.LBRangeEntries()
		if err != nil {
			t.Fatal(err)
		}
		got := entries[bpf.LBFrontend{Addr: netip.MustParseAddrPort(lb), Proto: bpf.ProtoTCP}]
		slices.SortFunc(got, netip.Prefix.Compare)
		return got
	}
	flags := func(t *testing.T, f compile.Frontend) uint32 {
		t.Helper()
		var v bpf.ServiceValue
		if err := dp.Services.Lookup(serviceKey(f), &v); err != nil {
			t.Fatal(err)
		}
		return v.Flags & (bpf.ServiceSourceRanges | bpf.ServiceSourceRangesNode)
	}

	st, err := w.Sync(desired)
	if err != nil || st.RangesWritten != 2 {
		t.Fatalf("first sync: %+v %v, want 2 ranges written", st, err)
	}
	if got := ranges(t, dp); !slices.Equal(got, []netip.Prefix{pods, office}) {
		t.Errorf("ranges %v, want [%s %s]", got, pods, office)
	}
	for _, f := range []compile.Frontend{internal, external} {
		if got := flags(t, f); got != bpf.ServiceSourceRanges|bpf.ServiceSourceRangesNode {
			t.Errorf("%s flags %#x, want source ranges with the node", f, got)
		}
	}
	if ret, _ := synTo(t, dp, lb); ret != 0 {
		t.Errorf("pod in the ranges: verdict %d, want translated", ret)
	}

	desired[internal], desired[external] = restricted(office), restricted(office)
	st, err = w.SyncTouched(desired, []compile.Frontend{internal, external})
	if err != nil || st.RangesWritten != 0 || st.RangesDeleted != 1 {
		t.Errorf("range removed: %+v %v, want 1 range deleted", st, err)
	}
	if ret, _ := synTo(t, dp, lb); ret != 2 {
		t.Errorf("pod no longer in the ranges: verdict %d, want dropped", ret)
	}

	dp2, w2 := restart(t, root)
	if st, err := w2.Sync(desired); err != nil || st.Changed() {
		t.Errorf("after a restart: %+v %v, want nothing written", st, err)
	}

	lifted := restricted()
	lifted.Restricted, lifted.NodeInRanges = false, false
	desired[internal], desired[external] = lifted, lifted
	if st, err := w2.Sync(desired); err != nil || st.RangesDeleted != 1 || st.ServicesWritten != 2 {
		t.Errorf("restriction lifted: %+v %v, want the range and both entries rewritten", st, err)
	}
	if got := flags(t, internal); got != 0 || len(ranges(t, dp2)) != 0 {
		t.Errorf("restriction lifted: flags %#x, ranges %v left", got, ranges(t, dp2))
	}
	if ret, _ := synTo(t, dp2, lb); ret != 0 {
		t.Errorf("restriction lifted: verdict %d, want translated", ret)
	}

	desired[internal], desired[external] = restricted(pods), restricted(pods)
	if _, err := w2.Sync(desired); err != nil || len(ranges(t, dp2)) != 1 {
		t.Fatalf("restricted again: %v, ranges %v", err, ranges(t, dp2))
	}
	if st, err := w2.Sync(compile.Desired{}); err != nil || st.RangesDeleted != 1 || len(ranges(t, dp2)) != 0 {
		t.Errorf("frontend deleted: %+v %v, ranges %v left", st, err, ranges(t, dp2))
	}
}

// TestSourceRangesMapFull: ranges that do not fit the map are reported,
// and their frontend stays restricted: a client whose range is missing is
// refused (never let in by a half-written set), one whose range fit is
// served.
func TestSourceRangesMapFull(t *testing.T) {
	dp := bpftest.Load(t, bpf.Config{MaxServices: 4, MaxBackends: 64})
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.RecordEndpoint(1, []netip.Addr{synSource}, bpf.EndpointValue{}); err != nil {
		t.Fatal(err)
	}
	lb := "198.51.100.9:80"
	var ranges []netip.Prefix
	for _, r := range []string{"1.0.0.0/8", "2.0.0.0/8", "3.0.0.0/8", "4.0.0.0/8", "5.0.0.0/8", "10.244.0.0/16"} {
		ranges = append(ranges, netip.MustParsePrefix(r))
	}
	e := compile.Entry{Service: web, Kind: compile.KindLoadBalancer, Backends: backends("10.244.1.5:8080"),
		Restricted: true, SourceRanges: ranges}
	st, err := w.Sync(compile.Desired{fe(lb): e})
	if err == nil || st.RangesWritten != 4 {
		t.Fatalf("6 ranges into a map of 4: %+v %v, want 4 written and an error", st, err)
	}
	if !strings.Contains(err.Error(), "sluice_lb_ranges_v1") {
		t.Errorf("error %q does not name the map", err)
	}
	// synSource (10.244.0.2) is in the last range, which did not fit.
	if ret, _ := synTo(t, dp, lb); ret != 2 {
		t.Errorf("client whose range is missing: verdict %d, want dropped", ret)
	}
	entries, err := dp.LBRangeEntries()
	if err != nil {
		t.Fatal(err)
	}
	if got := entries[bpf.LBFrontend{Addr: netip.MustParseAddrPort(lb), Proto: bpf.ProtoTCP}]; len(got) != 4 {
		t.Errorf("ranges in the map: %v, want the 4 that fit", got)
	}
}
