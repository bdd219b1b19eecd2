package compile

import (
	"slices"
	"testing"
)

func TestPortPrefixes(t *testing.T) {
	tests := []struct {
		from, to uint16
		want     []PortPrefix
	}{
		{80, 80, []PortPrefix{{80, 16}}},
		{0, 0, []PortPrefix{{0, 16}}},
		{65535, 65535, []PortPrefix{{65535, 16}}},
		{0, 65535, []PortPrefix{{0, 0}}},
		{8000, 8099, []PortPrefix{{8000, 10}, {8064, 11}, {8096, 14}}},
		{1024, 65535, []PortPrefix{{1024, 6}, {2048, 5}, {4096, 4}, {8192, 3}, {16384, 2}, {32768, 1}}},
		{32768, 65535, []PortPrefix{{32768, 1}}},
		{80, 81, []PortPrefix{{80, 15}}},
		{81, 82, []PortPrefix{{81, 16}, {82, 16}}},
		{9, 8, nil},
	}
	for _, tt := range tests {
		if got := PortPrefixes(tt.from, tt.to); !slices.Equal(got, tt.want) {
			t.Errorf("PortPrefixes(%d, %d) = %v, want %v", tt.from, tt.to, got, tt.want)
		}
	}
	if got := PortPrefixes(1, 65535); len(got) != 16 {
		t.Errorf("PortPrefixes(1, 65535) = %v, want 16 prefixes", got)
	}
}

// Every range is covered exactly, each port once, by prefixes no two of
// which could merge into one (so the cover is minimal).
func TestPortPrefixesCoverExactly(t *testing.T) {
	ranges := [][2]uint16{{1, 65535}, {0, 65534}, {7999, 8101}, {1, 1023}, {443, 8443}, {30000, 32767}, {12345, 54321}}
	for _, r := range ranges {
		var hits [65536]uint8
		pps := PortPrefixes(r[0], r[1])
		for i, pp := range pps {
			size := 1 << (16 - int(pp.Bits))
			if int(pp.Port)%size != 0 {
				t.Errorf("%v: %v not aligned", r, pp)
			}
			for p := int(pp.Port); p < int(pp.Port)+size; p++ {
				hits[p]++
			}
			if i > 0 {
				prev := pps[i-1]
				if prev.Bits == pp.Bits && int(prev.Port)%(2*size) == 0 && int(prev.Port)+size == int(pp.Port) {
					t.Errorf("%v: %v and %v could be one prefix", r, prev, pp)
				}
			}
		}
		for p, n := range hits {
			if in := p >= int(r[0]) && p <= int(r[1]); (in && n != 1) || (!in && n != 0) {
				t.Fatalf("%v: port %d covered %d times", r, p, n)
			}
		}
	}
}
