package bpf

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/internal/testutil/bpffs"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

// TestReloadKeepsPinnedState: a restarted agent finds its services and
// conntrack where it left them, and the CNI can open the same pins.
func TestReloadKeepsPinnedState(t *testing.T) {
	bpffs.Require(t)
	root := bpffs.Root(t)
	d, err := Load(Config{PinRoot: root, MaglevSize: 251})
	if err != nil {
		t.Fatal(err)
	}
	install(t, d, oneBackend(1, vip4, unix.IPPROTO_TCP, be4a))
	addEndpoints(t, d, 1, client4.Addr())
	run(t, d.FromPod, build(t, flow{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S"}))
	d.Close()

	d2, err := Load(Config{PinRoot: root, MaglevSize: 251})
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	defer d2.Close()
	var sv ServiceValue
	if err := d2.Services.Lookup(ServiceKey{Addr: Addr(vip4.Addr()), Port: Port(80), Proto: unix.IPPROTO_TCP}, &sv); err != nil || sv.Id != 1 {
		t.Errorf("service lost across reload: %+v, %v", sv, err)
	}
	if n := countEntries(t, d2.ConntrackTCP); n != 2 {
		t.Errorf("conntrack has %d entries after reload, want the flow's 2", n)
	}
	// The reloaded programs use the pinned maps: the flow still translates.
	_, out := run(t, d2.FromPod, build(t, flow{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "A"}))
	if got := backendOf(t, out); got != be4a {
		t.Errorf("after reload flow goes to %v, want %v", got, be4a)
	}

	ro, err := OpenPinned(root)
	if err != nil {
		t.Fatalf("open pinned: %v", err)
	}
	defer ro.Close()
	if n := countEntries(t, ro.Services); n != 1 {
		t.Errorf("OpenPinned sees %d services, want 1", n)
	}
	if got := ro.MaglevMaxSize(); got != 251 {
		t.Errorf("OpenPinned sees a largest Maglev size of %d, want 251", got)
	}
}

func countEntries(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	n := 0
	it := m.Iterate()
	k := make([]byte, m.KeySize())
	v := make([]byte, m.ValueSize())
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestIncompatiblePinsRefused: a pinned map of another layout or size is
// an error naming the problem, never silently reused.
func TestIncompatiblePinsRefused(t *testing.T) {
	bpffs.Require(t)
	t.Run("map capacity changed", func(t *testing.T) {
		root := bpffs.Root(t)
		d, err := Load(Config{PinRoot: root, MaglevSize: 251})
		if err != nil {
			t.Fatal(err)
		}
		d.Close()
		_, err = Load(Config{PinRoot: root, MaglevSize: 251, MaxServices: 1024})
		if err == nil || !strings.Contains(err.Error(), "layout") || !strings.Contains(err.Error(), "MaxEntries") {
			t.Errorf("got %v, want a layout error naming MaxEntries", err)
		}
	})
	t.Run("value layout changed", func(t *testing.T) {
		root := bpffs.Root(t)
		if err := os.MkdirAll(mapsDir(root), 0o700); err != nil {
			t.Fatal(err)
		}
		old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "sluice_services_v1", Type: ebpf.Hash, KeySize: 20, ValueSize: 12, MaxEntries: 65536})
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close()
		if err := old.Pin(filepath.Join(mapsDir(root), "sluice_services_v1")); err != nil {
			t.Fatal(err)
		}
		_, err = Load(Config{PinRoot: root, MaglevSize: 251})
		if err == nil || !strings.Contains(err.Error(), "ValueSize") {
			t.Errorf("got %v, want a layout error naming ValueSize", err)
		}
	})
	t.Run("maglev size changed", func(t *testing.T) {
		root := bpffs.Root(t)
		d, err := Load(Config{PinRoot: root, MaglevSize: 251})
		if err != nil {
			t.Fatal(err)
		}
		install(t, d, oneBackend(1, vip4, unix.IPPROTO_TCP, be4a))
		d.Close()
		_, err = Load(Config{PinRoot: root, MaglevSize: 509})
		if err == nil || !strings.Contains(err.Error(), "sluice_maglev_509_v1") || !strings.Contains(err.Error(), "MaxEntries") {
			t.Errorf("got %v, want a layout error naming the map of the new largest size", err)
		}
	})
	t.Run("maglev size not prime", func(t *testing.T) {
		_, err := Load(Config{PinRoot: bpffs.Root(t), MaglevSize: 1000})
		if err == nil || !strings.Contains(err.Error(), "MaglevSize: 1000 is not prime") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("nothing pinned", func(t *testing.T) {
		_, err := OpenPinned(bpffs.Root(t))
		if err == nil || !strings.Contains(err.Error(), "has the agent loaded the datapath") {
			t.Errorf("got %v", err)
		}
	})
}

// TestAttach: both attach flavours put the programs on the device, are
// idempotent, survive the loader closing, and detach cleanly.
func TestAttach(t *testing.T) {
	bpffs.Require(t)
	for _, mode := range []struct {
		name string
		mode AttachMode
	}{{"tcx", AttachTCX}, {"legacy clsact", AttachLegacy}} {
		t.Run(mode.name, func(t *testing.T) {
			d := loadTest(t, Config{})
			ns := netnstest.New(t, "sl-attach")
			ns.VethPair(t, "hveth0", nil, "pveth0")
			ns.Do(t, func() {
				for i := range 2 {
					if err := d.AttachPod("hveth0", mode.mode); err != nil {
						t.Fatalf("attach #%d: %v", i+1, err)
					}
				}
				a, err := d.Attached("hveth0")
				if err != nil || !a.FromPodIngress || !a.ToPodEgress {
					t.Fatalf("after attach: %+v, %v", a, err)
				}
				if mode.mode == AttachTCX {
					ifindex := ifindexOf(t, "hveth0")
					res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
					if err != nil || len(res.Programs) != 1 {
						t.Errorf("ingress programs after two attaches: %+v, %v; want exactly one", res, err)
					}
				}
			})

			// The loader goes away (the CNI plugin exits): attachments stay.
			d.Close()
			ro, err := OpenPinned(d.PinRoot())
			if err != nil {
				t.Fatal(err)
			}
			defer ro.Close()
			ns.Do(t, func() {
				if a, err := ro.Attached("hveth0"); err != nil || !a.FromPodIngress || !a.ToPodEgress {
					t.Errorf("after loader closed: %+v, %v", a, err)
				}
				if err := DetachPod(ro.PinRoot(), "hveth0"); err != nil {
					t.Fatalf("detach: %v", err)
				}
				if a, err := ro.Attached("hveth0"); err != nil || a.FromPodIngress || a.ToPodEgress {
					t.Errorf("after detach: %+v, %v", a, err)
				}
				if err := DetachPod(ro.PinRoot(), "hveth0"); err != nil {
					t.Errorf("second detach: %v", err)
				}
				if err := DetachPod(ro.PinRoot(), "no-such-dev"); err != nil {
					t.Errorf("detach of a missing device: %v", err)
				}
			})
			if left, _ := filepath.Glob(filepath.Join(linksDir(ro.PinRoot()), "*")); len(left) != 0 {
				t.Errorf("link pins left after detach: %v", left)
			}
		})
	}
}

func ifindexOf(t *testing.T, name string) int {
	t.Helper()
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return ifi.Index
}

// TestReattach: a newly loaded datapath (the agent restarted or upgraded)
// takes over the pods' attachments, in both flavours; the pins of links
// whose device has gone are removed.
func TestReattach(t *testing.T) {
	bpffs.Require(t)
	for _, mode := range []struct {
		name string
		mode AttachMode
	}{{"tcx", AttachTCX}, {"legacy clsact", AttachLegacy}} {
		t.Run(mode.name, func(t *testing.T) {
			root := bpffs.Root(t)
			first, err := Load(Config{PinRoot: root, MaglevSize: 251})
			if err != nil {
				t.Fatal(err)
			}
			ns := netnstest.New(t, "sl-reattach")
			ns.VethPair(t, "hveth0", nil, "pveth0")
			ns.Do(t, func() {
				if err := first.AttachPod("hveth0", mode.mode); err != nil {
					t.Fatal(err)
				}
				addEndpoints(t, first, uint32(ifindexOf(t, "hveth0")), client4.Addr())
			})
			first.Close()

			next, err := Load(Config{PinRoot: root, MaglevSize: 251})
			if err != nil {
				t.Fatal(err)
			}
			defer next.Close()
			want, _ := mustInfo(t, next.FromPod).ID()
			var st ReattachStats
			ns.Do(t, func() {
				if st, err = next.Reattach(); err != nil {
					t.Fatalf("reattach: %v", err)
				}
				if got := ingressProgram(t, "hveth0", mode.mode); got != want {
					t.Errorf("ingress runs program %d after reattach, want the new from_pod %d", got, want)
				}
			})
			if st.Updated != 2 {
				t.Errorf("reattach %+v, want both hooks updated", st)
			}
			if again, err := next.Reattach(); err != nil || (mode.mode == AttachTCX && again.Updated != 0) {
				t.Errorf("second reattach: %+v, %v; want nothing to update", again, err)
			}

			if mode.mode == AttachTCX {
				ns.IP(t, "link", "del", "hveth0")
				st, err := next.Reattach()
				if err != nil || st.Stale != 2 {
					t.Errorf("reattach after the veth went: %+v, %v; want its 2 pins removed", st, err)
				}
				if left, _ := filepath.Glob(filepath.Join(linksDir(root), "*")); len(left) != 0 {
					t.Errorf("link pins left: %v", left)
				}
			}
		})
	}
}

// ingressProgram is the ID of the program on dev's tc ingress, in the
// calling thread's namespace.
func ingressProgram(t *testing.T, dev string, mode AttachMode) ebpf.ProgramID {
	t.Helper()
	ifindex := ifindexOf(t, dev)
	if mode == AttachTCX {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
		if err != nil || len(res.Programs) != 1 {
			t.Fatalf("tcx ingress programs: %+v, %v", res, err)
		}
		return res.Programs[0].ID
	}
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	filters, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil || len(filters) != 1 {
		t.Fatalf("ingress filters: %v, %v", filters, err)
	}
	f, ok := filters[0].(*netlink.BpfFilter)
	if !ok {
		t.Fatalf("ingress filter %T is not cls_bpf", filters[0])
	}
	return ebpf.ProgramID(f.Id)
}
