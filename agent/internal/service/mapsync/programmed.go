package mapsync

import (
	"cmp"
	"net/netip"
	"slices"

	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/agent/internal/service/compile"
	"github.com/sluice-net/sluice/bpf"
)

// Programmed is one frontend as the service maps hold it, named.
type Programmed struct {
	Frontend compile.Frontend
	ID       uint32
	// Service and PortName name the Service port the frontend serves;
	// zero for a frontend restored from the pinned maps and not synced
	// since.
	Service  types.NamespacedName
	PortName string
	// Kind is what the address is to the Service (compile.KindClusterIP,
	// ...); "" when not known.
	Kind                string
	LocalOnly           bool
	TerminatingFallback bool
	AffinityTimeout     uint32
	// MaglevClass names the map of the frontend's Maglev table.
	MaglevClass bpf.MaglevClass
	// Backends: those in the Maglev table first, then draining ones,
	// each sorted by address.
	Backends []ProgrammedBackend
}

// ProgrammedBackend is one backend of a programmed frontend.
type ProgrammedBackend struct {
	Addr        netip.AddrPort
	ID          uint32
	Local       bool
	Terminating bool
	// InTable: new connections may pick it (it is in the Maglev table);
	// else it only keeps the connections it has (draining).
	InTable bool
}

// Programmed lists every frontend the maps hold, sorted by address, port,
// protocol and scope.
func (w *Writer) Programmed() []Programmed {
	w.mu.RLock()
	defer w.mu.RUnlock()
	out := make([]Programmed, 0, len(w.services))
	for k, svc := range w.services {
		out = append(out, w.programmed(k, svc, true))
	}
	slices.SortFunc(out, func(a, b Programmed) int {
		return cmp.Or(a.Frontend.Addr.Compare(b.Frontend.Addr), cmp.Compare(a.Frontend.Proto, b.Frontend.Proto),
			cmp.Compare(a.Frontend.Scope, b.Frontend.Scope))
	})
	return out
}

// ServiceName names a frontend: its Service and the port's name.
type ServiceName struct {
	Service  types.NamespacedName
	PortName string
}

// publishNames records every frontend's name for ServiceName; the caller
// holds w.mu.
func (w *Writer) publishNames() {
	names := make(map[uint32]ServiceName, len(w.services))
	for _, svc := range w.services {
		if svc.entry != nil {
			names[svc.id] = ServiceName{Service: svc.entry.Service, PortName: svc.entry.PortName}
		}
	}
	w.names.Store(&names)
	w.renamed = false
}

// ServiceName names frontend svcID as of the last sync, without waiting
// for a sync in progress: the flow reader names every event with it.
func (w *Writer) ServiceName(svcID uint32) (ServiceName, bool) {
	names := w.names.Load()
	if names == nil {
		return ServiceName{}, false
	}
	n, ok := (*names)[svcID]
	return n, ok
}

// ByID returns the frontend with service ID id, without its backends.
func (w *Writer) ByID(id uint32) (Programmed, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	k, ok := w.byID[id]
	if !ok {
		return Programmed{}, false
	}
	return w.programmed(k, w.services[k], false), true
}

// Backend returns the address of backend id.
func (w *Writer) Backend(id uint32) (netip.AddrPort, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	be, ok := w.backends[id]
	if !ok {
		return netip.AddrPort{}, false
	}
	return endpoint(be), true
}

func (w *Writer) programmed(k bpf.ServiceKey, svc *service, backends bool) Programmed {
	p := Programmed{
		Frontend: compile.Frontend{Addr: netip.AddrPortFrom(bpf.AddrFrom(k.Addr), bpf.PortFrom(k.Port)), Proto: k.Proto,
			Scope: compile.Scope(k.Scope)},
		ID:                  svc.id,
		LocalOnly:           svc.value.Flags&bpf.ServiceLocalOnly != 0,
		TerminatingFallback: svc.value.Flags&bpf.ServiceTerminatingFallback != 0,
		AffinityTimeout:     svc.value.AffinityTimeout,
		MaglevClass:         classOf(svc.value),
	}
	if svc.entry != nil {
		p.Service, p.PortName, p.Kind = svc.entry.Service, svc.entry.PortName, svc.entry.Kind
	}
	if !backends {
		return p
	}
	for addr, id := range svc.ids {
		be := w.backends[id]
		p.Backends = append(p.Backends, ProgrammedBackend{Addr: addr, ID: id, Local: be.Flags&bpf.BackendLocal != 0,
			Terminating: be.Flags&bpf.BackendTerminating != 0, InTable: inTable(svc.table, id)})
	}
	slices.SortFunc(p.Backends, func(a, b ProgrammedBackend) int {
		if a.InTable != b.InTable {
			if a.InTable {
				return -1
			}
			return 1
		}
		return a.Addr.Compare(b.Addr)
	})
	return p
}

func inTable(sorted []uint32, id uint32) bool {
	_, ok := slices.BinarySearch(sorted, id)
	return ok
}
