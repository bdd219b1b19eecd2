package config

import (
	"strings"
	"testing"
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
