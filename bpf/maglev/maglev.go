// Package maglev builds Maglev consistent-hashing lookup tables (Eisenbud et
// al., "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI
// 2016). The datapath hashes each new flow to a slot of its service's table;
// because every node computes the same table from the same backend names,
// and a backend change moves only about 1/N of the slots, flows land on the
// same backend across nodes and survive most backend-set changes.
package maglev

import (
	"fmt"
	"hash/fnv"
	"slices"
)

// Table returns a lookup table of m slots, each holding an index into
// backends (int32 halves the memory the fill loop walks). backends are stable names (for example "10.0.0.5:8080"); their
// order does not matter. m must be prime and should be well above
// len(backends). An empty backend list yields an empty table.
func Table(backends []string, m uint32) ([]int32, error) {
	if m < 2 || !prime(m) {
		return nil, fmt.Errorf("table size %d is not prime", m)
	}
	if len(backends) == 0 {
		return nil, nil
	}
	if uint64(len(backends)) > uint64(m) {
		return nil, fmt.Errorf("%d backends do not fit a table of %d slots", len(backends), m)
	}
	// Sort so that the result depends on the set, not the order given.
	order := make([]int, len(backends))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if backends[a] < backends[b] {
			return -1
		}
		if backends[a] > backends[b] {
			return 1
		}
		return 0
	})

	// pos[i] walks backend i's permutation offset, offset+skip, ...
	// (mod m) by addition, without a division per step.
	pos := make([]uint32, len(order))
	skip := make([]uint32, len(order))
	for i, b := range order {
		pos[i] = uint32(hash(backends[b], 0) % uint64(m))
		skip[i] = uint32(hash(backends[b], 1)%uint64(m-1)) + 1
	}
	table := make([]int32, m)
	for i := range table {
		table[i] = -1
	}
	filled := uint32(0)
	for {
		for i, b := range order {
			p := pos[i]
			for table[p] >= 0 {
				if p += skip[i]; p >= m {
					p -= m
				}
			}
			table[p] = int32(b)
			if p += skip[i]; p >= m {
				p -= m
			}
			pos[i] = p
			filled++
			if filled == m {
				return table, nil
			}
		}
	}
}

func hash(name string, seed byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte{seed})
	h.Write([]byte(name))
	return h.Sum64()
}

func prime(n uint32) bool {
	for d := uint32(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// Sizes are the table sizes a service's table may have, smallest first:
// primes, each about twice the one before (bpf.MaglevSizes, the maps of
// the datapath, are these).
var Sizes = []uint32{251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071}

// SlotsPerBackend is how many slots per backend a table gets (at least,
// below the largest size): at 100, a backend change moves the ideal 1/N of
// the flows plus 0-3.5 % (TestDisruptionAcrossSizes measures it), and the
// load is spread within a few percent.
const SlotsPerBackend = 100

// Size is the table size for backends backends: the smallest of Sizes at
// least SlotsPerBackend times the count, capped at the largest of Sizes not
// above max (and never below the smallest). It depends on nothing else, so
// every node sizes a service's table alike.
func Size(backends int, max uint32) uint32 {
	limit := Sizes[0]
	for _, s := range Sizes {
		if s <= max {
			limit = s
		}
	}
	want := uint64(backends) * SlotsPerBackend
	for _, s := range Sizes {
		if uint64(s) >= want || s >= limit {
			return min(s, limit)
		}
	}
	return limit
}
