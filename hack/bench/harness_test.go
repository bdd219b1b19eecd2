package main

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRotationTurnsTheOrderEachRepeat(t *testing.T) {
	want := [][]string{
		{"sluice", "iptables", "nftables"},
		{"iptables", "nftables", "sluice"},
		{"nftables", "sluice", "iptables"},
		{"sluice", "iptables", "nftables"},
	}
	for rep, w := range want {
		if got := rotation(impls, rep); !slices.Equal(got, w) {
			t.Errorf("rotation(%v, %d) = %v, want %v", impls, rep, got, w)
		}
	}
	if !slices.Equal(impls, []string{"sluice", "iptables", "nftables"}) {
		t.Errorf("rotation changed its input: %v", impls)
	}
	// An implementation that never answered is left out of the turn.
	if got := rotation([]string{"sluice", "nftables"}, 1); !slices.Equal(got, []string{"nftables", "sluice"}) {
		t.Errorf("rotation of two, repeat 1 = %v", got)
	}
	if got := rotation(nil, 2); got != nil {
		t.Errorf("rotation of none = %v", got)
	}
}

func TestMatchChangesWaitsPastTheNextChange(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	changes := []observation{{at(0), "be-1"}, {at(3000), "be-0"}, {at(40000), "be-1"}, {at(41200), "be-0"}}
	lines := []observation{
		{at(-500), "be-0"},
		{at(2500), "be-1"},  // 2.5 s: later than a 1.2 s change interval, still counted
		{at(3020), "be-0"},  // 20 ms
		{at(75000), "be-1"}, // 35 s after its change: past the 30 s timeout
		{at(80000), "be-0"}, // 38.8 s: too late as well
	}
	lat, timedOut := matchChanges(changes, lines, 30*time.Second)
	if !slices.Equal(lat, []float64{2500, 20}) || timedOut != 2 {
		t.Errorf("matchChanges = %v, %d timed out; want [2500 20], 2", lat, timedOut)
	}
	// Not cut at the next change either: a change is timed to its own
	// backend answering, whenever within the timeout.
	lat, timedOut = matchChanges([]observation{{at(0), "be-1"}, {at(1200), "be-0"}}, []observation{{at(2500), "be-1"}, {at(2600), "be-0"}}, 30*time.Second)
	if !slices.Equal(lat, []float64{2500, 1400}) || timedOut != 0 {
		t.Errorf("matchChanges across the next change = %v, %d timed out; want [2500 1400], 0", lat, timedOut)
	}
	// An answer from before the change does not count for it.
	lat, timedOut = matchChanges([]observation{{at(100), "be-0"}}, lines[:1], time.Minute)
	if len(lat) != 0 || timedOut != 1 {
		t.Errorf("an answer before the change was matched: %v, %d", lat, timedOut)
	}
	if o, ok := parseObservation("1000000000123 be-1"); !ok || o.host != "be-1" || !o.at.Equal(time.Unix(1000, 123)) {
		t.Errorf("parseObservation = %v, %v", o, ok)
	}
	for _, bad := range []string{"", "12 a b", "x be-0"} {
		if _, ok := parseObservation(bad); ok {
			t.Errorf("parseObservation(%q) accepted", bad)
		}
	}
}

func TestParseStatCPUCountsChildren(t *testing.T) {
	// Fields 14-17: utime 150, stime 50, cutime 300, cstime 100 ticks.
	stat := "4242 (kube proxy) S 1 4242 4242 0 -1 4194560 100 200 0 0 150 50 300 100 20 0 12 0 100 1000 50\n"
	self, children, err := parseStatCPU(stat)
	if err != nil || self != 2 || children != 4 {
		t.Errorf("parseStatCPU = %v, %v, %v; want 2, 4", self, children, err)
	}
	if _, _, err := parseStatCPU("4242 (short) S 1 2"); err == nil {
		t.Error("a short stat line was accepted")
	}
}

func TestParseConntrackStat(t *testing.T) {
	s := "entries  clashres found     new\n0000012c  00000000 00000000 00000000\n0000012c  00000001 00000000 00000000\n"
	if n, err := parseConntrackStat(s); err != nil || n != 300 {
		t.Errorf("parseConntrackStat = %d, %v; want 300", n, err)
	}
	if _, err := parseConntrackStat("searched found\n1 2\n"); err == nil {
		t.Error("a stat without the entries column was accepted")
	}
}

func ptrTo(v float64) *float64 { return &v }

func TestGoals(t *testing.T) {
	s := ScaleResult{Services: 1000, Impl: map[string]*ImplResult{
		"sluice": {ConnPerSec: []float64{9600}, PodIPConnPerSec: []float64{10000}, LimitBackends: 2, Gbps: []float64{9}, PodIPGbps: []float64{10},
			SyncSeconds: 2, ChangeP99ms: 40, ChangesSeen: 20, ChangesMade: 20, RSSMiB: 50, KernelMiB: ptrTo(30)},
		"iptables": {ConnPerSec: []float64{4000}, SyncSeconds: 9, RSSMiB: 40, KernelMiB: ptrTo(60)},
		"nftables": {ConnPerSec: []float64{8500}, SyncSeconds: 480, SyncTimedOut: true, RSSMiB: 45, KernelMiB: ptrTo(20)},
	}}
	want := []goal{
		{"conn/s, Sluice / pod-IP limit", "0.96x", "≥ 0.95x", "met"},
		{"conn/s, Sluice / nftables", "1.13x", "≥ 1.20x", "missed"},
		{"conn/s, Sluice / iptables", "2.40x", "≥ 1.50x", "met"},
		{"throughput, Sluice / pod-IP limit", "0.90x", "≥ 0.95x", "missed"},
		{"sync, iptables / Sluice", "4.50x", "≥ 5x", "missed"},
		{"sync, nftables / Sluice", "> 240.00x", "> 1x", "met"},
		{"change p99, Sluice", "40 ms", "≤ 50 ms", "met"},
		{"RSS + kernel, Sluice vs iptables", "50 + 30 = 80 MiB vs 40 + 60 = 100 MiB", "Sluice below", "met"},
		{"RSS + kernel, Sluice vs nftables", "50 + 30 = 80 MiB vs 45 + 20 = 65 MiB", "Sluice below", "missed"},
	}
	if got := goals(s); !slices.Equal(got, want) {
		t.Errorf("goals:\n got %q\nwant %q", got, want)
	}
	// iptables never answering: its ratio is not a miss, and not a figure;
	// changes not seen are said; kernel memory not measured is not judged.
	s.Impl["iptables"].SyncTimedOut = true
	s.Impl["sluice"].ChangesSeen, s.Impl["sluice"].ChangeP99ms, s.Impl["sluice"].ChangeTimeoutMs = 18, 30000, 30000
	s.Impl["nftables"].KernelMiB = nil
	s.Impl["sluice"].LimitBackends = 0
	got := goals(s)
	for i, w := range map[int]goal{
		0: {"conn/s, Sluice / pod-IP limit", "0.96x (limit against one backend)", "≥ 0.95x", "met"},
		2: {"conn/s, Sluice / iptables", "iptables not answering", "≥ 1.50x", "–"},
		4: {"sync, iptables / Sluice", "> 4.50x", "≥ 5x", "–"},
		6: {"change p99, Sluice", "30000 ms (2 of 20 not seen within 30 s)", "≤ 50 ms", "missed"},
		8: {"RSS + kernel, Sluice vs nftables", "–", "Sluice below", "–"},
	} {
		if got[i] != w {
			t.Errorf("goal %d = %q, want %q", i, got[i], w)
		}
	}
}

// A results file of a run before the fairer harness (the full run of
// 2026-11-25, kept in testdata) predates the new fields: the document is
// still generated from it, new figures shown as not measured.
func TestOldResultsFileStillReports(t *testing.T) {
	data, err := os.ReadFile("testdata/results-2026-11-25.json")
	if err != nil {
		t.Fatal(err)
	}
	var r Results
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	out := tables(&r)
	for _, want := range []string{"(limit against one backend)", "| RSS + kernel, Sluice vs iptables | – | Sluice below | – |", "the first backend's pod IP alone"} {
		if !strings.Contains(out, want) {
			t.Errorf("the tables lack %q", want)
		}
	}
}
