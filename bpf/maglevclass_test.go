package bpf

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/bpf/maglev"
)

// TestMaglevClassPicksTheMap: a new flow reads its service's table from
// the map of the size class its entry names, for every class, and finds
// none (a drop, never another service's backend) in a class where its
// table is not. It also checks that the Go side's sizes are the datapath's
// (MaglevSizes, maglev.Sizes, the maps' value sizes).
func TestMaglevClassPicksTheMap(t *testing.T) {
	d := loadTest(t, Config{MaglevSize: 131071, MaxServices: 64})
	if len(maglev.Sizes) != len(MaglevSizes) {
		t.Fatalf("maglev.Sizes %v, bpf.MaglevSizes %v", maglev.Sizes, MaglevSizes)
	}
	for i, size := range MaglevSizes {
		c, ok := MaglevClassOfSize(size)
		if !ok || c != MaglevClass(i+1) || maglev.Sizes[i] != size || d.MaglevClassSize(c) != size {
			t.Fatalf("size %d: class %d (%v), map of %d slots, maglev.Sizes[%d] = %d", size, c, ok, d.MaglevClassSize(c), i, maglev.Sizes[i])
		}
	}
	if got := d.MaglevMaxSize(); got != 131071 {
		t.Errorf("largest size %d, want 131071", got)
	}
	for i, size := range MaglevSizes {
		class := MaglevClass(i + 1)
		id := uint32(10 + i)
		vip := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 1, byte(i)}), 80)
		be := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, 7, byte(i)}), 8080)
		if err := d.Backends.Put(id, BackendValue{Addr: Addr(be.Addr()), Port: Port(be.Port()), SvcId: id}); err != nil {
			t.Fatal(err)
		}
		table := make([]uint32, size)
		for s := range table {
			table[s] = id
		}
		if err := d.SetMaglevTable(class, id, table); err != nil {
			t.Fatal(err)
		}
		key := ServiceKey{Addr: Addr(vip.Addr()), Port: Port(vip.Port()), Proto: unix.IPPROTO_TCP}
		for _, named := range []MaglevClass{class, class%MaglevClass(len(MaglevSizes)) + 1} {
			if err := d.Services.Put(key, ServiceValue{Id: id, BackendCount: 1, Flags: named.Flags()}); err != nil {
				t.Fatal(err)
			}
			// A new source port each time: a new flow, balanced afresh.
			client := netip.AddrPortFrom(client4.Addr(), uint16(41000+i*2+int(named)%2))
			ret, out := run(t, d.FromPod, build(t, flow{src: client, dst: vip, proto: unix.IPPROTO_TCP, tcpFlags: "S"}))
			if named == class {
				if ret != actOK || backendOf(t, out) != be {
					t.Errorf("class %d (%d slots): verdict %d, to %v, want %v", class, size, ret, backendOf(t, out), be)
				}
			} else if ret != actShot {
				t.Errorf("class %d named, table in class %d: verdict %d, want a drop", named, class, ret)
			}
		}
	}
}
