package mapsync

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/agent/internal/service/compile"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
	"github.com/sluice-net/sluice/internal/testutil/bpffs"
)

// manyBackends are n endpoints 10.244.<i/250>.<i%250+1>:8080.
func manyBackends(n int) []compile.Backend {
	var addrs []string
	for i := range n {
		addrs = append(addrs, fmt.Sprintf("10.244.%d.%d:8080", i/250, i%250+1))
	}
	return backends(addrs...)
}

// tableOf reads the service entry of frontend f and where its table is:
// the class the entry names and the classes that hold a table for it.
func tableOf(t *testing.T, dp *bpf.Datapath, f compile.Frontend) (v bpf.ServiceValue, in []bpf.MaglevClass) {
	t.Helper()
	if err := dp.Services.Lookup(serviceKey(f), &v); err != nil {
		t.Fatalf("service %v: %v", f, err)
	}
	for c := range bpf.MaglevClass(len(dp.MaglevMaps)) {
		if _, ok, err := dp.MaglevTable(c, v.Id); err != nil {
			t.Fatal(err)
		} else if ok {
			in = append(in, c)
		}
	}
	return v, in
}

// TestTableSizedToBackends: a service's table has the size its backend
// count gives (capped at the configured largest), in that size's map and
// no other; it moves when the count crosses a size and is rebuilt only
// when the backend set changes.
func TestTableSizedToBackends(t *testing.T) {
	dp := bpftest.Load(t, bpf.Config{MaglevSize: 16381, MaxServices: 64, MaxBackends: 4096})
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	// A clock the test moves past the grace of retired tables.
	clock := time.Now()
	w.now = func() time.Time { return clock }
	f := fe("10.96.0.10:80")
	for _, c := range []struct {
		backends  int
		affinity  uint32
		size      uint32
		rebuilt   bool
		reachable int
	}{
		{2, 0, 251, true, 2},
		{3, 0, 509, true, 3},
		{3, 60, 509, false, 3}, // same backends: the table stays
		{10, 60, 1021, true, 10},
		{1000, 60, 16381, true, 1000}, // capped at the largest size
		{2, 60, 251, true, 2},
	} {
		st, err := w.Sync(compile.Desired{f: {Service: web, Backends: manyBackends(c.backends), AffinityTimeout: c.affinity}})
		if err != nil {
			t.Fatal(err)
		}
		// A table left in the old class goes at a sync after the grace.
		clock = clock.Add(tableGrace)
		desired := compile.Desired{f: {Service: web, Backends: manyBackends(c.backends), AffinityTimeout: c.affinity}}
		if again, err := w.Sync(desired); err != nil || again.Changed() {
			t.Fatalf("%d backends, synced again: %+v, %v", c.backends, again, err)
		}
		v, in := tableOf(t, dp, f)
		class, _ := bpf.MaglevClassOfSize(c.size)
		if bpf.MaglevClassOf(v.Flags) != class || len(in) != 1 || in[0] != class {
			t.Errorf("%d backends: entry names class %d, tables in %v; want all in class %d (%d slots)",
				c.backends, bpf.MaglevClassOf(v.Flags), in, class, c.size)
		}
		if (st.TablesWritten == 1) != c.rebuilt {
			t.Errorf("%d backends, affinity %d: %d tables written, want rebuilt=%v", c.backends, c.affinity, st.TablesWritten, c.rebuilt)
		}
		if got := len(dump(t, dp)[f.Addr.String()]); got != c.reachable {
			t.Errorf("%d backends: table reaches %d", c.backends, got)
		}
	}
}

// TestClassChangeLeavesNoWindow: while a service's backend count moves
// its table between size classes again and again, a reader doing what
// the datapath does (read the entry, then the table in the class it
// names) always finds a table.
func TestClassChangeLeavesNoWindow(t *testing.T) {
	dp := bpftest.Load(t, bpf.Config{MaglevSize: 16381, MaxServices: 64, MaxBackends: 4096})
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	f := fe("10.96.0.10:80")
	if _, err := w.Sync(compile.Desired{f: {Service: web, Backends: manyBackends(2)}}); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var reads, misses atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		key := serviceKey(f)
		var v bpf.ServiceValue
		var id uint32
		for !stop.Load() {
			if err := dp.Services.Lookup(key, &v); err != nil {
				misses.Add(1)
				continue
			}
			// One slot is enough to know the table is there.
			m := dp.MaglevMaps[bpf.MaglevClassOf(v.Flags)]
			buf := make([]byte, m.ValueSize())
			if err := m.Lookup(v.Id, &buf); err != nil {
				misses.Add(1)
			}
			reads.Add(1)
			_ = id
		}
	}()
	for i := range 300 {
		n := 2 + i%2 // 2 backends: 251 slots; 3: 509
		if _, err := w.Sync(compile.Desired{f: {Service: web, Backends: manyBackends(n)}}); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if misses.Load() > 0 {
		t.Errorf("%d of %d reads found no table while the table changed class", misses.Load(), reads.Load())
	}
	// The old tables go at a sync after the grace.
	time.Sleep(tableGrace)
	if _, err := w.Sync(compile.Desired{f: {Service: web, Backends: manyBackends(2)}}); err != nil {
		t.Fatal(err)
	}
	if _, in := tableOf(t, dp, f); len(in) != 1 {
		t.Errorf("tables left in classes %v, want one", in)
	}
}

// legacyNode is a node upgraded from a release with one table size: the
// service frontend f with backends 5 and 6 and its table in the pinned
// sluice_maglev_v1 (at legacyPin), as the previous agent wrote them.
func legacyNode(t *testing.T) (dp *bpf.Datapath, legacyPin string, f compile.Frontend) {
	t.Helper()
	bpffs.Require(t)
	root := bpffs.Root(t)
	legacyPin = filepath.Join(root, "maps", "sluice_maglev_v1")
	if err := os.MkdirAll(filepath.Dir(legacyPin), 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "sluice_maglev_v1", Type: ebpf.Hash, KeySize: 4, ValueSize: 16381 * 4,
		MaxEntries: 64, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { old.Close() })
	if err := old.Pin(legacyPin); err != nil {
		t.Fatal(err)
	}
	dp, err = bpf.Load(bpf.Config{PinRoot: root, MaglevSize: 16381, MaxServices: 64, MaxBackends: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	if got := dp.MaglevClassSize(bpf.MaglevLegacy); got != 16381 {
		t.Fatalf("legacy tables of %d slots, want the pinned map's 16381", got)
	}
	// What the previous agent wrote: backends, a 16381-slot table in the
	// old map, an entry without a class.
	f = fe("10.96.0.10:80")
	ids := []uint32{5, 6}
	for i, id := range ids {
		be := manyBackends(2)[i]
		if err := dp.Backends.Put(id, backendValue(3, be)); err != nil {
			t.Fatal(err)
		}
	}
	table := make([]uint32, 16381)
	for i := range table {
		table[i] = ids[i%2]
	}
	if err := dp.SetMaglevTable(bpf.MaglevLegacy, 3, table); err != nil {
		t.Fatal(err)
	}
	if err := dp.Services.Put(serviceKey(f), bpf.ServiceValue{Id: 3, BackendCount: 2}); err != nil {
		t.Fatal(err)
	}

	return dp, legacyPin, f
}

// TestLegacyTablesMoveAtFirstSync is an upgrade from a release with one
// table size (sluice_maglev_v1): the new datapath reads the tables the old
// agent wrote there, the first sync moves each to its size class, and
// once that map is empty and the migration finished, it is unpinned.
func TestLegacyTablesMoveAtFirstSync(t *testing.T) {
	dp, legacyPin, f := legacyNode(t)
	// The agent's start: take over (nothing else to migrate), then sync.
	if _, err := dp.FinishMigration(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(legacyPin); err != nil {
		t.Fatalf("old map unpinned while it still holds a table: %v", err)
	}
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	st, err := w.Sync(compile.Desired{f: {Service: web, Backends: manyBackends(2)}})
	if err != nil {
		t.Fatal(err)
	}
	v, in := tableOf(t, dp, f)
	if bpf.MaglevClassOf(v.Flags) != 1 || len(in) != 2 || in[1] != 1 || st.TablesWritten != 1 || st.BackendsWritten != 0 {
		t.Errorf("after the first sync: entry %+v, tables in classes %v, %+v; want the table written in class 1 (the old one kept for the grace), backends kept", v, in, st)
	}
	// The old table stays for tableGrace, then goes with the map's pin.
	if _, ok, _ := dp.MaglevTable(bpf.MaglevLegacy, 3); !ok {
		t.Error("old table deleted at once: a packet that read the entry before the sync may not find it")
	}
	time.Sleep(tableGrace)
	if st, err := w.Sync(compile.Desired{f: {Service: web, Backends: manyBackends(2)}}); err != nil || st.Changed() {
		t.Errorf("second sync: %+v, %v; want nothing to write", st, err)
	}
	if _, in := tableOf(t, dp, f); len(in) != 1 {
		t.Errorf("tables in classes %v after the grace, want class 1 only", in)
	}
	if _, err := os.Stat(legacyPin); !os.IsNotExist(err) {
		t.Errorf("old map still pinned after a sync emptied it (%v)", err)
	}
}

// TestLegacyTablesKeptUntilTakeover: where the takeover failed (programs
// of the earlier release still attached, FinishMigration not run), the
// sync moves the table to its class but leaves the old map's as it was.
func TestLegacyTablesKeptUntilTakeover(t *testing.T) {
	dp, legacyPin, f := legacyNode(t)
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	w.now = func() time.Time { return clock }
	for range 2 {
		if _, err := w.Sync(compile.Desired{f: {Service: web, Backends: manyBackends(2)}}); err != nil {
			t.Fatal(err)
		}
		clock = clock.Add(tableGrace)
	}
	if _, in := tableOf(t, dp, f); !slices.Equal(in, []bpf.MaglevClass{bpf.MaglevLegacy, 1}) {
		t.Errorf("tables in classes %v, want the old one kept beside class 1", in)
	}
	if _, err := os.Stat(legacyPin); err != nil {
		t.Errorf("old map unpinned before the takeover: %v", err)
	}
	// A restart before the takeover keeps it too.
	if _, err := New(dp); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := dp.MaglevTable(bpf.MaglevLegacy, 3); !ok {
		t.Error("restore pruned the old map's table before the takeover")
	}
}
