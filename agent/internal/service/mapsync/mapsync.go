// Package mapsync writes the compiler's desired state into the datapath's
// maps, applying only the difference from what the maps hold, in an order
// in which the datapath never sees a dangling reference:
//
//	backends -> Maglev tables -> service entries -> delete stale services
//	and their tables -> delete stale backends
//
// Each service's Maglev table is sized to its backends (maglev.Size) and
// lives in the map of its size class, which the service entry names. A
// table that changes class is written in the new class, then the entry is
// pointed at it, then, at a sync at least tableGrace later, the old class's
// table is deleted: a packet that read the entry just before it changed
// still finds the table it names.
//
// On start it restores its view (and the IDs in use) from the pinned maps,
// giving each backend to the service its SvcId names, so a restarted agent
// rewrites nothing that is already right and a draining backend (in no
// Maglev table) keeps its ID.
package mapsync

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/agent/internal/service/compile"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/maglev"
)

// service is what the maps hold for one frontend.
type service struct {
	id    uint32
	value bpf.ServiceValue
	// ids are this frontend's backend IDs by endpoint, draining ones
	// included. Backend IDs are per (frontend, endpoint): removing an
	// endpoint deletes exactly its ID, which is what moves the flows that
	// used it.
	ids map[netip.AddrPort]uint32
	// table lists the backend IDs the Maglev table was built from, sorted.
	table []uint32
	// entry is the desired entry last applied; nil after a restore, so the
	// first sync re-plans the frontend (writing only real differences).
	entry *compile.Entry
}

// tableChunk is how many Maglev tables are built and installed at once.
const tableChunk = 256

// plan is one changed frontend with its IDs assigned.
type plan struct {
	key      bpf.ServiceKey
	frontend compile.Frontend
	service  types.NamespacedName
	cur      *service // what the maps held before; nil for a new frontend
	svc      service
	ordered  []uint32 // backend IDs of the table in table order (sorted by address)
	names    []string
	members  []member        // every backend of the frontend: the table's, then the draining ones
	fresh    map[uint32]bool // backend IDs this plan took from the pool
	table    bool            // the Maglev table must be rebuilt
	size     uint32          // slots of the table (maglev.Size of the table's backends)
	class    bpf.MaglevClass // the map of that size
	removed  []uint32        // backend IDs the frontend no longer uses

	// What has been written, for undoing it should a later step fail.
	writes       []backendWrite
	tableWritten bool
}

// backendWrite is one backend value a plan writes, and the value it
// replaces (zero for a new ID).
type backendWrite struct {
	id          uint32
	value, prev bpf.BackendValue
}

// member is one backend of a planned frontend with its ID.
type member struct {
	id      uint32
	backend compile.Backend
}

// Writer owns the service-related maps of one node's datapath.
type Writer struct {
	dp *bpf.Datapath
	// maglevMax is the largest table size (the datapath's configured one).
	maglevMax uint32
	// legacy says the earlier releases' single-size Maglev map held
	// tables at restore: once no service names it, it is retired.
	legacy bool

	// mu guards services, backends and byID for the readers of
	// programmed.go: a sync holds it throughout.
	mu       sync.RWMutex
	services map[bpf.ServiceKey]*service
	byID     map[uint32]bpf.ServiceKey // the frontends by service ID
	// names are the frontends' names by service ID as of the last sync,
	// for readers that must not wait for a sync (ServiceName); renamed
	// says a sync renamed a frontend without writing it.
	names    atomic.Pointer[map[uint32]ServiceName]
	renamed  bool
	backends map[uint32]bpf.BackendValue
	svcIDs   *idPool
	beIDs    *idPool
	// orphans are backends found at restore that no frontend uses (left
	// by an agent that stopped mid-sync); the next Sync deletes them.
	orphans []uint32
	// retired are tables their service's entry no longer names (it moved
	// to another size class), deleted by a sync tableGrace later.
	retired []retiredTable
	// ranges are the loadBalancerSourceRanges entries the map holds, by
	// frontend (lbranges.go).
	ranges map[bpf.LBFrontend]map[netip.Prefix]bool
	// addrUsers are the services-only frontends of each address,
	// addrsInMap the addresses the map holds, addrsPending those a failed
	// write left to compare again (frontendaddrs.go).
	addrUsers    map[netip.Addr]map[compile.Frontend]bool
	addrsInMap   map[netip.Addr]bool
	addrsPending map[netip.Addr]bool
	now          func() time.Time
}

// retiredTable is a table left in its class when its service moved.
type retiredTable struct {
	class bpf.MaglevClass
	id    uint32
	at    time.Time
}

// tableGrace is how long a table outlives the entry that named it: far
// longer than a program runs between reading a service entry and its
// table (microseconds), so none finds the table gone.
const tableGrace = time.Second

// Stats counts what one Sync changed in the maps.
type Stats struct {
	ServicesWritten, ServicesDeleted int
	BackendsWritten, BackendsDeleted int
	TablesWritten                    int
	RangesWritten, RangesDeleted     int // loadBalancerSourceRanges entries
	// FrontendAddrsWritten and FrontendAddrsDeleted count services-only
	// addresses marked and unmarked.
	FrontendAddrsWritten, FrontendAddrsDeleted int
	Services, Backends                         int // programmed after the sync
}

// Changed says whether the sync touched the maps at all.
func (s Stats) Changed() bool {
	return s.ServicesWritten+s.ServicesDeleted+s.BackendsWritten+s.BackendsDeleted+s.TablesWritten+
		s.RangesWritten+s.RangesDeleted+s.FrontendAddrsWritten+s.FrontendAddrsDeleted > 0
}

// New restores the writer's view from the datapath's (possibly pinned and
// populated) maps.
func New(dp *bpf.Datapath) (*Writer, error) {
	w := &Writer{
		dp: dp, maglevMax: dp.MaglevMaxSize(), now: time.Now,
		services:  map[bpf.ServiceKey]*service{},
		byID:      map[uint32]bpf.ServiceKey{},
		backends:  map[uint32]bpf.BackendValue{},
		ranges:    map[bpf.LBFrontend]map[netip.Prefix]bool{},
		addrUsers: map[netip.Addr]map[compile.Frontend]bool{}, addrsInMap: map[netip.Addr]bool{},
		addrsPending: map[netip.Addr]bool{},
		svcIDs:       newIDPool(dp.Services.MaxEntries() - 1),
		beIDs:        newIDPool(dp.Backends.MaxEntries()),
	}
	if err := w.restore(); err != nil {
		return nil, fmt.Errorf("restore state from pinned maps: %w", err)
	}
	return w, nil
}

// restore reads the service entries, then gives each its backends: those
// whose SvcId names it, whether its Maglev table reaches them or not
// (draining backends are in no table, and keep their IDs across a
// restart). Backends of no service are orphans.
func (w *Writer) restore() error {
	bySvc := map[uint32][]uint32{}
	var bid uint32
	var bv bpf.BackendValue
	it := w.dp.Backends.Iterate()
	for it.Next(&bid, &bv) {
		w.backends[bid] = bv
		w.beIDs.take(bid)
		bySvc[bv.SvcId] = append(bySvc[bv.SvcId], bid)
	}
	if err := it.Err(); err != nil {
		return err
	}
	used := map[uint32]bool{}
	var k bpf.ServiceKey
	var v bpf.ServiceValue
	sit := w.dp.Services.Iterate()
	for sit.Next(&k, &v) {
		w.svcIDs.take(v.Id)
		svc, err := w.restoreService(v, bySvc[v.Id])
		if err != nil {
			return err
		}
		for _, id := range svc.ids {
			used[id] = true
		}
		w.services[k] = svc
		w.byID[svc.id] = k
	}
	if err := sit.Err(); err != nil {
		return err
	}
	for id := range w.backends {
		if !used[id] {
			w.orphans = append(w.orphans, id)
		}
	}
	slices.Sort(w.orphans)
	if err := w.restoreRanges(); err != nil {
		return err
	}
	if err := w.restoreFrontendAddrs(); err != nil {
		return err
	}
	return w.pruneOrphanTables()
}

// restoreService rebuilds one frontend's view from its entry and the
// backend IDs allocated for it. Should two IDs carry one endpoint (never
// written so), the one in the table wins and the other is an orphan.
func (w *Writer) restoreService(v bpf.ServiceValue, ids []uint32) (*service, error) {
	inTable, err := w.tableIDs(classOf(v), v.Id)
	if err != nil {
		return nil, err
	}
	svc := &service{id: v.Id, value: v, ids: map[netip.AddrPort]uint32{}}
	tableSet := make(map[uint32]bool, len(inTable))
	for _, id := range inTable {
		tableSet[id] = true
	}
	slices.SortFunc(ids, func(a, b uint32) int {
		// Table members first, then by ID, so the choice is stable.
		if ta, tb := tableSet[a], tableSet[b]; ta != tb {
			if ta {
				return -1
			}
			return 1
		}
		return cmp.Compare(a, b)
	})
	for _, id := range ids {
		ep := endpoint(w.backends[id])
		if _, dup := svc.ids[ep]; !dup {
			svc.ids[ep] = id
		}
	}
	for _, id := range inTable {
		if be, ok := w.backends[id]; ok && be.SvcId == v.Id && svc.ids[endpoint(be)] == id {
			svc.table = append(svc.table, id)
		}
	}
	return svc, nil
}

func endpoint(be bpf.BackendValue) netip.AddrPort {
	return netip.AddrPortFrom(bpf.AddrFrom(be.Addr), bpf.PortFrom(be.Port))
}

// pruneOrphanTables deletes Maglev tables no service entry points at: of
// services that are gone, or in a class other than the one their entry
// names (left by an agent that stopped between writing a table and its
// service, or between pointing a service at a new class and deleting its
// old table). The earlier releases' map is left alone until the takeover
// finished: programs of that release may still read it.
func (w *Writer) pruneOrphanTables() error {
	classes := make(map[uint32]bpf.MaglevClass, len(w.services))
	for _, svc := range w.services {
		classes[svc.id] = classOf(svc.value)
	}
	for c := range bpf.MaglevClass(len(w.dp.MaglevMaps)) {
		ids, err := w.dp.MaglevTableIDs(c)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if c == bpf.MaglevLegacy {
				w.legacy = true
			}
			if cls, ok := classes[id]; (ok && cls == c) || (c == bpf.MaglevLegacy && !w.dp.TookOver()) {
				continue
			}
			if err := w.dp.DeleteMaglevTable(c, id); err != nil {
				return err
			}
		}
	}
	return nil
}

// deleteRetired deletes the retired tables older than tableGrace, unless
// the service ID has a table in that class again (it moved back, or the ID
// went to another service): that one is live.
func (w *Writer) deleteRetired(errs *[]error) {
	now := w.now()
	keep := w.retired[:0]
	for _, r := range w.retired {
		// Programs of an earlier release, still attached where the
		// takeover failed, read the earlier releases' map.
		if now.Sub(r.at) < tableGrace || (r.class == bpf.MaglevLegacy && !w.dp.TookOver()) {
			keep = append(keep, r)
			continue
		}
		if key, ok := w.byID[r.id]; ok && classOf(w.services[key].value) == r.class {
			continue
		}
		if err := w.dp.DeleteMaglevTable(r.class, r.id); err != nil {
			*errs = append(*errs, err) // pruned at restore
		}
	}
	w.retired = keep
}

// classOf is the Maglev class a service entry names.
func classOf(v bpf.ServiceValue) bpf.MaglevClass { return bpf.MaglevClassOf(v.Flags) }

// retireLegacy unpins the earlier releases' Maglev map once no service
// names it any more (the first sync after an upgrade moves them all).
func (w *Writer) retireLegacy(errs *[]error) {
	if !w.legacy {
		return
	}
	for _, svc := range w.services {
		if classOf(svc.value) == bpf.MaglevLegacy {
			return
		}
	}
	retired, err := w.dp.RetireLegacyMaglev()
	if err != nil {
		*errs = append(*errs, err)
	}
	w.legacy = !retired
}

// tableIDs reads the distinct backend IDs of a service's Maglev table.
func (w *Writer) tableIDs(class bpf.MaglevClass, svcID uint32) ([]uint32, error) {
	table, ok, err := w.dp.MaglevTable(class, svcID)
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

func serviceKey(f compile.Frontend) bpf.ServiceKey {
	return bpf.ServiceKey{Addr: bpf.Addr(f.Addr.Addr()), Port: bpf.Port(f.Addr.Port()), Proto: f.Proto, Scope: uint8(f.Scope)}
}

func sameEntry(a, b compile.Entry) bool {
	return a.AffinityTimeout == b.AffinityTimeout && a.LocalOnly == b.LocalOnly &&
		a.TerminatingFallback == b.TerminatingFallback && slices.Equal(a.Backends, b.Backends) &&
		slices.Equal(a.Draining, b.Draining) && a.Restricted == b.Restricted && a.NodeInRanges == b.NodeInRanges &&
		slices.Equal(a.SourceRanges, b.SourceRanges)
}

// SetNodePodCIDRs writes this node's pod CIDRs (a list of "10.244.1.0/24"
// strings, as Node.spec.podCIDRs has them) into the datapath, which then
// refuses them as sources of traffic from outside.
func (w *Writer) SetNodePodCIDRs(cidrs []string) error {
	var prefixes []netip.Prefix
	for i, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("node spec.podCIDRs[%d]: %q is not a CIDR", i, s)
		}
		prefixes = append(prefixes, p.Masked())
	}
	return w.dp.SetNodePodCIDRs(prefixes)
}

// Sync makes the maps hold exactly desired. Frontends whose entry is the
// one last applied cost a comparison; the rest are planned and written in
// batches. A frontend that cannot be written whole (a full map, a failed
// write) is left as it was, with every ID it took returned and everything
// written for it undone, and its error is returned (a *FullError when a
// map is full); the frontends that could be written are. The next Sync
// retries the rest.
func (w *Writer) Sync(desired compile.Desired) (Stats, error) {
	return w.apply(desired, nil)
}

// SyncTouched is Sync limited to the touched frontends: each is written if
// desired holds it and it changed, deleted if desired lacks it. The rest
// of desired is trusted to be applied already, so a sync after one
// EndpointSlice change costs that change, not the size of the cluster.
func (w *Writer) SyncTouched(desired compile.Desired, touched []compile.Frontend) (Stats, error) {
	if touched == nil {
		touched = []compile.Frontend{}
	}
	return w.apply(desired, touched)
}

// apply syncs every frontend (touched nil) or only the touched ones.
// Stale frontends go first (nothing else refers to them, and the IDs they
// free serve this sync's new frontends); then the changed ones, in the
// package's order, so that the datapath never meets a dangling reference.
// A plan that fails at a step is abandoned there: nothing refers to what
// was written for it, so that is deleted again.
func (w *Writer) apply(desired compile.Desired, touched []compile.Frontend) (Stats, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var st Stats
	var errs []error
	unused := w.deleteStale(w.staleKeys(desired, touched), &st, &errs)
	unused = append(unused, w.orphans...)
	w.orphans = nil
	w.deleteBackends(unused, &st, &errs)

	// Ranges are added before the entries flagged to use them and deleted
	// after, so a client a range admits is never refused in between.
	addRanges, deleteRanges := w.rangeChanges(desired, touched)
	w.writeRanges(addRanges, &st, &errs)
	plans := w.planChanges(desired, touched, &errs)
	plans = w.writeBackends(plans, &st, &errs)
	plans = w.writeTables(plans, &st, &errs)
	plans = w.writeServices(plans, &st, &errs)
	w.deleteBackends(w.adopt(plans, &errs), &st, &errs)
	w.deleteRanges(deleteRanges, &st, &errs)
	addAddrs, deleteAddrs := w.frontendAddrChanges(desired, touched)
	w.writeFrontendAddrs(addAddrs, deleteAddrs, &st, &errs)
	w.deleteRetired(&errs)
	w.retireLegacy(&errs)
	st.Services, st.Backends = len(w.services), len(w.backends)
	if st.ServicesWritten+st.ServicesDeleted > 0 || w.renamed || w.names.Load() == nil {
		w.publishNames()
	}
	return st, errors.Join(errs...)
}

// staleKeys lists the frontends to delete: those the maps hold and desired
// lacks (only among the touched ones, unless touched is nil).
func (w *Writer) staleKeys(desired compile.Desired, touched []compile.Frontend) []bpf.ServiceKey {
	var stale []bpf.ServiceKey
	if touched == nil {
		seen := make(map[bpf.ServiceKey]bool, len(desired))
		for f := range desired {
			seen[serviceKey(f)] = true
		}
		for key := range w.services {
			if !seen[key] {
				stale = append(stale, key)
			}
		}
		return stale
	}
	for _, f := range touched {
		if _, ok := desired[f]; ok {
			continue
		}
		if _, ok := w.services[serviceKey(f)]; ok && !slices.Contains(stale, serviceKey(f)) {
			stale = append(stale, serviceKey(f))
		}
	}
	return stale
}

// planChanges plans the frontends whose entry differs from the one last
// applied; an unchanged frontend costs a comparison.
func (w *Writer) planChanges(desired compile.Desired, touched []compile.Frontend, errs *[]error) []*plan {
	var plans []*plan
	planned := map[bpf.ServiceKey]bool{}
	consider := func(f compile.Frontend, e compile.Entry) {
		key := serviceKey(f)
		cur := w.services[key]
		if planned[key] {
			return
		}
		if cur != nil && cur.entry != nil && sameEntry(*cur.entry, e) {
			if n := cur.entry; n.Service != e.Service || n.PortName != e.PortName || n.Kind != e.Kind {
				// Nothing to write; only the names the observer shows moved.
				named := *n
				named.Service, named.PortName, named.Kind = e.Service, e.PortName, e.Kind
				cur.entry = &named
				w.renamed = true
			}
			return
		}
		planned[key] = true
		p, err := w.plan(f, cur, e)
		if err != nil {
			*errs = append(*errs, err)
			return
		}
		plans = append(plans, p)
	}
	if touched == nil {
		for f, e := range desired {
			consider(f, e)
		}
		return plans
	}
	for _, f := range touched {
		if e, ok := desired[f]; ok {
			consider(f, e)
		}
	}
	return plans
}

// writeBackends writes the planned backends that are new or changed (step
// 1: before any table can point at them), all in one batch. Should the
// batch fail (a full map), it writes plan by plan: the plans that fit are
// written, the others abandoned. It returns the plans written.
func (w *Writer) writeBackends(plans []*plan, st *Stats, errs *[]error) []*plan {
	var bids []uint32
	var bvals []bpf.BackendValue
	for _, p := range plans {
		for _, m := range p.members {
			want := backendValue(p.svc.id, m.backend)
			cur, ok := w.backends[m.id]
			if ok && cur == want {
				continue
			}
			p.writes = append(p.writes, backendWrite{id: m.id, value: want, prev: cur})
			bids, bvals = append(bids, m.id), append(bvals, want)
		}
	}
	if len(bids) == 0 {
		return plans
	}
	if _, err := w.dp.Backends.BatchUpdate(bids, bvals, nil); err == nil {
		for _, p := range plans {
			w.commitBackends(p, st)
		}
		return plans
	}
	var ok []*plan
	for _, p := range plans {
		if len(p.writes) > 0 {
			ids, vals := make([]uint32, len(p.writes)), make([]bpf.BackendValue, len(p.writes))
			for i, bw := range p.writes {
				ids[i], vals[i] = bw.id, bw.value
			}
			if _, err := w.dp.Backends.BatchUpdate(ids, vals, nil); err != nil {
				*errs = append(*errs, w.mapError(p, mapBackends, fmt.Sprintf("write %d backends", len(ids)), err))
				w.abandon(p, errs)
				continue
			}
		}
		w.commitBackends(p, st)
		ok = append(ok, p)
	}
	return ok
}

// commitBackends records a plan's backend writes as done.
func (w *Writer) commitBackends(p *plan, st *Stats) {
	for _, bw := range p.writes {
		w.backends[bw.id] = bw.value
	}
	st.BackendsWritten += len(p.writes)
}

// writeTables builds and installs the Maglev tables the plans need (step
// 2: before a service entry can point at them), each in the map of its
// size class. Tables are computed on every core (0.3 ms each at 16381
// slots, 20 us at 1021) and installed in chunks, one batch per class, so a
// cold sync of 10,000 services holds a few MiB of tables at a time. A plan
// whose table cannot be built or installed is abandoned; it returns the
// others.
func (w *Writer) writeTables(plans []*plan, st *Stats, errs *[]error) []*plan {
	var jobs []*plan
	for _, p := range plans {
		if p.table {
			jobs = append(jobs, p)
		}
	}
	failed := map[*plan]bool{}
	for chunk := range slices.Chunk(jobs, tableChunk) {
		tables := w.buildTables(chunk, errs, failed)
		byClass := map[bpf.MaglevClass]map[uint32][]uint32{}
		for _, p := range chunk {
			if t, ok := tables[p.svc.id]; ok {
				if byClass[p.class] == nil {
					byClass[p.class] = map[uint32][]uint32{}
				}
				byClass[p.class][p.svc.id] = t
			}
		}
		for class, batch := range byClass {
			if err := w.dp.SetMaglevTables(class, batch); err == nil {
				continue
			}
			// Table by table: those that fit are installed.
			for _, p := range chunk {
				if failed[p] || p.class != class {
					continue
				}
				if err := w.dp.SetMaglevTable(class, p.svc.id, tables[p.svc.id]); err != nil {
					*errs = append(*errs, w.mapError(p, mapMaglev, "install Maglev table", err))
					failed[p] = true
				}
			}
		}
		for _, p := range chunk {
			if !failed[p] {
				p.tableWritten = true
				st.TablesWritten++
			}
		}
	}
	var ok []*plan
	for _, p := range plans {
		if failed[p] {
			w.abandon(p, errs)
			continue
		}
		ok = append(ok, p)
	}
	return ok
}

// writeServices writes the planned service entries that are new or changed
// (step 3: their backends and tables are in place), in one batch, or plan
// by plan should the batch fail. It returns the plans written.
func (w *Writer) writeServices(plans []*plan, st *Stats, errs *[]error) []*plan {
	var skeys []bpf.ServiceKey
	var svals []bpf.ServiceValue
	for _, p := range plans {
		if p.cur == nil || p.cur.value != p.svc.value {
			skeys, svals = append(skeys, p.key), append(svals, p.svc.value)
		}
	}
	if len(skeys) == 0 {
		return plans
	}
	if _, err := w.dp.Services.BatchUpdate(skeys, svals, nil); err == nil {
		st.ServicesWritten += len(skeys)
		return plans
	}
	var ok []*plan
	for _, p := range plans {
		if p.cur != nil && p.cur.value == p.svc.value {
			ok = append(ok, p)
			continue
		}
		if err := w.dp.Services.Put(p.key, p.svc.value); err != nil {
			*errs = append(*errs, w.mapError(p, mapServices, "write service entry", err))
			w.abandonEntry(p, errs)
			continue
		}
		st.ServicesWritten++
		ok = append(ok, p)
	}
	return ok
}

// abandonEntry handles a plan whose service entry could not be written.
// A new frontend is abandoned whole, and so is one whose new table went to
// another class (its entry still names the old table, which is intact).
// An existing frontend whose new table replaced the old one in its class
// cannot go back (nothing holds the old one): it keeps the backends either
// table may reach, and the next Sync plans it again.
func (w *Writer) abandonEntry(p *plan, errs *[]error) {
	if p.cur == nil || !p.tableWritten || classOf(p.cur.value) != p.class {
		w.abandon(p, errs)
		return
	}
	kept := &service{id: p.cur.id, value: p.cur.value, ids: maps.Clone(p.cur.ids), table: p.svc.table}
	maps.Copy(kept.ids, p.svc.ids)
	w.services[p.key] = kept
}

// abandon undoes what was written for a plan that failed: the backends it
// wrote under new IDs are deleted and their IDs returned, the backends it
// rewrote get their old value back, a table it installed in a class other
// than the one the entry names is deleted, and a new frontend's service ID
// returned. The maps and pools are then as if the plan had never been
// made.
func (w *Writer) abandon(p *plan, errs *[]error) {
	for _, bw := range p.writes {
		if !p.fresh[bw.id] {
			// An existing key: rewriting it needs no room.
			if err := w.dp.Backends.Put(bw.id, bw.prev); err != nil {
				*errs = append(*errs, fmt.Errorf("restore backend %d: %w", bw.id, err))
				// The map's value is unknown: make the next plan rewrite it.
				w.backends[bw.id] = bpf.BackendValue{}
				continue
			}
			w.backends[bw.id] = bw.prev
		}
	}
	for id := range p.fresh {
		if err := w.dp.Backends.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			*errs = append(*errs, fmt.Errorf("delete backend %d of an abandoned write: %w", id, err))
			// Still in the map under its ID: the next Sync deletes it.
			w.backends[id] = bpf.BackendValue{}
			w.orphans = append(w.orphans, id)
			continue
		}
		delete(w.backends, id)
		w.beIDs.put(id)
	}
	if p.cur != nil {
		if p.tableWritten && classOf(p.cur.value) != p.class {
			if err := w.dp.DeleteMaglevTable(p.class, p.svc.id); err != nil {
				*errs = append(*errs, err) // pruned at restore
			}
		}
		return
	}
	if p.tableWritten {
		if err := w.dp.DeleteMaglevTable(p.class, p.svc.id); err != nil {
			// Keep the ID: its table is still there (pruned at restore).
			*errs = append(*errs, err)
			return
		}
	}
	w.svcIDs.put(p.svc.id)
}

// adopt makes the written plans the writer's view, deletes the tables of
// frontends left without backends (a frontend without backends rejects;
// its table is not read) and the old tables of frontends whose table
// changed class (their entry names the new one now), and returns the
// backend IDs the plans dropped.
func (w *Writer) adopt(plans []*plan, errs *[]error) (unused []uint32) {
	for _, p := range plans {
		svc := p.svc
		w.services[p.key] = &svc
		w.byID[svc.id] = p.key
		unused = append(unused, p.removed...)
		if len(p.ordered) == 0 {
			if err := w.dp.DeleteMaglevTable(p.class, svc.id); err != nil {
				*errs = append(*errs, err)
			}
		}
		if p.cur != nil && classOf(p.cur.value) != p.class {
			w.retired = append(w.retired, retiredTable{class: classOf(p.cur.value), id: svc.id, at: w.now()})
		}
	}
	return unused
}

// deleteStale deletes the frontends no longer desired, with their tables
// (nothing points at them), and returns their backend IDs.
func (w *Writer) deleteStale(stale []bpf.ServiceKey, st *Stats, errs *[]error) (unused []uint32) {
	for _, key := range stale {
		svc := w.services[key]
		if err := w.dp.Services.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			*errs = append(*errs, fmt.Errorf("delete service %v: %w", key, err))
			continue
		}
		delete(w.services, key)
		delete(w.byID, svc.id)
		st.ServicesDeleted++
		for _, id := range svc.ids {
			unused = append(unused, id)
		}
		if err := w.dp.DeleteMaglevTable(classOf(svc.value), svc.id); err != nil {
			// Keep the ID: its table is still there (pruned at restore).
			*errs = append(*errs, err)
			continue
		}
		w.svcIDs.put(svc.id)
	}
	return unused
}

// deleteBackends deletes backends nobody uses any more (no table points at
// them now); one that cannot be deleted is tried again next Sync.
func (w *Writer) deleteBackends(unused []uint32, st *Stats, errs *[]error) {
	for _, id := range unused {
		if err := w.dp.Backends.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			*errs = append(*errs, fmt.Errorf("delete backend %d: %w", id, err))
			w.orphans = append(w.orphans, id)
			continue
		}
		delete(w.backends, id)
		w.beIDs.put(id)
		st.BackendsDeleted++
	}
}

// plan assigns IDs for a changed frontend and works out what to write. If
// an ID pool runs dry it returns what it took and a *FullError.
func (w *Writer) plan(f compile.Frontend, cur *service, e compile.Entry) (*plan, error) {
	p := &plan{key: serviceKey(f), frontend: f, service: e.Service, cur: cur, fresh: map[uint32]bool{}}
	if cur != nil {
		p.svc.id = cur.id
	} else {
		id, ok := w.svcIDs.get()
		if !ok {
			return nil, w.mapError(p, mapServices, "", nil)
		}
		p.svc.id = id
	}
	p.svc.ids = make(map[netip.AddrPort]uint32, len(e.Backends)+len(e.Draining))
	for i, b := range slices.Concat(e.Backends, e.Draining) {
		id, ok := uint32(0), false
		if cur != nil {
			id, ok = cur.ids[b.Addr]
		}
		if !ok {
			if id, ok = w.beIDs.get(); !ok {
				for f := range p.fresh {
					w.beIDs.put(f)
				}
				if cur == nil {
					w.svcIDs.put(p.svc.id)
				}
				return nil, w.mapError(p, mapBackends, "", nil)
			}
			p.fresh[id] = true
		}
		p.svc.ids[b.Addr] = id
		p.members = append(p.members, member{id: id, backend: b})
		if i < len(e.Backends) {
			p.ordered = append(p.ordered, id)
			p.names = append(p.names, b.Addr.String())
		}
	}
	if cur != nil {
		for addr, id := range cur.ids {
			if _, kept := p.svc.ids[addr]; !kept {
				p.removed = append(p.removed, id)
			}
		}
	}
	var flags uint32
	if e.LocalOnly {
		flags |= bpf.ServiceLocalOnly
	}
	if e.TerminatingFallback {
		flags |= bpf.ServiceTerminatingFallback
	}
	if e.Restricted {
		flags |= bpf.ServiceSourceRanges
	}
	if e.NodeInRanges {
		flags |= bpf.ServiceSourceRangesNode
	}
	// The same backend count gives the same size on every node.
	p.size = maglev.Size(len(p.ordered), w.maglevMax)
	class, ok := bpf.MaglevClassOfSize(p.size)
	if !ok {
		return nil, fmt.Errorf("service %s, frontend %s: no Maglev map of %d slots", e.Service, f, p.size)
	}
	p.class = class
	flags = bpf.WithMaglevClass(flags, class)
	p.svc.value = bpf.ServiceValue{Id: p.svc.id, BackendCount: uint32(len(p.ordered)), AffinityTimeout: e.AffinityTimeout, Flags: flags}
	p.svc.table = sortedIDs(p.ordered)
	// A table is rebuilt only when its backend set changes (which is what
	// changes its size too) or it must leave an earlier release's map.
	p.table = len(p.ordered) > 0 && (cur == nil || !slices.Equal(cur.table, p.svc.table) || classOf(cur.value) != class)
	entry := e
	p.svc.entry = &entry
	return p, nil
}

// backendValue is the map value of backend b of service svcID.
func backendValue(svcID uint32, b compile.Backend) bpf.BackendValue {
	var flags uint8
	if b.Local {
		flags |= bpf.BackendLocal
	}
	if b.Terminating {
		flags |= bpf.BackendTerminating
	}
	return bpf.BackendValue{Addr: bpf.Addr(b.Addr.Addr()), Port: bpf.Port(b.Addr.Port()), Flags: flags, SvcId: svcID}
}

// buildTables computes the Maglev tables of the given plans in parallel;
// a plan whose table cannot be built is marked in failed.
func (w *Writer) buildTables(jobs []*plan, errs *[]error, failed map[*plan]bool) map[uint32][]uint32 {
	results := make([][]uint32, len(jobs))
	jobErrs := make([]error, len(jobs))
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for wk := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := wk; j < len(jobs); j += workers {
				idx, err := maglev.Table(jobs[j].names, jobs[j].size)
				if err != nil {
					jobErrs[j] = fmt.Errorf("service %s, frontend %s: maglev table: %w", jobs[j].service, jobs[j].frontend, err)
					continue
				}
				table := make([]uint32, len(idx))
				for slot, bi := range idx {
					table[slot] = jobs[j].ordered[bi]
				}
				results[j] = table
			}
		}()
	}
	wg.Wait()
	tables := make(map[uint32][]uint32, len(jobs))
	for j, p := range jobs {
		if jobErrs[j] != nil {
			*errs = append(*errs, jobErrs[j])
			failed[p] = true
			continue
		}
		tables[p.svc.id] = results[j]
	}
	return tables
}

func sortedIDs(ids []uint32) []uint32 {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
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
