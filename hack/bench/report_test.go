package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPercentile(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3}
	for p, want := range map[float64]float64{0: 1, 0.5: 3, 1: 5} {
		if got := percentile(v, p); got != want {
			t.Errorf("percentile(%v, %v) = %v, want %v", v, p, got, want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile of nothing = %v, want 0", got)
	}
	if v[0] != 5 {
		t.Error("percentile sorted its input in place")
	}
}

func TestWriteDocReplacesOnlyTheGeneratedSection(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "benchmarks.md")
	if err := os.WriteFile(path, []byte("# Benchmarks\n\nhand-written text\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res := &Results{Date: "2026-11-25", Machine: "test machine", Repeat: 1, Scales: []ScaleResult{{Services: 1000, Impl: map[string]*ImplResult{
		"sluice": {ConnPerSec: []float64{3000}, PodIPConnPerSec: []float64{4000}, SyncSeconds: 1, Gbps: []float64{9, 11, 10}, PodIPGbps: []float64{20},
			ChangeP99ms: 20, ChangesSeen: 100, RSSMiB: 50, KernelMiB: ptrTo(12)},
		"iptables": {ConnPerSec: []float64{2000}, SyncSeconds: 10},
		"nftables": {ConnPerSec: []float64{2500}, SyncSeconds: 2},
	}}}}
	for range 2 { // the second run replaces the first run's section
		if err := writeDoc(path, filepath.Join(dir, "bench"), res); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	if !strings.HasPrefix(doc, "# Benchmarks\n\nhand-written text\n") {
		t.Errorf("the hand-written part changed:\n%s", doc)
	}
	if strings.Count(doc, docStart) != 1 || strings.Count(doc, docEnd) != 1 {
		t.Errorf("want exactly one generated section:\n%s", doc)
	}
	for _, want := range []string{"| 1000 | 4000 (4000–4000) | 3000 (3000–3000) | 2000 (2000–2000) | 2500 (2500–2500) | 0.75x | 1.50x | 1.20x |", "| 10.00 s | 2.00 s | 10.00x |",
		"| 1000 | 20.00 (20.00–20.00) | 10.00 (9.00–11.00) | – | – | 0.50x | – | – |", "![Connections per second through a ClusterIP](bench/conn-rate.png)"} {
		if !strings.Contains(doc, want) {
			t.Errorf("the tables lack %q:\n%s", want, doc)
		}
	}
	for _, f := range figures() {
		if st, err := os.Stat(filepath.Join(dir, "bench", f.file)); err != nil || st.Size() < 1000 {
			t.Errorf("plot %s not written (%v)", f.file, err)
		}
	}
}
