package maglev

import (
	"fmt"
	"testing"
)

func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("10.0.%d.%d:8080", i/256, i%256)
	}
	return out
}

func TestTableSpreadsSlotsEvenly(t *testing.T) {
	const m = 16381
	for _, n := range []int{1, 3, 10, 100} {
		table, err := Table(names(n), m)
		if err != nil {
			t.Fatal(err)
		}
		counts := make([]int, n)
		for _, b := range table {
			counts[b]++
		}
		ideal := float64(m) / float64(n)
		for b, c := range counts {
			if float64(c) < ideal*0.9 || float64(c) > ideal*1.1 {
				t.Errorf("n=%d: backend %d owns %d slots, want within 10%% of %.0f", n, b, c, ideal)
			}
		}
	}
}

func TestTableDependsOnSetNotOrder(t *testing.T) {
	a := []string{"a:1", "b:1", "c:1"}
	b := []string{"c:1", "a:1", "b:1"}
	ta, _ := Table(a, 251)
	tb, _ := Table(b, 251)
	for i := range ta {
		if a[ta[i]] != b[tb[i]] {
			t.Fatalf("slot %d: %s vs %s", i, a[ta[i]], b[tb[i]])
		}
	}
}

// Removing one of N backends must leave the slots of the others mostly
// where they were: that is what keeps flows on their backend across nodes.
func TestRemovingBackendMovesFewSlots(t *testing.T) {
	const m = 16381
	before := names(10)
	after := before[:9]
	tb, _ := Table(before, m)
	ta, _ := Table(after, m)
	moved := 0
	for i := range tb {
		if tb[i] != 9 && before[tb[i]] != after[ta[i]] {
			moved++
		}
	}
	if frac := float64(moved) / m; frac > 0.05 {
		t.Errorf("%.1f%% of surviving backends' slots moved, want under 5%%", frac*100)
	}
}

func TestTableRejectsBadInput(t *testing.T) {
	if _, err := Table(names(2), 100); err == nil {
		t.Error("non-prime size accepted")
	}
	if _, err := Table(names(20), 7); err == nil {
		t.Error("more backends than slots accepted")
	}
	if tbl, err := Table(nil, 251); err != nil || tbl != nil {
		t.Errorf("empty backends: got %v, %v", tbl, err)
	}
}
