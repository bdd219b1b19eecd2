package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// An upgrade of Sluice may change a pinned map's layout; the map then gets
// a new name (the _vN suffix) and the running datapath's state is carried
// over from the old map by a migration, in two steps:
//
//  1. Load copies the old maps' entries into the new ones, so the new
//     programs find the services' backends, conntrack and affinity as the
//     old programs left them.
//  2. Once every attachment runs the new programs (Reattach), the agent
//     calls FinishMigration: it copies what the old programs wrote in the
//     meantime (new flows, new affinities; never over an entry the new
//     programs made) and unpins the old maps.
//
// Each migration knows the old layout it reads; the old map is opened only
// if it is pinned, so a fresh node or one already migrated pays nothing.

// Layouts of maps that an earlier release pinned.
type (
	// backendValueV1 is sluice_backends_v1's value: no service ID.
	backendValueV1 struct {
		Addr  [16]uint8
		Port  uint16
		Flags uint8
		Pad   uint8
	}
	// affinityValueV1 is sluice_affinity_v1's value: a bare backend ID.
	affinityValueV1 struct {
		LastUsedNs uint64
		BackendId  uint32
		Pad        uint32
	}
)

// Names of maps that earlier releases pinned and this one replaces.
const (
	legacyBackendsV1 = "sluice_backends_v1"
	legacyAffinityV1 = "sluice_affinity_v1"
	legacyCTV1       = "sluice_ct_v1" // one map for every protocol; now ct_tcp and ct_other
)

// retiredMaps are maps of earlier releases that hold nothing to carry
// over: FinishMigration only unpins them, once the old programs that
// write them are gone.
var retiredMaps = []string{
	"sluice_events_v2", // drop events; now flow events in sluice_events_v3
}

// MigrationStats counts what a migration carried over from old maps.
type MigrationStats struct {
	Backends, Affinity, Conntrack int
	Unpinned                      []string // old map pins removed
}

// migration holds the old maps found pinned at Load.
type migration struct {
	backends, affinity, ct *ebpf.Map
}

func (m *migration) empty() bool { return m.backends == nil && m.affinity == nil && m.ct == nil }

func (m *migration) close() {
	for _, mp := range []*ebpf.Map{m.backends, m.affinity, m.ct} {
		if mp != nil {
			mp.Close()
		}
	}
}

// openLegacy opens the old maps pinned under root's maps directory.
func openLegacy(root string) (*migration, error) {
	m := &migration{}
	for _, x := range []struct {
		name string
		dst  **ebpf.Map
	}{{legacyBackendsV1, &m.backends}, {legacyAffinityV1, &m.affinity}, {legacyCTV1, &m.ct}} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(mapsDir(root), x.name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			m.close()
			return nil, fmt.Errorf("open old map %s for migration: %w", x.name, err)
		}
		*x.dst = mp
	}
	return m, nil
}

// migrate runs step 1 at Load: backends first (conntrack and affinity
// entries name them by ID, which is kept), then affinity and conntrack.
func (d *Datapath) migrate() (MigrationStats, error) {
	var st MigrationStats
	m, err := openLegacy(d.root)
	if err != nil || m.empty() {
		return st, err
	}
	d.legacy = m
	if m.backends != nil {
		if st.Backends, err = d.migrateBackends(m.backends); err != nil {
			return st, err
		}
	}
	return st, d.copyFlows(&st)
}

// FinishMigration is step 2 of an upgrade (see above): call it once every
// attachment runs this datapath's programs. It also unpins retired maps;
// without old maps that is all it does.
func (d *Datapath) FinishMigration() (MigrationStats, error) {
	var st MigrationStats
	m := d.legacy
	if m != nil {
		if err := d.copyFlows(&st); err != nil {
			return st, err
		}
	}
	for _, name := range append([]string{legacyBackendsV1, legacyAffinityV1, legacyCTV1}, retiredMaps...) {
		path := filepath.Join(mapsDir(d.root), name)
		if err := os.Remove(path); err == nil {
			st.Unpinned = append(st.Unpinned, name)
		} else if !errors.Is(err, os.ErrNotExist) {
			return st, fmt.Errorf("unpin old map %s: %w", path, err)
		}
	}
	if m != nil {
		m.close()
		d.legacy = nil
	}
	d.tookOver = true
	if ok, err := d.RetireLegacyMaglev(); err != nil {
		return st, err
	} else if ok {
		st.Unpinned = append(st.Unpinned, legacyMaglevV1)
	}
	return st, nil
}

// TookOver reports whether FinishMigration has run: no program of an
// earlier release is attached any more.
func (d *Datapath) TookOver() bool { return d.tookOver }

// legacyMaglevV1 is the single-size Maglev map of releases before size
// classes. The new programs read it (MaglevLegacy) for the services it
// holds, until the agent's first sync moves their tables to the maps of
// their size class.
const legacyMaglevV1 = "sluice_maglev_v1"

// RetireLegacyMaglev unpins the earlier releases' single-size Maglev map
// once it holds no table and FinishMigration has run (no old program
// reads it), and reports whether it did. The agent's first sync after an
// upgrade empties it; until then it stays pinned, so an agent restarted
// before that sync still finds the tables its services name.
func (d *Datapath) RetireLegacyMaglev() (bool, error) {
	m := d.MaglevMaps[MaglevLegacy]
	if !d.tookOver || m == nil {
		return false, nil
	}
	ids, err := d.MaglevTableIDs(MaglevLegacy)
	if err != nil || len(ids) > 0 {
		return false, err
	}
	path := filepath.Join(mapsDir(d.root), legacyMaglevV1)
	if err := os.Remove(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("unpin old map %s: %w", path, err)
	}
	return true, nil
}

// migrateBackends copies sluice_backends_v1 into the backend map, naming
// each backend's service from the Maglev tables that list it (v1 had no
// terminating backends outside a table). A backend no table lists gets
// service 0: an orphan, which the agent's first sync deletes.
func (d *Datapath) migrateBackends(old *ebpf.Map) (int, error) {
	owner := map[uint32]uint32{}
	for _, m := range d.MaglevMaps {
		if m == nil {
			continue
		}
		var svcID uint32
		table := make([]uint32, m.ValueSize()/4)
		it := m.Iterate()
		for it.Next(&svcID, &table) {
			for _, id := range table {
				owner[id] = svcID
			}
		}
		if err := it.Err(); err != nil {
			return 0, fmt.Errorf("migrate backends: read Maglev tables: %w", err)
		}
	}
	n := 0
	var id uint32
	var v backendValueV1
	bit := old.Iterate()
	for bit.Next(&id, &v) {
		nv := BackendValue{Addr: v.Addr, Port: v.Port, Flags: v.Flags, SvcId: owner[id]}
		if err := d.Backends.Update(id, nv, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return n, fmt.Errorf("migrate backend %d to %s: %w", id, datapathMapSluiceBackendsV2, err)
		}
		n++
	}
	if err := bit.Err(); err != nil {
		return n, fmt.Errorf("migrate backends: read %s: %w", legacyBackendsV1, err)
	}
	return n, nil
}

// copyFlows copies old conntrack and affinity entries that the new maps do
// not hold yet.
func (d *Datapath) copyFlows(st *MigrationStats) error {
	m := d.legacy
	if m.ct != nil {
		var k CTKey
		var v CTValue
		it := m.ct.Iterate()
		for it.Next(&k, &v) {
			err := d.ConntrackMap(k.Proto).Update(k, v, ebpf.UpdateNoExist)
			if err == nil {
				st.Conntrack++
			} else if !errors.Is(err, ebpf.ErrKeyExist) {
				return fmt.Errorf("migrate conntrack entry: %w", err)
			}
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("migrate conntrack: read %s: %w", legacyCTV1, err)
		}
	}
	if m.affinity != nil {
		var k AffinityKey
		var v affinityValueV1
		it := m.affinity.Iterate()
		for it.Next(&k, &v) {
			// The new value names the backend's address too; a backend
			// already gone leaves nothing to keep.
			var be BackendValue
			if d.Backends.Lookup(v.BackendId, &be) != nil || be.SvcId != k.SvcId {
				continue
			}
			nv := AffinityValue{LastUsedNs: v.LastUsedNs, BackendId: v.BackendId, Addr: be.Addr, Port: be.Port}
			err := d.Affinity.Update(k, nv, ebpf.UpdateNoExist)
			if err == nil {
				st.Affinity++
			} else if !errors.Is(err, ebpf.ErrKeyExist) {
				return fmt.Errorf("migrate affinity entry: %w", err)
			}
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("migrate affinity: read %s: %w", legacyAffinityV1, err)
		}
	}
	return nil
}
