package ctgc

import (
	"testing"
	"time"

	"github.com/sluice-net/sluice/bpf"
)

func TestNextInterval(t *testing.T) {
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
		{"three quarters: floor", time.Minute, []bpf.CTStats{ct(750, 0), idle}, Floor},
		{"full: floor", time.Minute, []bpf.CTStats{ct(1000, 0), idle}, Floor},
		{"all deleted: half", time.Minute, []bpf.CTStats{ct(0, 200), idle}, 30 * time.Second},
		{"a quarter deleted", time.Minute, []bpf.CTStats{ct(150, 50), idle}, 52500 * time.Millisecond},
		{"small churn ignored", time.Minute, []bpf.CTStats{ct(1, 9), idle}, time.Minute},
		{"fill beats churn", time.Minute, []bpf.CTStats{ct(700, 300), idle}, 6 * time.Second},
		{"configured under the floor", 200 * time.Millisecond, []bpf.CTStats{ct(1000, 0)}, 200 * time.Millisecond},
		{"no capacity", time.Minute, []bpf.CTStats{{Live: 5}}, time.Minute},
	} {
		if got := NextInterval(c.configured, c.last); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}
