package mapsync

import (
	"net/netip"
	"slices"

	"github.com/sluice-net/sluice/agent/internal/service/compile"
	"github.com/sluice-net/sluice/bpf"
)

// rangeChange is one loadBalancerSourceRanges entry to add or delete.
type rangeChange struct {
	frontend bpf.LBFrontend
	prefix   netip.Prefix
}

func lbFrontend(f compile.Frontend) bpf.LBFrontend {
	return bpf.LBFrontend{Addr: f.Addr, Proto: f.Proto}
}

// restoreRanges reads the ranges an earlier agent left in the map.
func (w *Writer) restoreRanges() error {
	entries, err := w.dp.LBRangeEntries()
	if err != nil {
		return err
	}
	for f, prefixes := range entries {
		w.ranges[f] = map[netip.Prefix]bool{}
		for _, p := range prefixes {
			w.ranges[f][p] = true
		}
	}
	return nil
}

// rangeChanges compares the ranges desired for the frontends a sync
// considers (all, or the touched ones) with those the map holds. Both
// scopes of an address share its entries.
func (w *Writer) rangeChanges(desired compile.Desired, touched []compile.Frontend) (add, del []rangeChange) {
	considered := map[bpf.LBFrontend]bool{}
	if touched == nil {
		for f, e := range desired {
			if e.Restricted {
				considered[lbFrontend(f)] = true
			}
		}
		for f := range w.ranges {
			considered[f] = true
		}
	} else {
		for _, f := range touched {
			considered[lbFrontend(f)] = true
		}
	}
	for lf := range considered {
		want := map[netip.Prefix]bool{}
		for _, scope := range []compile.Scope{compile.ScopeInternal, compile.ScopeExternal} {
			if e, ok := desired[compile.Frontend{Addr: lf.Addr, Proto: lf.Proto, Scope: scope}]; ok && e.Restricted {
				for _, p := range e.SourceRanges {
					want[p] = true
				}
			}
		}
		for p := range want {
			if !w.ranges[lf][p] {
				add = append(add, rangeChange{lf, p})
			}
		}
		for p := range w.ranges[lf] {
			if !want[p] {
				del = append(del, rangeChange{lf, p})
			}
		}
	}
	order := func(a, b rangeChange) int {
		if c := a.frontend.Addr.Compare(b.frontend.Addr); c != 0 {
			return c
		}
		if a.frontend.Proto != b.frontend.Proto {
			return int(a.frontend.Proto) - int(b.frontend.Proto)
		}
		return a.prefix.Compare(b.prefix)
	}
	slices.SortFunc(add, order)
	slices.SortFunc(del, order)
	return add, del
}

// writeRanges adds ranges. One that cannot be written (a full map) leaves
// its frontend stricter than asked, never more open: the entry is flagged
// all the same, and the error says which range is missing.
func (w *Writer) writeRanges(add []rangeChange, st *Stats, errs *[]error) {
	for _, c := range add {
		if err := w.dp.PutLBRange(c.frontend, c.prefix); err != nil {
			*errs = append(*errs, err)
			continue
		}
		if w.ranges[c.frontend] == nil {
			w.ranges[c.frontend] = map[netip.Prefix]bool{}
		}
		w.ranges[c.frontend][c.prefix] = true
		st.RangesWritten++
	}
}

// deleteRanges removes ranges no entry needs any more.
func (w *Writer) deleteRanges(del []rangeChange, st *Stats, errs *[]error) {
	for _, c := range del {
		if err := w.dp.DeleteLBRange(c.frontend, c.prefix); err != nil {
			*errs = append(*errs, err)
			continue
		}
		delete(w.ranges[c.frontend], c.prefix)
		if len(w.ranges[c.frontend]) == 0 {
			delete(w.ranges, c.frontend)
		}
		st.RangesDeleted++
	}
}
