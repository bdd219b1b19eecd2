package metrics

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
)

// TestConntrackGC: a pass's stats land per map, and a failed pass is
// counted as such.
func TestConntrackGC(t *testing.T) {
	m := New()
	m.ObserveConntrackGC([]bpf.CTStats{
		{Map: "tcp", Live: 250, Deleted: 30, Capacity: 1000},
		{Map: "other", Live: 10, Deleted: 5, Capacity: 100},
	}, 20*time.Millisecond, nil, 15*time.Second)
	m.ObserveConntrackGC([]bpf.CTStats{{Map: "tcp", Live: 200, Deleted: 50, Capacity: 1000}},
		time.Millisecond, errors.New("walk failed"), 30*time.Second)
	want := `
sluice_conntrack_entries{map="other"} 10
sluice_conntrack_entries{map="tcp"} 200
sluice_conntrack_fill_ratio{map="other"} 0.1
sluice_conntrack_fill_ratio{map="tcp"} 0.2
sluice_conntrack_gc_deleted_total{map="other"} 5
sluice_conntrack_gc_deleted_total{map="tcp"} 80
sluice_conntrack_gc_runs_total{result="error"} 1
sluice_conntrack_gc_runs_total{result="ok"} 1
sluice_conntrack_gc_interval_seconds 30
`
	want += `sluice_conntrack_gc_duration_seconds_count 2
sluice_map_entries{map="conntrack_tcp"} 200
`
	compare(t, m, want)
}

// TestDatapathCounters: the datapath's event counters, summed over CPUs,
// are read at scrape.
func TestDatapathCounters(t *testing.T) {
	dp := bpftest.Load(t, bpf.Config{})
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for c, n := range map[bpf.Counter]uint64{
		bpf.CounterCTReplyRestored: 1, bpf.CounterCTForwardRestored: 2, bpf.CounterCTReopened: 3,
		bpf.CounterAffinityStale: 4, bpf.CounterCTInsertFailed: 5, bpf.CounterEventsSuppressed: 6, bpf.CounterEventsLost: 7,
	} {
		perCPU := make([]uint64, cpus)
		perCPU[0], perCPU[cpus-1] = n, 10*n // the same CPU when there is one
		if err := dp.Counters.Put(uint32(c), perCPU); err != nil {
			t.Fatal(err)
		}
	}
	m := New()
	m.RegisterDatapath(dp)
	sum := func(n uint64) uint64 {
		if cpus == 1 {
			return 10 * n
		}
		return 11 * n
	}
	want := `
sluice_affinity_stale_total ` + itoa(sum(4)) + `
sluice_conntrack_insert_failed_total ` + itoa(sum(5)) + `
sluice_conntrack_reopened_total ` + itoa(sum(3)) + `
sluice_conntrack_restored_total{direction="forward"} ` + itoa(sum(2)) + `
sluice_conntrack_restored_total{direction="reply"} ` + itoa(sum(1)) + `
sluice_flow_events_suppressed_total ` + itoa(sum(6)) + `
sluice_flow_events_lost_total ` + itoa(sum(7)) + `
`
	compare(t, m, want)
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// compare checks that every line of want ("name{labels} value", labels
// sorted; a histogram by its _count) is among the samples m gathers.
func compare(t *testing.T, m *Metrics, want string) {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			var labels []string
			for _, l := range mt.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			name := mf.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case mt.Counter != nil:
				have[fmt.Sprintf("%s %v", name, mt.Counter.GetValue())] = true
			case mt.Gauge != nil:
				have[fmt.Sprintf("%s %v", name, mt.Gauge.GetValue())] = true
			case mt.Histogram != nil:
				have[fmt.Sprintf("%s_count %d", name, mt.Histogram.GetSampleCount())] = true
			}
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(want), "\n") {
		if !have[line] {
			t.Errorf("missing sample %s", line)
		}
	}
}
