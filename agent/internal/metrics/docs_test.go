package metrics

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
)

var metricName = regexp.MustCompile(`(sluice|kubeproxy)_[a-z_]+`)

// documented are the metric names docs/reference.md's metrics table
// lists.
func documented(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../../../docs/reference.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "| `sluice_") || strings.HasPrefix(line, "| `kubeproxy_") {
			cell := strings.SplitN(line, "|", 3)[1]
			for _, n := range metricName.FindAllString(cell, -1) {
				out[n] = true
			}
		}
	}
	return out
}

// TestMetricsDocumented: every metric the agent registers (with a series
// of each vector made) is in docs/reference.md, and the example Grafana
// dashboard asks only for documented metrics.
func TestMetricsDocumented(t *testing.T) {
	docs := documented(t)
	dp := bpftest.Load(t, bpf.Config{})
	m := New()
	m.RegisterDatapath(dp)
	m.RegisterService()
	ph := m.RegisterProxyHealth()
	ph.Healthz.WithLabelValues("200")
	ph.Livez.WithLabelValues("200")
	f := m.RegisterFlows()
	f.Processed.WithLabelValues("dropped", "drop", "tcp")
	m.Controller("service")
	m.MapFull.WithLabelValues("services")
	m.MapEntries.WithLabelValues("services")
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range fams {
		name := fam.GetName()
		if (strings.HasPrefix(name, "sluice_") || strings.HasPrefix(name, "kubeproxy_")) && !docs[name] {
			t.Errorf("metric %s is not in docs/reference.md's metrics table", name)
		}
	}
	dash, err := os.ReadFile("../../../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range metricName.FindAllString(string(dash), -1) {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_count"), "_sum")
		if !docs[base] {
			t.Errorf("docs/grafana-dashboard.json asks for %s, which docs/reference.md does not list", n)
		}
	}
}
