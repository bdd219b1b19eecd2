package mapsync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/agent/internal/service/compile"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
)

// restart loads the datapath again from the pins under root and restores
// a writer from it, as a restarted agent does.
func restart(t *testing.T, root string) (*bpf.Datapath, *Writer) {
	t.Helper()
	dp, err := bpf.Load(bpf.Config{PinRoot: root, MaglevSize: 251, MaxServices: 1024, MaxBackends: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	return dp, w
}

func loadDatapath(t *testing.T) (*bpf.Datapath, string) {
	t.Helper()
	dp := bpftest.Load(t, bpf.Config{MaxServices: 1024, MaxBackends: 4096})
	return dp, dp.PinRoot()
}

func fe(s string) compile.Frontend {
	return compile.Frontend{Addr: netip.MustParseAddrPort(s), Proto: bpf.ProtoTCP, Scope: compile.ScopeInternal}
}

func backends(addrs ...string) []compile.Backend {
	var out []compile.Backend
	for _, a := range addrs {
		out = append(out, compile.Backend{Addr: netip.MustParseAddrPort(a)})
	}
	return out
}

var web = types.NamespacedName{Namespace: "ns", Name: "web"}

// dump reads the maps back as the datapath sees them: each service key with
// its backend count and the set of backend addresses its table reaches.
func dump(t *testing.T, dp *bpf.Datapath) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	var k bpf.ServiceKey
	var v bpf.ServiceValue
	it := dp.Services.Iterate()
	for it.Next(&k, &v) {
		name := netip.AddrPortFrom(bpf.AddrFrom(k.Addr), bpf.PortFrom(k.Port)).String()
		var addrs []string
		if table, ok, err := dp.MaglevTable(bpf.MaglevClassOf(v.Flags), v.Id); err == nil && ok {
			seen := map[uint32]bool{}
			for _, id := range table {
				if seen[id] {
					continue
				}
				seen[id] = true
				var be bpf.BackendValue
				if err := dp.Backends.Lookup(id, &be); err != nil {
					t.Errorf("service %s: table names backend %d, which is not in the backend map", name, id)
					continue
				}
				addrs = append(addrs, netip.AddrPortFrom(bpf.AddrFrom(be.Addr), bpf.PortFrom(be.Port)).String())
			}
		}
		slices.Sort(addrs)
		if int(v.BackendCount) != len(addrs) {
			t.Errorf("service %s: backend_count %d, table reaches %d", name, v.BackendCount, len(addrs))
		}
		out[name] = addrs
	}
	return out
}

func TestSyncAppliesOnlyTheDifference(t *testing.T) {
	dp, _ := loadDatapath(t)
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	desired := compile.Desired{
		fe("10.96.0.10:80"): {Service: web, Backends: backends("10.244.1.5:8080", "10.244.1.6:8080", "10.244.2.7:8080")},
		fe("10.96.0.11:80"): {Service: web},
	}
	st, err := w.Sync(desired)
	if err != nil {
		t.Fatal(err)
	}
	if st.ServicesWritten != 2 || st.BackendsWritten != 3 || st.TablesWritten != 1 {
		t.Errorf("first sync: %+v", st)
	}
	got := dump(t, dp)
	if want := []string{"10.244.1.5:8080", "10.244.1.6:8080", "10.244.2.7:8080"}; !slices.Equal(got["10.96.0.10:80"], want) {
		t.Errorf("10.96.0.10:80 reaches %v, want %v", got["10.96.0.10:80"], want)
	}
	if len(got["10.96.0.11:80"]) != 0 {
		t.Errorf("service without endpoints reaches %v", got["10.96.0.11:80"])
	}

	if st, err := w.Sync(desired); err != nil || st.Changed() {
		t.Errorf("unchanged state rewrote maps: %+v, %v", st, err)
	}

	// One endpoint replaced: one backend in, one out, one table, and the
	// service entry (same count) untouched.
	desired[fe("10.96.0.10:80")] = compile.Entry{Service: web, Backends: backends("10.244.1.5:8080", "10.244.1.6:8080", "10.244.3.9:8080")}
	st, err = w.Sync(desired)
	if err != nil {
		t.Fatal(err)
	}
	if st.BackendsWritten != 1 || st.BackendsDeleted != 1 || st.TablesWritten != 1 || st.ServicesWritten != 0 {
		t.Errorf("endpoint replaced: %+v", st)
	}
	if want := []string{"10.244.1.5:8080", "10.244.1.6:8080", "10.244.3.9:8080"}; !slices.Equal(dump(t, dp)["10.96.0.10:80"], want) {
		t.Errorf("after replacement: %v", dump(t, dp)["10.96.0.10:80"])
	}

	delete(desired, fe("10.96.0.10:80"))
	st, err = w.Sync(desired)
	if err != nil {
		t.Fatal(err)
	}
	if st.ServicesDeleted != 1 || st.BackendsDeleted != 3 || st.Services != 1 || st.Backends != 0 {
		t.Errorf("service deleted: %+v", st)
	}
	if n := maglevTables(t, dp); n != 0 {
		t.Errorf("%d Maglev tables installed, want none (the remaining service has no backends)", n)
	}
}

// TestRestartRewritesNothing: a new writer on the pinned maps (agent
// restart) finds the state right and leaves it alone, pruning only orphans.
func TestRestartRewritesNothing(t *testing.T) {
	dp, root := loadDatapath(t)
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	desired := compile.Desired{
		fe("10.96.0.10:80"): {Service: web, Backends: backends("10.244.1.5:8080", "10.244.1.6:8080"), AffinityTimeout: 60},
		fe("10.96.0.12:80"): {Service: web, Backends: backends("10.244.1.5:8080"), LocalOnly: true},
	}
	if _, err := w.Sync(desired); err != nil {
		t.Fatal(err)
	}
	// An orphan left by a crash between writes.
	if err := dp.Backends.Put(uint32(999), bpf.BackendValue{}); err != nil {
		t.Fatal(err)
	}
	before := dump(t, dp)

	dp2, w2 := restart(t, root)
	st, err := w2.Sync(desired)
	if err != nil {
		t.Fatal(err)
	}
	if st.ServicesWritten != 0 || st.TablesWritten != 0 || st.BackendsWritten != 0 || st.BackendsDeleted != 1 {
		t.Errorf("after restart: %+v, want only the orphan backend deleted", st)
	}
	after := dump(t, dp2)
	for k, v := range before {
		if !slices.Equal(after[k], v) {
			t.Errorf("%s changed across restart: %v -> %v", k, v, after[k])
		}
	}
	// What the service entries say, read back: local-only and affinity.
	for name, want := range map[string]bpf.ServiceValue{
		// Small services: tables of the smallest size class.
		"10.96.0.10:80": {AffinityTimeout: 60, Flags: bpf.MaglevClass(1).Flags()},
		"10.96.0.12:80": {Flags: bpf.ServiceLocalOnly | bpf.MaglevClass(1).Flags()},
	} {
		var got bpf.ServiceValue
		ap := netip.MustParseAddrPort(name)
		if err := dp2.Services.Lookup(bpf.ServiceKey{Addr: bpf.Addr(ap.Addr()), Port: bpf.Port(ap.Port()), Proto: bpf.ProtoTCP}, &got); err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		if got.Flags != want.Flags || got.AffinityTimeout != want.AffinityTimeout {
			t.Errorf("service %s after restart: flags %#x affinity %d, want flags %#x affinity %d", name, got.Flags, got.AffinityTimeout, want.Flags, want.AffinityTimeout)
		}
	}
}

// TestDatapathFollowsSync: packets follow what Sync wrote.
func TestDatapathFollowsSync(t *testing.T) {
	dp, _ := loadDatapath(t)
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	desired := compile.Desired{
		fe("10.96.0.10:80"): {Service: web, Backends: backends("10.244.1.5:8080", "10.244.1.6:8080")},
		fe("10.96.0.11:80"): {Service: web},
	}
	if _, err := w.Sync(desired); err != nil {
		t.Fatal(err)
	}
	// from_pod lets a pod send only from its own addresses: record the
	// client as the CNI does, behind the device test runs use (loopback,
	// ifindex 1).
	if err := dp.RecordEndpoint(1, []netip.Addr{synSource}, bpf.EndpointValue{}); err != nil {
		t.Fatal(err)
	}
	ret, out := synTo(t, dp, "10.96.0.10:80")
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(out[30:34])), binary.BigEndian.Uint16(out[36:38]))
	if ret != 0 || (dst.String() != "10.244.1.5:8080" && dst.String() != "10.244.1.6:8080") {
		t.Errorf("SYN to the service: verdict %d, sent to %v", ret, dst)
	}
	if ret, _ := synTo(t, dp, "10.96.0.11:80"); ret != 7 {
		t.Errorf("SYN to a service without endpoints: verdict %d, want redirect (RST back to the pod)", ret)
	}
}

// synSource is the pod synTo sends from.
var synSource = netip.MustParseAddr("10.244.0.2")

func synTo(t *testing.T, dp *bpf.Datapath, vip string) (uint32, []byte) {
	t.Helper()
	dst := netip.MustParseAddrPort(vip)
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: synSource.AsSlice(), DstIP: dst.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: layers.TCPPort(dst.Port()), SYN: true, Window: 1000}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
		t.Fatal(err)
	}
	opts := &ebpf.RunOptions{Data: buf.Bytes(), DataOut: make([]byte, 256)}
	ret, err := dp.FromPod.Run(opts)
	if err != nil {
		t.Fatal(err)
	}
	return ret, opts.DataOut
}

// TestSyncTouched: only the touched frontends are compared and written;
// a touched frontend missing from desired is deleted.
func TestSyncTouched(t *testing.T) {
	dp, _ := loadDatapath(t)
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	a, b := fe("10.96.0.10:80"), fe("10.96.0.11:80")
	desired := compile.Desired{
		a: {Service: web, Backends: backends("10.244.1.5:8080")},
		b: {Service: web, Backends: backends("10.244.1.6:8080")},
	}
	if _, err := w.Sync(desired); err != nil {
		t.Fatal(err)
	}
	// b changes but is not touched: nothing is written for it.
	desired[b] = compile.Entry{Service: web, Backends: backends("10.244.1.6:8080", "10.244.1.7:8080")}
	if st, err := w.SyncTouched(desired, []compile.Frontend{a}); err != nil || st.Changed() {
		t.Errorf("untouched change was written: %+v %v", st, err)
	}
	st, err := w.SyncTouched(desired, []compile.Frontend{b})
	if err != nil || st.BackendsWritten != 1 || st.TablesWritten != 1 || st.ServicesWritten != 1 {
		t.Errorf("touched change: %+v %v", st, err)
	}
	delete(desired, a)
	st, err = w.SyncTouched(desired, []compile.Frontend{a})
	if err != nil || st.ServicesDeleted != 1 || st.BackendsDeleted != 1 || st.Services != 1 {
		t.Errorf("touched deletion: %+v %v", st, err)
	}
	if got := dump(t, dp); len(got) != 1 || len(got["10.96.0.11:80"]) != 2 {
		t.Errorf("maps hold %v", got)
	}
}

// backendIDs reads the backend map: each endpoint's ID and value, by the
// service ID the backend was allocated for.
func backendIDs(t *testing.T, dp *bpf.Datapath) map[uint32]map[string]uint32 {
	t.Helper()
	out := map[uint32]map[string]uint32{}
	var id uint32
	var v bpf.BackendValue
	it := dp.Backends.Iterate()
	for it.Next(&id, &v) {
		if out[v.SvcId] == nil {
			out[v.SvcId] = map[string]uint32{}
		}
		out[v.SvcId][endpoint(v).String()] = id
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func serviceID(t *testing.T, dp *bpf.Datapath, vip string) uint32 {
	t.Helper()
	ap := netip.MustParseAddrPort(vip)
	var v bpf.ServiceValue
	if err := dp.Services.Lookup(bpf.ServiceKey{Addr: bpf.Addr(ap.Addr()), Port: bpf.Port(ap.Port()), Proto: bpf.ProtoTCP}, &v); err != nil {
		t.Fatalf("service %s: %v", vip, err)
	}
	return v.Id
}

// TestTerminatingBackendDrains: a terminating endpoint keeps its backend ID
// and entry (flagged terminating) while it is listed, out of the Maglev
// table; across a writer restart too; and goes when it leaves.
func TestTerminatingBackendDrains(t *testing.T) {
	dp, root := loadDatapath(t)
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	vip := fe("10.96.0.10:80")
	desired := compile.Desired{vip: {Service: web, Backends: backends("10.244.1.5:8080", "10.244.1.6:8080", "10.244.1.7:8080")}}
	if _, err := w.Sync(desired); err != nil {
		t.Fatal(err)
	}
	svcID := serviceID(t, dp, "10.96.0.10:80")
	before := backendIDs(t, dp)[svcID]
	drainingID := before["10.244.1.7:8080"]

	// 10.244.1.7 terminates: out of the table, still in the backend map.
	draining := compile.Entry{Service: web, Backends: backends("10.244.1.5:8080", "10.244.1.6:8080"),
		Draining: []compile.Backend{{Addr: netip.MustParseAddrPort("10.244.1.7:8080"), Terminating: true}}}
	desired[vip] = draining
	st, err := w.Sync(desired)
	if err != nil {
		t.Fatal(err)
	}
	if st.BackendsDeleted != 0 || st.BackendsWritten != 1 || st.TablesWritten != 1 {
		t.Errorf("endpoint terminating: %+v, want its backend rewritten (flag) and the table rebuilt", st)
	}
	check := func(dp *bpf.Datapath, when string) {
		t.Helper()
		if got, want := dump(t, dp)["10.96.0.10:80"], []string{"10.244.1.5:8080", "10.244.1.6:8080"}; !slices.Equal(got, want) {
			t.Errorf("%s: table reaches %v, want %v", when, got, want)
		}
		if got := backendIDs(t, dp)[svcID]; !maps.Equal(got, before) {
			t.Errorf("%s: backend IDs %v, want %v (unchanged)", when, got, before)
		}
		var be bpf.BackendValue
		if err := dp.Backends.Lookup(drainingID, &be); err != nil || be.Flags&bpf.BackendTerminating == 0 || be.SvcId != svcID {
			t.Errorf("%s: draining backend %d: %+v %v, want terminating, service %d", when, drainingID, be, err, svcID)
		}
	}
	check(dp, "draining")

	// The agent restarts: the draining backend is in no table, and keeps
	// its ID all the same.
	dp2, w2 := restart(t, root)
	if st, err := w2.Sync(desired); err != nil || st.Changed() {
		t.Errorf("sync after restart: %+v %v, want nothing written or deleted", st, err)
	}
	check(dp2, "after restart")

	// The endpoint leaves the slice: its backend goes.
	desired[vip] = compile.Entry{Service: web, Backends: backends("10.244.1.5:8080", "10.244.1.6:8080")}
	st, err = w2.Sync(desired)
	if err != nil || st.BackendsDeleted != 1 || st.TablesWritten != 0 {
		t.Errorf("endpoint gone: %+v %v, want one backend deleted, no table", st, err)
	}
	var be bpf.BackendValue
	if err := dp2.Backends.Lookup(drainingID, &be); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("backend of the endpoint gone: %+v %v, want it deleted", be, err)
	}
}

// TestRestoreByServiceID: at restore a backend belongs to the service its
// SvcId names; one naming no service is an orphan and is deleted.
func TestRestoreByServiceID(t *testing.T) {
	dp, root := loadDatapath(t)
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	vip := fe("10.96.0.10:80")
	desired := compile.Desired{vip: {Service: web,
		Draining: []compile.Backend{{Addr: netip.MustParseAddrPort("10.244.1.7:8080"), Terminating: true}}}}
	if _, err := w.Sync(desired); err != nil {
		t.Fatal(err)
	}
	// Left by a crash: a backend of a service ID never written.
	orphan := bpf.BackendValue{Addr: bpf.Addr(netip.MustParseAddr("10.244.1.7")), Port: bpf.Port(8080), SvcId: 77}
	if err := dp.Backends.Put(uint32(999), orphan); err != nil {
		t.Fatal(err)
	}
	dp2, w2 := restart(t, root)
	st, err := w2.Sync(desired)
	if err != nil || st.BackendsDeleted != 1 || st.BackendsWritten != 0 || st.Backends != 1 {
		t.Errorf("after restart: %+v %v, want the orphan deleted and the draining backend kept", st, err)
	}
	if err := dp2.Backends.Lookup(uint32(999), &orphan); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("orphan backend: %v, want it deleted", err)
	}
}

var other = types.NamespacedName{Namespace: "ns", Name: "other"}

// count is the number of entries in m.
func count(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	n := 0
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// maglevTables counts the Maglev tables of every size class.
func maglevTables(t *testing.T, dp *bpf.Datapath) int {
	t.Helper()
	n := 0
	for _, m := range dp.MaglevMaps {
		n += count(t, m)
	}
	return n
}

// state is everything a failed sync must leave as it was: the maps as the
// datapath reads them, their sizes and the ID pools.
func state(t *testing.T, w *Writer) string {
	t.Helper()
	return fmt.Sprintf("maps %v; entries services=%d backends=%d maglev=%d; IDs in use services=%d backends=%d; view services=%d backends=%d orphans=%d",
		dump(t, w.dp), count(t, w.dp.Services), count(t, w.dp.Backends), maglevTables(t, w.dp),
		len(w.svcIDs.inUse), len(w.beIDs.inUse), len(w.services), len(w.backends), len(w.orphans))
}

// fullError checks err holds exactly one *FullError, for svc in map m,
// and that its text names the map and the setting to raise.
func fullError(t *testing.T, err error, svc types.NamespacedName, m, setting string) *FullError {
	t.Helper()
	fes := FullErrors(err)
	if len(fes) != 1 || fes[0].Service != svc || fes[0].Map != m || fes[0].Setting != setting {
		t.Fatalf("sync error %v: want one map-full error of %s for %s", err, m, svc)
	}
	if msg := err.Error(); !strings.Contains(msg, m) || !strings.Contains(msg, setting) {
		t.Errorf("error %q does not name map %s and setting %s", msg, m, setting)
	}
	return fes[0]
}

// TestBackendMapFull: a Service that does not fit in the backend map is
// not programmed, names the map, leaves the Service that fits intact and
// takes nothing, however often it is retried; once room is made it fits.
func TestBackendMapFull(t *testing.T) {
	dp := bpftest.Load(t, bpf.Config{MaxServices: 16, MaxBackends: 4})
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	a, b := fe("10.96.0.10:80"), fe("10.96.0.11:80")
	desired := compile.Desired{a: {Service: web, Backends: backends("10.244.1.5:8080", "10.244.1.6:8080", "10.244.1.7:8080")}}
	if _, err := w.Sync(desired); err != nil {
		t.Fatal(err)
	}
	before := state(t, w)
	desired[b] = compile.Entry{Service: other, Backends: backends("10.244.2.5:8080", "10.244.2.6:8080", "10.244.2.7:8080")}
	for i := range 3 {
		_, err := w.Sync(desired)
		fe := fullError(t, err, other, "sluice_backends_v2", "maxBackends")
		if fe.Capacity != 4 || fe.Frontend != b {
			t.Errorf("full error %+v: want capacity 4, frontend %s", fe, b)
		}
		if got := state(t, w); got != before {
			t.Errorf("failed sync %d changed the state:\n got %s\nwant %s", i, got, before)
		}
	}
	delete(desired, a)
	if _, err := w.Sync(desired); err != nil {
		t.Fatalf("sync after the first Service went: %v", err)
	}
	if got, want := dump(t, dp), map[string][]string{"10.96.0.11:80": {"10.244.2.5:8080", "10.244.2.6:8080", "10.244.2.7:8080"}}; !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("maps hold %v, want %v", got, want)
	}
}

// TestFailedBackendWriteIsUndone: when the kernel refuses backends (the
// map is fuller than the writer's IDs say), what was written of the
// frontend is deleted again and its IDs returned.
func TestFailedBackendWriteIsUndone(t *testing.T) {
	dp := bpftest.Load(t, bpf.Config{MaxServices: 16, MaxBackends: 4})
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	w.beIDs = newIDPool(64) // more IDs than the map holds
	a, b := fe("10.96.0.10:80"), fe("10.96.0.11:80")
	desired := compile.Desired{a: {Service: web, Backends: backends("10.244.1.5:8080", "10.244.1.6:8080", "10.244.1.7:8080")}}
	if _, err := w.Sync(desired); err != nil {
		t.Fatal(err)
	}
	before := state(t, w)
	desired[b] = compile.Entry{Service: other, Backends: backends("10.244.2.5:8080", "10.244.2.6:8080")}
	for range 2 {
		_, err := w.Sync(desired)
		if fe := fullError(t, err, other, "sluice_backends_v2", "maxBackends"); !errors.Is(fe, unix.E2BIG) {
			t.Errorf("full error %v: want the kernel's E2BIG", fe)
		}
		if got := state(t, w); got != before {
			t.Errorf("failed sync changed the state:\n got %s\nwant %s", got, before)
		}
	}
}

// TestFailedServiceWriteIsUndone: when the service entry of a new frontend
// cannot be written, its table and backends, written before it, are
// deleted again and its IDs returned.
func TestFailedServiceWriteIsUndone(t *testing.T) {
	dp := bpftest.Load(t, bpf.Config{MaxServices: 2, MaxBackends: 64})
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	w.svcIDs = newIDPool(64) // more IDs than the map holds
	desired := compile.Desired{fe("10.96.0.10:80"): {Service: web}, fe("10.96.0.11:80"): {Service: web}}
	if _, err := w.Sync(desired); err != nil {
		t.Fatal(err)
	}
	before := state(t, w)
	desired[fe("10.96.0.12:80")] = compile.Entry{Service: other, Backends: backends("10.244.2.5:8080", "10.244.2.6:8080")}
	for range 2 {
		_, err := w.Sync(desired)
		fullError(t, err, other, "sluice_services_v1", "maxServices")
		if got := state(t, w); got != before {
			t.Errorf("failed sync changed the state:\n got %s\nwant %s", got, before)
		}
	}
}
