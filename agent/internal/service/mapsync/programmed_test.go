package mapsync

import (
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/agent/internal/service/compile"
)

// The observer names frontends from what was applied: a frontend that
// moves to another Service (or port name) with the same backends is
// renamed without a write to the maps.
func TestProgrammedNames(t *testing.T) {
	dp, _ := loadDatapath(t)
	w, err := New(dp)
	if err != nil {
		t.Fatal(err)
	}
	f := fe("10.96.0.10:80")
	entry := compile.Entry{Service: web, PortName: "http", Kind: compile.KindClusterIP, Backends: backends("10.0.0.1:8080", "10.0.0.2:8080")}
	if _, err := w.Sync(compile.Desired{f: entry}); err != nil {
		t.Fatal(err)
	}
	progs := w.Programmed()
	if len(progs) != 1 || progs[0].Service != web || progs[0].PortName != "http" || progs[0].Kind != compile.KindClusterIP ||
		len(progs[0].Backends) != 2 || !progs[0].Backends[0].InTable || progs[0].Frontend != f {
		t.Fatalf("programmed %+v", progs)
	}
	other := types.NamespacedName{Namespace: "ns", Name: "other"}
	entry.Service, entry.PortName = other, "web"
	st, err := w.Sync(compile.Desired{f: entry})
	if err != nil || st.Changed() {
		t.Fatalf("rename: %+v, %v; want no write", st, err)
	}
	p, ok := w.ByID(progs[0].ID)
	if !ok || p.Service != other || p.PortName != "web" || p.Backends != nil {
		t.Errorf("by ID: %+v, %v; want ns/other:web without backends", p, ok)
	}
	if n, ok := w.ServiceName(progs[0].ID); !ok || n.Service != other || n.PortName != "web" {
		t.Errorf("service name %+v %v; want ns/other web", n, ok)
	}
	// Names are read without waiting for a sync in progress.
	w.mu.Lock()
	n, ok := w.ServiceName(progs[0].ID)
	w.mu.Unlock()
	if !ok || n.Service != other {
		t.Errorf("service name during a sync: %+v %v", n, ok)
	}
	if b, ok := w.Backend(progs[0].Backends[1].ID); !ok || b.String() != "10.0.0.2:8080" {
		t.Errorf("backend %d: %v %v", progs[0].Backends[1].ID, b, ok)
	}
	if _, err := w.Sync(compile.Desired{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := w.ServiceName(progs[0].ID); ok {
		t.Errorf("deleted frontend still named")
	}
	if _, ok := w.ByID(progs[0].ID); ok || len(w.Programmed()) != 0 {
		t.Errorf("deleted frontend still programmed")
	}
}
