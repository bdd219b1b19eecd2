package metrics

import (
	"testing"

	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
)

// memory gathers sluice_bpf_map_memory_bytes by map label.
func memory(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != "sluice_bpf_map_memory_bytes" {
			continue
		}
		for _, s := range f.GetMetric() {
			out[s.GetLabel()[0].GetValue()] = s.GetGauge().GetValue()
		}
	}
	return out
}

// TestMapMemory: every map of the datapath has its kernel memory reported,
// and a Maglev map's grows with the tables put in it (no preallocation).
func TestMapMemory(t *testing.T) {
	dp := bpftest.Load(t, bpf.Config{MaglevSize: 16381, MaxServices: 1024})
	m := New()
	m.RegisterDatapath(dp)
	before := memory(t, m)
	for name := range dp.Maps() {
		if _, ok := before[MapLabel(name)]; !ok {
			t.Errorf("map %s (label %s): no memory reported", name, MapLabel(name))
		}
	}
	for _, label := range []string{"services", "conntrack_tcp", "maglev_1021", "maglev_131071", "policy"} {
		if _, ok := before[label]; !ok {
			t.Errorf("no memory reported for %s (have %v)", label, before)
		}
	}
	class, _ := bpf.MaglevClassOfSize(1021)
	tables := map[uint32][]uint32{}
	for id := range uint32(100) {
		tables[id+1] = make([]uint32, 1021)
	}
	if err := dp.SetMaglevTables(class, tables); err != nil {
		t.Fatal(err)
	}
	after := memory(t, m)
	if grew := after["maglev_1021"] - before["maglev_1021"]; grew < 100*1021*4 {
		t.Errorf("100 tables of 1021 slots: map memory grew by %.0f bytes, want at least %d", grew, 100*1021*4)
	}
	if after["maglev_251"] != before["maglev_251"] {
		t.Errorf("another class's memory moved: %v -> %v", before["maglev_251"], after["maglev_251"])
	}
}
