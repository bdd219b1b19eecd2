package mapsync

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/sluice-net/sluice/agent/internal/service/compile"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
)

// TestFrontendAddrs: an address is marked services-only while any of its
// external frontends says so, through full and touched syncs and across
// a restart, and unmarked when the last goes; NodePorts and internal
// frontends never mark one.
func TestFrontendAddrs(t *testing.T) {
	dp, root := loadDatapath(t)
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	ext := func(s string, proto uint8) compile.Frontend {
		return compile.Frontend{Addr: netip.MustParseAddrPort(s), Proto: proto, Scope: compile.ScopeExternal}
	}
	entry := func(servicesOnly bool) compile.Entry {
		return compile.Entry{Service: web, Kind: compile.KindLoadBalancer, Backends: backends("10.244.1.5:8080"), ServicesOnly: servicesOnly}
	}
	lbTCP, lbUDP := ext("198.51.100.9:80", bpf.ProtoTCP), ext("198.51.100.9:53", bpf.ProtoUDP)
	nodePort := ext("192.168.1.10:30080", bpf.ProtoTCP)
	addrs := func(t *testing.T, d *bpf.Datapath) []netip.Addr {
		t.Helper()
		got, err := d.FrontendAddrList()
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(got, netip.Addr.Compare)
		return got
	}
	lb := []netip.Addr{netip.MustParseAddr("198.51.100.9")}

	desired := compile.Desired{lbTCP: entry(true), fe("198.51.100.9:80"): entry(false), nodePort: entry(false)}
	if st, err := w.Sync(desired); err != nil || st.FrontendAddrsWritten != 1 {
		t.Fatalf("first sync: %+v %v, want one address marked", st, err)
	}
	if got := addrs(t, dp); !slices.Equal(got, lb) {
		t.Fatalf("marked %v, want %v (not the NodePort's)", got, lb)
	}

	desired[lbUDP] = entry(true)
	if st, err := w.SyncTouched(desired, []compile.Frontend{lbUDP}); err != nil || st.FrontendAddrsWritten != 0 {
		t.Errorf("a second frontend on the address: %+v %v, want nothing marked again", st, err)
	}

	dp2, w2 := restart(t, root)
	if st, err := w2.Sync(desired); err != nil || st.Changed() {
		t.Errorf("after a restart: %+v %v, want nothing written", st, err)
	}

	delete(desired, lbTCP)
	if st, err := w2.SyncTouched(desired, []compile.Frontend{lbTCP}); err != nil || st.FrontendAddrsDeleted != 0 {
		t.Errorf("one of two frontends gone: %+v %v, want the address kept", st, err)
	}
	if got := addrs(t, dp2); !slices.Equal(got, lb) {
		t.Errorf("one of two frontends gone: marked %v, want %v", got, lb)
	}
	delete(desired, lbUDP)
	if st, err := w2.SyncTouched(desired, []compile.Frontend{lbUDP}); err != nil || st.FrontendAddrsDeleted != 1 {
		t.Errorf("the last frontend gone: %+v %v, want the address unmarked", st, err)
	}
	if got := addrs(t, dp2); len(got) != 0 {
		t.Errorf("the last frontend gone: marked %v, want none", got)
	}

	desired[lbTCP] = entry(true)
	if _, err := w2.Sync(desired); err != nil || len(addrs(t, dp2)) != 1 {
		t.Fatalf("marked again: %v, %v", err, addrs(t, dp2))
	}
	desired[lbTCP] = entry(false) // the address became one of the node's
	if st, err := w2.Sync(desired); err != nil || st.FrontendAddrsDeleted != 1 || len(addrs(t, dp2)) != 0 {
		t.Errorf("no longer services-only: %+v %v, marked %v", st, err, addrs(t, dp2))
	}
}

// TestFrontendAddrsFollowWrites: an address is marked only once a
// frontend of it is written: one whose entry did not fit a full service
// map stays unmarked, or its own Service port would be dropped.
func TestFrontendAddrsFollowWrites(t *testing.T) {
	dp := bpftest.Load(t, bpf.Config{MaxServices: 4, MaxBackends: 64})
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	desired := compile.Desired{}
	for i := range 6 { // more than the map holds
		f := compile.Frontend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i)}), 80),
			Proto: bpf.ProtoTCP, Scope: compile.ScopeExternal}
		desired[f] = compile.Entry{Service: web, Kind: compile.KindLoadBalancer, Backends: backends("10.244.1.5:8080"), ServicesOnly: true}
	}
	if _, err := w.Sync(desired); err == nil {
		t.Fatal("six frontends in a map of four: no error")
	}
	marked, err := dp.FrontendAddrList()
	if err != nil {
		t.Fatal(err)
	}
	written := 0
	for f := range desired {
		var v bpf.ServiceValue
		if dp.Services.Lookup(serviceKey(f), &v) == nil {
			written++
		} else if slices.Contains(marked, f.Addr.Addr()) {
			t.Errorf("%s is marked, but its frontend %s is not written", f.Addr.Addr(), f)
		}
	}
	if len(marked) != written || written == 0 {
		t.Errorf("%d addresses marked for %d frontends written", len(marked), written)
	}
}
