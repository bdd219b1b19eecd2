package config

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
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
