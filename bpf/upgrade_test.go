package bpf

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/bpf/maglev"
	"github.com/sluice-net/sluice/internal/testutil/bpffs"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

// previousRelease is the datapath object of the release before the map
// layout change this version migrates (backends_v1, affinity_v1, ct_v1):
// `git show 619c09b:bpf/datapath_bpfel.o`.
const previousRelease = "testdata/datapath-619c09b.o"

// loadPreviousRelease loads previousRelease the way that release's agent
// did (its constants and map sizes) and pins it under root, returning a
// Datapath whose programs are the old ones and whose maps are those the
// old and new layouts share.
func loadPreviousRelease(t *testing.T, root string, cfg Config) (old *Datapath, backends, affinity *ebpf.Map) {
	t.Helper()
	spec, err := ebpf.LoadCollectionSpec(previousRelease)
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.withDefaults()
	for name, v := range map[string]any{
		"maglev_size":         cfg.MaglevSize,
		"ct_timeout_syn_ns":   uint64(cfg.CTTimeoutSYN),
		"ct_timeout_tcp_ns":   uint64(cfg.CTTimeoutTCP),
		"ct_timeout_close_ns": uint64(cfg.CTTimeoutClose),
		"ct_timeout_other_ns": uint64(cfg.CTTimeoutOther),
		"hairpin_addr4":       Addr(HairpinAddr4),
		"hairpin_addr6":       Addr(HairpinAddr6),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			t.Fatalf("set %s: %v", name, err)
		}
	}
	for name, n := range map[string]uint32{
		"sluice_services_v1": cfg.MaxServices, "sluice_backends_v1": cfg.MaxBackends,
		"sluice_maglev_v1": cfg.MaxServices, "sluice_ct_v1": cfg.MaxConntrackTCP,
		"sluice_affinity_v1": cfg.MaxAffinity, "sluice_endpoints_v1": cfg.MaxEndpoints,
		"sluice_policy_endpoints_v1": cfg.MaxEndpoints, "sluice_ipcache_v1": cfg.MaxIPCache,
		"sluice_policy_cidrs_v1": cfg.MaxPolicyCIDRs, "sluice_policy_v1": cfg.MaxPolicyRules,
	} {
		spec.Maps[name].MaxEntries = n
	}
	spec.Maps["sluice_maglev_v1"].ValueSize = cfg.MaglevSize * 4
	for _, dir := range []string{mapsDir(root), progsDir(root), linksDir(root)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: mapsDir(root)}})
	if err != nil {
		t.Fatalf("load the previous release's datapath: %v", err)
	}
	t.Cleanup(coll.Close)
	old = &Datapath{
		FromPod: coll.Programs["from_pod"], ToPod: coll.Programs["to_pod"],
		Services: coll.Maps["sluice_services_v1"], MaglevMaps: [maglevClasses]*ebpf.Map{coll.Maps["sluice_maglev_v1"]},
		Endpoints: coll.Maps["sluice_endpoints_v1"], EndpointSlots: coll.Maps["sluice_endpoint_slots_v1"],
		root: root,
	}
	return old, coll.Maps["sluice_backends_v1"], coll.Maps["sluice_affinity_v1"]
}

// TestUpgradeTakesOverRunningPods is an upgrade on a live node: the
// previous release's agent pinned its maps and its CNI attached its
// programs to a pod's veth; a client pod holds a TCP connection through a
// ClusterIP. Then this version loads (migrating the maps whose layout
// changed), re-attaches and finishes the migration. The established
// connection must keep working, the veth must run this version's
// program, a new connection must work, and the old maps' pins must be
// gone.
func TestUpgradeTakesOverRunningPods(t *testing.T) {
	bpffs.Require(t)
	root := bpffs.Root(t)
	cfg := Config{PinRoot: root, MaglevSize: 251}
	old, oldBackends, oldAffinity := loadPreviousRelease(t, root, cfg)
	pn := newPodNode(t, old, 2)
	client, server := pn.pods[0], pn.pods[1]

	// The service, as the previous agent wrote it: backend, table, entry.
	vip := ap("10.96.0.10:80")
	backend := netip.AddrPortFrom(server.addr4, 8080)
	const svcID, backendID = 7, 42
	if err := oldBackends.Put(uint32(backendID), backendValueV1{Addr: Addr(backend.Addr()), Port: Port(backend.Port())}); err != nil {
		t.Fatal(err)
	}
	idx, err := maglev.Table([]string{backend.String()}, 251)
	if err != nil {
		t.Fatal(err)
	}
	table := make([]uint32, len(idx))
	for i := range table {
		table[i] = backendID
	}
	if err := old.SetMaglevTable(MaglevLegacy, svcID, table); err != nil {
		t.Fatal(err)
	}
	if err := old.Services.Put(ServiceKey{Addr: Addr(vip.Addr()), Port: Port(vip.Port()), Proto: unix.IPPROTO_TCP},
		ServiceValue{Id: svcID, BackendCount: 1}); err != nil {
		t.Fatal(err)
	}

	// A client's affinity, as the previous release kept it: a bare ID.
	affinityKey := AffinityKey{Client: Addr(netip.MustParseAddr("10.200.9.9")), SvcId: svcID}
	if err := oldAffinity.Put(affinityKey, affinityValueV1{LastUsedNs: MonotonicNow(), BackendId: backendID}); err != nil {
		t.Fatal(err)
	}
	serveEcho(t, server.ns, backend.Port())
	conn := dialIn(t, client.ns, vip)
	defer conn.Close()
	echo := lineEcho(conn)
	if err := echo("before the upgrade"); err != nil {
		t.Fatalf("the previous release does not carry the connection: %v", err)
	}
	oldProg := programOn(t, root, "hpod1_ingress")

	// The upgrade, as the agent does it at start.
	d, err := Load(cfg)
	if err != nil {
		t.Fatalf("load over the previous release's pins: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	if d.Migrated.Backends != 1 || d.Migrated.Conntrack != 2 || d.Migrated.Affinity != 1 {
		t.Errorf("migrated %+v, want the backend, the connection's 2 conntrack entries and the affinity", d.Migrated)
	}
	var av AffinityValue
	if err := d.Affinity.Lookup(affinityKey, &av); err != nil || av.BackendId != backendID || AddrFrom(av.Addr) != backend.Addr() || PortFrom(av.Port) != backend.Port() {
		t.Errorf("migrated affinity %+v (%v), want backend %d at %v", av, err, backendID, backend)
	}
	st, err := d.Reattach()
	if err != nil {
		t.Fatalf("reattach: %v", err)
	}
	if st.Updated != 4 {
		t.Errorf("reattach: %+v, want both hooks of both veths updated", st)
	}
	fin, err := d.FinishMigration()
	if err != nil {
		t.Fatalf("finish migration: %v", err)
	}
	// The previous release's drop event ring has nothing to carry over:
	// this version's flow events have a ring of their own.
	for _, name := range []string{legacyBackendsV1, legacyAffinityV1, legacyCTV1, "sluice_events_v2"} {
		if _, err := os.Stat(filepath.Join(mapsDir(root), name)); !os.IsNotExist(err) {
			t.Errorf("old map %s still pinned after the migration (%+v)", name, fin)
		}
	}

	newProg := programOn(t, root, "hpod1_ingress")
	if want, _ := mustInfo(t, d.FromPod).ID(); newProg != want || newProg == oldProg {
		t.Errorf("the pod's veth runs program %d (was %d), want this version's from_pod %d", newProg, oldProg, want)
	}
	for i := range 3 {
		if err := echo(fmt.Sprintf("after the upgrade %d", i)); err != nil {
			t.Fatalf("the established connection broke across the upgrade: %v", err)
		}
	}
	fresh := dialIn(t, client.ns, vip)
	defer fresh.Close()
	if err := lineEcho(fresh)("a new connection"); err != nil {
		t.Errorf("a new connection after the upgrade: %v", err)
	}
	var be BackendValue
	if err := d.Backends.Lookup(uint32(backendID), &be); err != nil || be.SvcId != svcID {
		t.Errorf("migrated backend %+v (%v), want it named for service %d", be, err, svcID)
	}
}

// serveEcho echoes every line back on port (IPv4) in ns until the test ends.
func serveEcho(t *testing.T, ns *netnstest.NS, port uint16) {
	t.Helper()
	var ln net.Listener
	var err error
	ns.Do(t, func() { ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

func dialIn(t *testing.T, ns *netnstest.NS, dst netip.AddrPort) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	c, err := ns.Dialer(t)(ctx, "tcp4", dst.String())
	if err != nil {
		t.Fatalf("connect to %v from %s: %v", dst, ns.Name, err)
	}
	return c
}

// lineEcho sends a line on c and checks the same line comes back.
func lineEcho(c net.Conn) func(string) error {
	r := bufio.NewReader(c)
	return func(line string) error {
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := fmt.Fprintln(c, line); err != nil {
			return err
		}
		got, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if got != line+"\n" {
			return fmt.Errorf("echo %q, want %q", got, line)
		}
		return nil
	}
}

// programOn is the ID of the program a pinned link runs.
func programOn(t *testing.T, root, pin string) ebpf.ProgramID {
	t.Helper()
	l, err := link.LoadPinnedLink(filepath.Join(linksDir(root), pin), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.Program
}

func mustInfo(t *testing.T, p *ebpf.Program) *ebpf.ProgramInfo {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// singleSizeRelease is the datapath object of the last release with one
// Maglev table size for every service (sluice_maglev_v1):
// `git show 53d6b56:bpf/datapath_bpfel.o`.
const singleSizeRelease = "testdata/datapath-53d6b56.o"

// loadSingleSizeRelease loads singleSizeRelease as that release's agent
// did, with Maglev tables of tableSize slots, and pins it under root.
func loadSingleSizeRelease(t *testing.T, root string, tableSize uint32) *Datapath {
	t.Helper()
	spec, err := ebpf.LoadCollectionSpec(singleSizeRelease)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{PinRoot: root}.withDefaults()
	for name, v := range map[string]any{
		"maglev_size": tableSize, "ct_timeout_syn_ns": uint64(cfg.CTTimeoutSYN), "ct_timeout_tcp_ns": uint64(cfg.CTTimeoutTCP),
		"ct_timeout_close_ns": uint64(cfg.CTTimeoutClose), "ct_timeout_other_ns": uint64(cfg.CTTimeoutOther),
		"ct_timeout_unreplied_ns": uint64(cfg.CTTimeoutUnreplied), "event_rate": cfg.EventRate, "event_burst": cfg.EventBurst,
		"event_interval_ns": uint64(time.Second) / uint64(cfg.EventRate),
		"hairpin_addr4":     Addr(HairpinAddr4), "hairpin_addr6": Addr(HairpinAddr6),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			t.Fatalf("set %s: %v", name, err)
		}
	}
	for name, n := range map[string]uint32{
		"sluice_services_v1": cfg.MaxServices, "sluice_backends_v2": cfg.MaxBackends, "sluice_maglev_v1": cfg.MaxServices,
		"sluice_ct_tcp_v1": cfg.MaxConntrackTCP, "sluice_ct_other_v1": cfg.MaxConntrackOther,
		"sluice_affinity_v2": cfg.MaxAffinity, "sluice_endpoints_v1": cfg.MaxEndpoints,
		"sluice_policy_endpoints_v1": cfg.MaxEndpoints, "sluice_ipcache_v1": cfg.MaxIPCache,
		"sluice_policy_cidrs_v1": cfg.MaxPolicyCIDRs, "sluice_policy_v1": cfg.MaxPolicyRules,
	} {
		spec.Maps[name].MaxEntries = n
	}
	spec.Maps["sluice_maglev_v1"].ValueSize = tableSize * 4
	for _, dir := range []string{mapsDir(root), progsDir(root), linksDir(root)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: mapsDir(root)}})
	if err != nil {
		t.Fatalf("load the single-size release's datapath: %v", err)
	}
	t.Cleanup(coll.Close)
	for _, name := range []string{"from_pod", "to_pod"} {
		if err := replacePin(coll.Programs[name], filepath.Join(progsDir(root), name)); err != nil {
			t.Fatal(err)
		}
	}
	return &Datapath{
		FromPod: coll.Programs["from_pod"], ToPod: coll.Programs["to_pod"],
		Services: coll.Maps["sluice_services_v1"], Backends: coll.Maps["sluice_backends_v2"],
		MaglevMaps: [maglevClasses]*ebpf.Map{coll.Maps["sluice_maglev_v1"]},
		Endpoints:  coll.Maps["sluice_endpoints_v1"], EndpointSlots: coll.Maps["sluice_endpoint_slots_v1"],
		root: root,
	}
}

// TestUpgradeFromSingleSizeMaglev is an upgrade from the release whose
// Maglev tables all had one size (16381 slots, in sluice_maglev_v1) while
// a client opens a new connection through a ClusterIP every few
// milliseconds: this version loads, takes over the pods' veths, finishes
// the migration, then its first sync moves the table to the map of its
// size class (written there, the entry pointed at it, the old table
// deleted after the grace). No new connection may fail at any point, and
// the old map is unpinned once empty.
func TestUpgradeFromSingleSizeMaglev(t *testing.T) {
	bpffs.Require(t)
	root := bpffs.Root(t)
	old := loadSingleSizeRelease(t, root, 16381)
	pn := newPodNode(t, old, 3)
	client := pn.pods[0]
	vip := ap("10.96.0.10:80")
	const svcID = 7
	var names []string
	for i, p := range pn.pods[1:] {
		be := netip.AddrPortFrom(p.addr4, 8080)
		names = append(names, be.String())
		if err := old.Backends.Put(uint32(40+i), BackendValue{Addr: Addr(be.Addr()), Port: Port(be.Port()), SvcId: svcID}); err != nil {
			t.Fatal(err)
		}
		serveEcho(t, p.ns, be.Port())
	}
	table := func(size uint32) []uint32 {
		idx, err := maglev.Table(names, size)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]uint32, size)
		for i, b := range idx {
			out[i] = uint32(40 + b)
		}
		return out
	}
	if err := old.SetMaglevTable(MaglevLegacy, svcID, table(16381)); err != nil {
		t.Fatal(err)
	}
	key := ServiceKey{Addr: Addr(vip.Addr()), Port: Port(vip.Port()), Proto: unix.IPPROTO_TCP}
	if err := old.Services.Put(key, ServiceValue{Id: svcID, BackendCount: 2}); err != nil {
		t.Fatal(err)
	}

	// New connections, one after the other, for the whole upgrade.
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	done := make(chan struct{})
	dial := client.ns.Dialer(t)
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c, err := dial(ctx, "tcp4", vip.String())
			cancel()
			if err == nil {
				err = lineEcho(c)(fmt.Sprintf("connection %d", i))
				c.Close()
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				continue
			}
			ok.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	waitFor := func(n int64) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ok.Load() < n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("only %d connections succeeded (%d failed: %v)", ok.Load(), failed.Load(), firstErr.Load())
			}
		}
	}
	waitFor(10) // under the previous release

	// The agent reads the pinned conntrack sizes before it loads.
	ro, err := OpenPinned(root)
	if err != nil {
		t.Fatalf("open the previous release's pins: %v", err)
	}
	if ro.ConntrackTCP == nil || ro.MaglevClassSize(MaglevLegacy) != 16381 {
		t.Errorf("OpenPinned: conntrack %v, old tables of %d slots", ro.ConntrackTCP, ro.MaglevClassSize(MaglevLegacy))
	}
	ro.Close()

	d, err := Load(Config{PinRoot: root, MaglevSize: 16381})
	if err != nil {
		t.Fatalf("load over the single-size release's pins: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	if got := d.MaglevClassSize(MaglevLegacy); got != 16381 {
		t.Fatalf("the old map's tables read as %d slots, want 16381", got)
	}
	if _, err := d.Reattach(); err != nil {
		t.Fatalf("reattach: %v", err)
	}
	if fin, err := d.FinishMigration(); err != nil || slices.Contains(fin.Unpinned, legacyMaglevV1) {
		t.Fatalf("finish migration: %+v, %v; want the old Maglev map kept while it holds a table", fin, err)
	}
	waitFor(ok.Load() + 20) // new programs, the old map's table

	// The first sync, in the writer's order: the table of its size
	// class, the entry naming it, then (after the grace) the old one.
	size := maglev.Size(2, d.MaglevMaxSize())
	class, _ := MaglevClassOfSize(size)
	if err := d.SetMaglevTable(class, svcID, table(size)); err != nil {
		t.Fatal(err)
	}
	if err := d.Services.Put(key, ServiceValue{Id: svcID, BackendCount: 2, Flags: class.Flags()}); err != nil {
		t.Fatal(err)
	}
	waitFor(ok.Load() + 20)
	if err := d.DeleteMaglevTable(MaglevLegacy, svcID); err != nil {
		t.Fatal(err)
	}
	if retired, err := d.RetireLegacyMaglev(); err != nil || !retired {
		t.Errorf("retire the emptied old map: %v, %v", retired, err)
	}
	waitFor(ok.Load() + 20)
	close(stop)
	<-done
	if failed.Load() > 0 {
		t.Errorf("%d of %d new connections failed across the upgrade: first %v", failed.Load(), ok.Load()+failed.Load(), firstErr.Load())
	}
	if _, err := os.Stat(filepath.Join(mapsDir(root), legacyMaglevV1)); !os.IsNotExist(err) {
		t.Errorf("old Maglev map still pinned (%v)", err)
	}
	drops, err := d.DropCounts()
	if err != nil {
		t.Fatal(err)
	}
	if n := drops[DropBackendMissing].Packets; n > 0 {
		t.Errorf("%d packets found no Maglev table", n)
	}
}
