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
// backends. backends are stable names (for example "10.0.0.5:8080"); their
// order does not matter. m must be prime and should be well above
// len(backends). An empty backend list yields an empty table.
func Table(backends []string, m uint32) ([]int, error) {
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

	offset := make([]uint64, len(order))
	skip := make([]uint64, len(order))
	for i, b := range order {
		offset[i] = hash(backends[b], 0) % uint64(m)
		skip[i] = hash(backends[b], 1)%uint64(m-1) + 1
	}
	table := make([]int, m)
	for i := range table {
		table[i] = -1
	}
	next := make([]uint64, len(order))
	filled := uint32(0)
	for {
		for i, b := range order {
			slot := (offset[i] + next[i]*skip[i]) % uint64(m)
			for table[slot] >= 0 {
				next[i]++
				slot = (offset[i] + next[i]*skip[i]) % uint64(m)
			}
			table[slot] = b
			next[i]++
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
