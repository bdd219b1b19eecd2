// Package mapsync writes the compiler's desired state into the datapath's
// maps, applying only the difference from what the maps hold, in an order
// in which the datapath never sees a dangling reference:
//
//	backends -> Maglev tables -> service entries -> delete stale services
//	and their tables -> delete stale backends
//
// On start it restores its view (and the IDs in use) from the pinned maps,
// so a restarted agent rewrites nothing that is already right.
package mapsync

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/sluice-net/sluice/agent/internal/compile"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/maglev"
)

// backendKey identifies a backend ID: IDs are per (service, endpoint), so
// removing an endpoint from a service deletes exactly its ID.
type backendKey struct {
	svcID uint32
	addr  netip.AddrPort
}

type service struct {
	id    uint32
	value bpf.ServiceValue
	table string // the Maglev table's inputs: backend IDs and names, in order
}

// Writer owns the service-related maps of one node's datapath.
type Writer struct {
	dp         *bpf.Datapath
	maglevSize uint32

	services   map[bpf.ServiceKey]service
	backendIDs map[backendKey]uint32
	backends   map[uint32]bpf.BackendValue
	svcIDs     *idPool
	beIDs      *idPool
}

// Stats counts what one Sync changed in the maps.
type Stats struct {
	ServicesWritten, ServicesDeleted int
	BackendsWritten, BackendsDeleted int
	TablesWritten                    int
	Services, Backends               int // programmed after the sync
}

// Changed says whether the sync touched the maps at all.
func (s Stats) Changed() bool {
	return s.ServicesWritten+s.ServicesDeleted+s.BackendsWritten+s.BackendsDeleted+s.TablesWritten > 0
}

// New restores the writer's view from the datapath's (possibly pinned and
// populated) maps.
func New(dp *bpf.Datapath) (*Writer, error) {
	w := &Writer{
		dp: dp, maglevSize: dp.MaglevSize(),
		services:   map[bpf.ServiceKey]service{},
		backendIDs: map[backendKey]uint32{},
		backends:   map[uint32]bpf.BackendValue{},
		svcIDs:     newIDPool(dp.Services.MaxEntries() - 1),
		beIDs:      newIDPool(dp.Backends.MaxEntries()),
	}
	if err := w.restore(); err != nil {
		return nil, fmt.Errorf("restore state from pinned maps: %w", err)
	}
	return w, nil
}

func (w *Writer) restore() error {
	var bid uint32
	var bv bpf.BackendValue
	it := w.dp.Backends.Iterate()
	for it.Next(&bid, &bv) {
		w.backends[bid] = bv
		w.beIDs.take(bid)
	}
	if err := it.Err(); err != nil {
		return err
	}
	var k bpf.ServiceKey
	var v bpf.ServiceValue
	sit := w.dp.Services.Iterate()
	for sit.Next(&k, &v) {
		w.svcIDs.take(v.Id)
		ids, err := w.tableIDs(v.Id)
		if err != nil {
			return err
		}
		var refs []uint32
		for _, id := range ids {
			if be, ok := w.backends[id]; ok {
				w.backendIDs[backendKey{v.Id, netip.AddrPortFrom(bpf.AddrFrom(be.Addr), bpf.PortFrom(be.Port))}] = id
				refs = append(refs, id)
			}
		}
		w.services[k] = service{id: v.Id, value: v, table: w.tableSignature(refs)}
	}
	if err := sit.Err(); err != nil {
		return err
	}
	return w.pruneOrphanTables()
}

// pruneOrphanTables deletes Maglev tables no service entry points at (left
// by an agent that stopped between writing a table and its service).
func (w *Writer) pruneOrphanTables() error {
	var id uint32
	var orphans []uint32
	it := w.dp.Maglev.Iterate()
	value := make([]byte, w.dp.Maglev.ValueSize())
	for it.Next(&id, &value) {
		if !w.svcIDs.inUse[id] {
			orphans = append(orphans, id)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, id := range orphans {
		if err := w.dp.DeleteMaglevTable(id); err != nil {
			return err
		}
	}
	return nil
}

// tableIDs reads the distinct backend IDs of a service's Maglev table.
func (w *Writer) tableIDs(svcID uint32) ([]uint32, error) {
	table, ok, err := w.dp.MaglevTable(svcID)
	if err != nil || !ok {
		return nil, err
	}
	seen := map[uint32]bool{}
	var ids []uint32
	for _, id := range table {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

func (w *Writer) tableSignature(ids []uint32) string {
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	var b strings.Builder
	for _, id := range sorted {
		be := w.backends[id]
		fmt.Fprintf(&b, "%d=%s:%d;", id, bpf.AddrFrom(be.Addr), bpf.PortFrom(be.Port))
	}
	return b.String()
}

func serviceKey(f compile.Frontend) bpf.ServiceKey {
	return bpf.ServiceKey{Addr: bpf.Addr(f.Addr.Addr()), Port: bpf.Port(f.Addr.Port()), Proto: f.Proto, Scope: uint8(f.Scope)}
}

// Sync makes the maps hold exactly desired. On error the maps hold a
// consistent mix of old and new state and the next Sync retries the rest.
func (w *Writer) Sync(desired compile.Desired) (Stats, error) {
	var st Stats
	type plan struct {
		key   bpf.ServiceKey
		svc   service
		ids   []uint32 // backend IDs in table order (sorted by address)
		names []string
	}
	var plans []plan
	wantBackends := map[uint32]bpf.BackendValue{}
	var errs []error

	// Assign IDs and work out the complete desired maps.
	for f, e := range desired {
		key := serviceKey(f)
		cur, exists := w.services[key]
		id := cur.id
		if !exists {
			var ok bool
			if id, ok = w.svcIDs.get(); !ok {
				errs = append(errs, fmt.Errorf("service %s (%s): no free service ID: the service map holds %d entries; raise MaxServices", e.Service, f, w.dp.Services.MaxEntries()))
				continue
			}
		}
		p := plan{key: key}
		for _, b := range e.Backends {
			bk := backendKey{id, b.Addr}
			bid, ok := w.backendIDs[bk]
			if !ok {
				if bid, ok = w.beIDs.get(); !ok {
					errs = append(errs, fmt.Errorf("service %s: no free backend ID: the backend map holds %d entries; raise MaxBackends", e.Service, w.dp.Backends.MaxEntries()))
					break
				}
				w.backendIDs[bk] = bid
			}
			var flags uint8
			if b.Local {
				flags |= bpf.BackendLocal
			}
			if b.Terminating {
				flags |= bpf.BackendTerminating
			}
			wantBackends[bid] = bpf.BackendValue{Addr: bpf.Addr(b.Addr.Addr()), Port: bpf.Port(b.Addr.Port()), Flags: flags}
			p.ids = append(p.ids, bid)
			p.names = append(p.names, b.Addr.String())
		}
		var flags uint32
		if e.LocalOnly {
			flags |= bpf.ServiceLocalOnly
		}
		if e.TerminatingFallback {
			flags |= bpf.ServiceTerminatingFallback
		}
		p.svc = service{id: id, value: bpf.ServiceValue{Id: id, BackendCount: uint32(len(p.ids)), AffinityTimeout: e.AffinityTimeout, Flags: flags}}
		plans = append(plans, p)
	}

	// 1. Backends.
	var bids []uint32
	var bvals []bpf.BackendValue
	for id, v := range wantBackends {
		if cur, ok := w.backends[id]; !ok || cur != v {
			bids, bvals = append(bids, id), append(bvals, v)
		}
	}
	if len(bids) > 0 {
		if _, err := w.dp.Backends.BatchUpdate(bids, bvals, nil); err != nil {
			return st, errors.Join(append(errs, fmt.Errorf("write %d backends: %w", len(bids), err))...)
		}
		for i, id := range bids {
			w.backends[id] = bvals[i]
		}
		st.BackendsWritten = len(bids)
	}

	// 2. Maglev tables of services whose backend set changed.
	tables := map[uint32][]uint32{}
	for i := range plans {
		p := &plans[i]
		p.svc.table = w.tableSignature(p.ids)
		if len(p.ids) == 0 {
			continue
		}
		if cur, ok := w.services[p.key]; ok && cur.table == p.svc.table {
			continue
		}
		idx, err := maglev.Table(p.names, w.maglevSize)
		if err != nil {
			errs = append(errs, fmt.Errorf("maglev table for %v: %w", p.key, err))
			continue
		}
		table := make([]uint32, len(idx))
		for slot, bi := range idx {
			table[slot] = p.ids[bi]
		}
		tables[p.svc.id] = table
	}
	if len(tables) > 0 {
		if err := w.dp.SetMaglevTables(tables); err != nil {
			return st, errors.Join(append(errs, err)...)
		}
		st.TablesWritten = len(tables)
	}

	// 3. Service entries.
	var skeys []bpf.ServiceKey
	var svals []bpf.ServiceValue
	for _, p := range plans {
		if cur, ok := w.services[p.key]; !ok || cur.value != p.svc.value {
			skeys, svals = append(skeys, p.key), append(svals, p.svc.value)
		}
	}
	if len(skeys) > 0 {
		if _, err := w.dp.Services.BatchUpdate(skeys, svals, nil); err != nil {
			return st, errors.Join(append(errs, fmt.Errorf("write %d services: %w", len(skeys), err))...)
		}
		st.ServicesWritten = len(skeys)
	}
	wantKeys := map[bpf.ServiceKey]bool{}
	for _, p := range plans {
		w.services[p.key] = p.svc
		wantKeys[p.key] = true
	}

	// 4. Stale services and their tables.
	var stale []bpf.ServiceKey
	for k := range w.services {
		if !wantKeys[k] {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		id := w.services[k].id
		if err := w.dp.Services.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete service %v: %w", k, err))
			continue
		}
		if err := w.dp.DeleteMaglevTable(id); err != nil {
			errs = append(errs, err)
		}
		delete(w.services, k)
		w.svcIDs.put(id)
		st.ServicesDeleted++
	}
	// Tables of services that now have no backends are no longer read.
	for _, p := range plans {
		if len(p.ids) == 0 {
			if err := w.dp.DeleteMaglevTable(p.svc.id); err != nil {
				errs = append(errs, err)
			}
		}
	}

	// 5. Backends nobody references any more.
	for id := range w.backends {
		if _, ok := wantBackends[id]; ok {
			continue
		}
		if err := w.dp.Backends.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete backend %d: %w", id, err))
			continue
		}
		delete(w.backends, id)
		w.beIDs.put(id)
		st.BackendsDeleted++
	}
	for bk, id := range w.backendIDs {
		if _, ok := wantBackends[id]; !ok {
			delete(w.backendIDs, bk)
		}
	}
	st.Services, st.Backends = len(w.services), len(w.backends)
	return st, errors.Join(errs...)
}

// idPool hands out IDs 1..max (0 is invalid in the datapath). Freed IDs
// are reused last-in-last-out so a just-freed ID is not reused at once.
type idPool struct {
	max   uint32
	next  uint32
	free  []uint32
	inUse map[uint32]bool
}

func newIDPool(max uint32) *idPool {
	return &idPool{max: max, next: 1, inUse: map[uint32]bool{}}
}

func (p *idPool) take(id uint32) { p.inUse[id] = true }

func (p *idPool) get() (uint32, bool) {
	for p.next <= p.max {
		id := p.next
		p.next++
		if !p.inUse[id] {
			p.inUse[id] = true
			return id, true
		}
	}
	for len(p.free) > 0 {
		id := p.free[0]
		p.free = p.free[1:]
		if !p.inUse[id] {
			p.inUse[id] = true
			return id, true
		}
	}
	return 0, false
}

func (p *idPool) put(id uint32) {
	delete(p.inUse, id)
	p.free = append(p.free, id)
}
