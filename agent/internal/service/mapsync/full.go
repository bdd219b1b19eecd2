package mapsync

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/agent/internal/service/compile"
)

// FullError says a frontend could not be programmed because a datapath
// map, or the IDs that index it, ran out.
type FullError struct {
	// Map is the datapath map: sluice_backends_v2, sluice_services_v1 or
	// a Maglev map (sluice_maglev_<size>_v1).
	Map string
	// Label names the map in the agent's metrics (sluice_map_capacity):
	// backends, services or maglev.
	Label    string
	Capacity uint32
	// Setting is the agent setting that sizes the map.
	Setting  string
	Service  types.NamespacedName
	Frontend compile.Frontend
	// Err is the kernel's error; nil when the writer ran out of IDs.
	Err error
}

func (e *FullError) Error() string {
	cause := "no free ID"
	if e.Err != nil {
		cause = e.Err.Error()
	}
	return fmt.Sprintf("service %s, frontend %s: map %s is full (capacity %d; raise %s): %s",
		e.Service, e.Frontend, e.Map, e.Capacity, e.Setting, cause)
}

func (e *FullError) Unwrap() error { return e.Err }

// FullErrors lists the *FullErrors in err as Sync returns it.
func FullErrors(err error) []*FullError {
	var out []*FullError
	var walk func(error)
	walk = func(err error) {
		if fe, ok := err.(*FullError); ok {
			out = append(out, fe)
			return
		}
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	if err != nil {
		walk(err)
	}
	return out
}

// OnlyFull reports whether err, as Sync returns it, is made of
// *FullErrors alone: the rest of the desired state was programmed.
func OnlyFull(err error) bool {
	if err == nil {
		return false
	}
	if _, ok := err.(*FullError); ok {
		return true
	}
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range u.Unwrap() {
			if !OnlyFull(e) {
				return false
			}
		}
		return len(u.Unwrap()) > 0
	}
	return false
}

// mapKind is one of the maps the writer fills.
type mapKind int

const (
	mapBackends mapKind = iota
	mapServices
	mapMaglev
)

// mapError reports a failed write (what) of plan p to map m, or, with err
// nil, that m's IDs ran out: a *FullError when the map is full.
func (w *Writer) mapError(p *plan, m mapKind, what string, err error) error {
	if err != nil && !errors.Is(err, unix.E2BIG) && !errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("service %s, frontend %s: %s: %w", p.service, p.frontend, what, err)
	}
	fe := &FullError{Service: p.service, Frontend: p.frontend, Err: err}
	switch m {
	case mapBackends:
		fe.Map, fe.Label, fe.Setting, fe.Capacity = "sluice_backends_v2", "backends", "maxBackends", w.dp.Backends.MaxEntries()
	case mapServices:
		fe.Map, fe.Label, fe.Setting, fe.Capacity = "sluice_services_v1", "services", "maxServices", w.dp.Services.MaxEntries()
	case mapMaglev:
		fe.Map, fe.Label, fe.Setting = fmt.Sprintf("sluice_maglev_%d_v1", p.size), "maglev", "maxServices"
		fe.Capacity = w.dp.MaglevMaps[p.class].MaxEntries()
	}
	return fe
}
