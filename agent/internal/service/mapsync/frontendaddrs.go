package mapsync

import (
	"net/netip"
	"slices"

	"github.com/sluice-net/sluice/agent/internal/service/compile"
)

// restoreFrontendAddrs reads the addresses an earlier agent marked.
func (w *Writer) restoreFrontendAddrs() error {
	addrs, err := w.dp.FrontendAddrList()
	if err != nil {
		return err
	}
	for _, a := range addrs {
		w.addrsInMap[a] = true
	}
	return nil
}

// frontendAddrChanges updates which written frontends make each address a
// services-only one (compile.Entry.ServicesOnly), for the frontends a
// sync considers (all, or the touched ones), and compares the addresses
// that have any with those the map holds. It runs once the sync has
// written its entries. Addresses a failed write left behind are compared
// again on every sync.
func (w *Writer) frontendAddrChanges(desired compile.Desired, touched []compile.Frontend) (add, del []netip.Addr) {
	considered := touched
	if touched == nil {
		considered = make([]compile.Frontend, 0, len(desired))
		for f := range desired {
			considered = append(considered, f)
		}
		for _, users := range w.addrUsers {
			for f := range users {
				considered = append(considered, f)
			}
		}
	}
	check := w.addrsPending
	w.addrsPending = map[netip.Addr]bool{}
	if touched == nil {
		for a := range w.addrsInMap {
			check[a] = true
		}
	}
	for _, f := range considered {
		if f.Scope != compile.ScopeExternal {
			continue
		}
		a := f.Addr.Addr()
		check[a] = true
		// Only a frontend whose entry is written counts: an address is
		// never marked ahead of the Service it serves.
		if e, ok := desired[f]; ok && e.ServicesOnly && w.services[serviceKey(f)] != nil {
			if w.addrUsers[a] == nil {
				w.addrUsers[a] = map[compile.Frontend]bool{}
			}
			w.addrUsers[a][f] = true
			continue
		}
		delete(w.addrUsers[a], f)
		if len(w.addrUsers[a]) == 0 {
			delete(w.addrUsers, a)
		}
	}
	for a := range check {
		want := len(w.addrUsers[a]) > 0
		switch {
		case want && !w.addrsInMap[a]:
			add = append(add, a)
		case !want && w.addrsInMap[a]:
			del = append(del, a)
		}
	}
	slices.SortFunc(add, netip.Addr.Compare)
	slices.SortFunc(del, netip.Addr.Compare)
	return add, del
}

// writeFrontendAddrs applies the changes. They follow the service entries:
// an address is marked once its frontends are written, and unmarked after
// the last is gone. An address that cannot be written (a full map) is
// tried again on the next sync.
func (w *Writer) writeFrontendAddrs(add, del []netip.Addr, st *Stats, errs *[]error) {
	for _, a := range add {
		if err := w.dp.PutFrontendAddr(a); err != nil {
			*errs = append(*errs, err)
			w.addrsPending[a] = true
			continue
		}
		w.addrsInMap[a] = true
		st.FrontendAddrsWritten++
	}
	for _, a := range del {
		if err := w.dp.DeleteFrontendAddr(a); err != nil {
			*errs = append(*errs, err)
			w.addrsPending[a] = true
			continue
		}
		delete(w.addrsInMap, a)
		st.FrontendAddrsDeleted++
	}
}
