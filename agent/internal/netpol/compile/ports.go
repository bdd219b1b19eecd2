package compile

import "math/bits"

// PortPrefix is a set of ports: those whose top Bits bits equal Port's.
// Bits 16 is one port, Bits 0 every port.
type PortPrefix struct {
	Port uint16
	Bits uint8
}

// PortPrefixes returns the fewest prefixes that together cover exactly the
// ports from..to (none when to < from), lowest first: each one is the
// largest aligned block that starts at the first uncovered port and ends
// within the range.
func PortPrefixes(from, to uint16) []PortPrefix {
	var out []PortPrefix
	for lo, hi := uint32(from), uint32(to); lo <= hi; {
		// The block's size: as large as lo's alignment allows (all 65536
		// ports at 0), halved until it ends within the range.
		size := uint32(1) << 16
		if lo != 0 {
			size = lo & -lo
		}
		for lo+size-1 > hi {
			size >>= 1
		}
		out = append(out, PortPrefix{Port: uint16(lo), Bits: uint8(16 - bits.TrailingZeros32(size))})
		lo += size
	}
	return out
}
