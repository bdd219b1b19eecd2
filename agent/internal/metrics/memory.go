package metrics

import (
	"regexp"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-net/sluice/bpf"
)

var mapMemory = prometheus.NewDesc("sluice_bpf_map_memory_bytes",
	"Kernel memory of a datapath map, as the kernel accounts it (memlock); the Maglev maps follow the tables' sizes.",
	[]string{"map"}, nil)

// memoryCollector reads the kernel's memory accounting of every map of the
// datapath at scrape time.
type memoryCollector struct{ dp *bpf.Datapath }

func (c *memoryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- mapMemory }

func (c *memoryCollector) Collect(ch chan<- prometheus.Metric) {
	mem, err := c.dp.MapMemory()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(mapMemory, err)
		return
	}
	for name, n := range mem {
		ch <- prometheus.MustNewConstMetric(mapMemory, prometheus.GaugeValue, float64(n), MapLabel(name))
	}
}

var mapVersion = regexp.MustCompile(`^sluice_(.*)_v[0-9]+$`)

// MapLabel is the map label of the pinned map name: the one
// sluice_map_capacity uses for it (conntrack_tcp for sluice_ct_tcp_v1),
// else the name without its prefix and version (maglev_1021; maglev_v1
// for the earlier releases' Maglev map).
func MapLabel(pinned string) string {
	switch pinned {
	case "sluice_ct_tcp_v1":
		return "conntrack_tcp"
	case "sluice_ct_other_v1":
		return "conntrack_other"
	case "sluice_maglev_v1":
		return "maglev_v1"
	}
	if m := mapVersion.FindStringSubmatch(pinned); m != nil {
		return m[1]
	}
	return pinned
}
