package config

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-net/sluice/bpf"
)

func TestConntrackSizes(t *testing.T) {
	const gib = 1 << 30
	for _, c := range []struct {
		mem        uint64
		tcp, other uint32
	}{
		{0, MinAutoConntrackTCP, MinAutoConntrackOther},
		{2 * gib, MinAutoConntrackTCP, MinAutoConntrackOther},
		// 24 GiB: 0.25 % is 64.4 MB, 503,316 entries of 128 bytes, two
		// thirds for TCP, rounded down to multiples of 1024.
		{24 * gib, 334848, 166912},
		{64 * gib, 893952, 446464},
		{4096 * gib, MaxAutoConntrackTCP, MaxAutoConntrackOther},
	} {
		tcp, other := ConntrackSizes(c.mem)
		if tcp != c.tcp || other != c.other {
			t.Errorf("%d GiB: got %d, %d, want %d, %d", c.mem/gib, tcp, other, c.tcp, c.other)
		}
		if tcp%1024 != 0 || other%1024 != 0 {
			t.Errorf("%d GiB: %d, %d not multiples of 1024", c.mem/gib, tcp, other)
		}
	}
}

func TestMemTotal(t *testing.T) {
	got, err := MemTotal(strings.NewReader("MemFree:  100 kB\nMemTotal:       24684096 kB\nMemAvailable: 1 kB\n"))
	if err != nil || got != 24684096*1024 {
		t.Errorf("got %d, %v", got, err)
	}
	for _, bad := range []string{"MemFree: 1 kB\n", "MemTotal: lots kB\n", "MemTotal: 5 MB\n"} {
		if _, err := MemTotal(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestNextCTGCInterval(t *testing.T) {
	ct := func(live, deleted int) bpf.CTStats {
		return bpf.CTStats{Map: "tcp", Live: live, Deleted: deleted, Capacity: 1000}
	}
	idle := bpf.CTStats{Map: "other", Capacity: 1000}
	for _, c := range []struct {
		name       string
		configured time.Duration
		last       []bpf.CTStats
		want       time.Duration
	}{
		{"no pass yet", time.Minute, nil, time.Minute},
		{"empty", time.Minute, []bpf.CTStats{idle, idle}, time.Minute},
		{"low fill", time.Minute, []bpf.CTStats{ct(250, 0), idle}, time.Minute},
		{"half full", time.Minute, []bpf.CTStats{ct(500, 0), idle}, 30 * time.Second},
		{"the fuller map counts", time.Minute, []bpf.CTStats{ct(400, 0), {Map: "other", Live: 600, Capacity: 1000}}, 18 * time.Second},
		{"three quarters: floor", time.Minute, []bpf.CTStats{ct(750, 0), idle}, CTGCFloor},
		{"full: floor", time.Minute, []bpf.CTStats{ct(1000, 0), idle}, CTGCFloor},
		{"all deleted: half", time.Minute, []bpf.CTStats{ct(0, 200), idle}, 30 * time.Second},
		{"a quarter deleted", time.Minute, []bpf.CTStats{ct(150, 50), idle}, 52500 * time.Millisecond},
		{"small churn ignored", time.Minute, []bpf.CTStats{ct(1, 9), idle}, time.Minute},
		{"fill beats churn", time.Minute, []bpf.CTStats{ct(700, 300), idle}, 6 * time.Second},
		{"configured under the floor", 200 * time.Millisecond, []bpf.CTStats{ct(1000, 0)}, 200 * time.Millisecond},
		{"no capacity", time.Minute, []bpf.CTStats{{Live: 5}}, time.Minute},
	} {
		if got := NextCTGCInterval(c.configured, c.last); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}
