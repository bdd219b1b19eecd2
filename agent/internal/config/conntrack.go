package config

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-net/sluice/bpf"
)

// Conntrack sizing to the node's memory, as Cilium sizes its maps
// (bpf-map-dynamic-size-ratio): the two conntrack maps may take
// CTMemoryShare of the node's RAM, two thirds for TCP (the share of the
// loader's defaults), each clamped to a sane range.
const (
	CTMemoryShare = 0.0025
	// ctEntryBytes is what one entry costs the kernel: key and value (40
	// bytes each) and the hash table element's header, rounded up.
	ctEntryBytes = 128

	MinAutoConntrackTCP   = 1 << 17
	MaxAutoConntrackTCP   = 1 << 22
	MinAutoConntrackOther = 1 << 16
	MaxAutoConntrackOther = 1 << 21
)

// ConntrackSizes returns the conntrack capacities (TCP, other) for a node
// with memTotal bytes of RAM. Sizes are multiples of 1024.
func ConntrackSizes(memTotal uint64) (tcp, other uint32) {
	entries := float64(memTotal) * CTMemoryShare / ctEntryBytes
	size := func(share float64, lo, hi uint32) uint32 {
		n := entries * share
		switch {
		case n <= float64(lo):
			return lo
		case n >= float64(hi):
			return hi
		}
		return uint32(n) &^ 1023
	}
	return size(2.0/3, MinAutoConntrackTCP, MaxAutoConntrackTCP), size(1.0/3, MinAutoConntrackOther, MaxAutoConntrackOther)
}

// MemTotal reads the MemTotal line of /proc/meminfo, in bytes.
func MemTotal(meminfo io.Reader) (uint64, error) {
	sc := bufio.NewScanner(meminfo)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "MemTotal:" {
			continue
		}
		kb, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil || (len(f) > 2 && f[2] != "kB") {
			return 0, fmt.Errorf("meminfo: unexpected line %q", sc.Text())
		}
		return kb * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read meminfo: %w", err)
	}
	return 0, fmt.Errorf("meminfo: no MemTotal line")
}

// Adaptive conntrack garbage collection.
const (
	// CTGCFloor is the shortest time between passes: under it a pass
	// over a large map would take a whole CPU.
	CTGCFloor = time.Second
	// At or below ctGCFillLow the configured interval holds; from there
	// it shrinks in step with the fill, to the floor at ctGCFillHigh.
	ctGCFillLow  = 0.25
	ctGCFillHigh = 0.75
	// A pass's deletions count as churn only when they freed at least
	// this share of the map's capacity: a small map turning over is no
	// reason to collect more often.
	ctGCChurnMin = 0.01
)

// NextCTGCInterval is the time until the next conntrack garbage
// collection, given the configured interval (the longest) and the last
// pass's stats (none: the configured interval). It shrinks as the fuller
// map fills past a quarter, to CTGCFloor at three quarters (or the
// configured interval, if that is shorter), and to as little as half when
// a pass deleted a large share of a map's entries (flows come and go
// faster than the interval: the next pass would find as many).
func NextCTGCInterval(configured time.Duration, last []bpf.CTStats) time.Duration {
	scale := 1.0
	for _, s := range last {
		if s.Capacity <= 0 {
			continue
		}
		// Fill: 1 at ctGCFillLow, 0 at ctGCFillHigh.
		f := 1 - (s.Fill()-ctGCFillLow)/(ctGCFillHigh-ctGCFillLow)
		scale = min(scale, f)
		// Churn: the share of the entries the pass found that it
		// deleted; all of them halves the interval.
		if before := s.Deleted + s.Live; before > 0 && float64(s.Deleted) >= ctGCChurnMin*float64(s.Capacity) {
			scale = min(scale, 1-float64(s.Deleted)/float64(before)/2)
		}
	}
	floor := min(CTGCFloor, configured)
	next := time.Duration(float64(configured) * max(scale, 0))
	return max(min(next, configured), floor)
}
