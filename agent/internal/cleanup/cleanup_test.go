package cleanup

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/agent/internal/masq"
	"github.com/sluice-net/sluice/agent/internal/routes"
	"github.com/sluice-net/sluice/agent/internal/tunnel"
	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
	"github.com/sluice-net/sluice/internal/testutil/cgrouptest"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

// TestCleanup: a node as the agent and the CNI leave it (pins, a tcx link
// and a legacy filter on interfaces, socket LB on a cgroup, the nftables
// table, a route of the routes controller, the overlay device, a managed
// neighbour, the files) is left with none
// of it after Run; a route of another owner stays; a second Run succeeds
// with nothing to do.
func TestCleanup(t *testing.T) {
	dp := bpftest.Load(t, bpf.Config{})
	root := dp.PinRoot()
	ns := netnstest.New(t, "sl-clean")
	ns.VethPair(t, "uplink0", nil, "uplink0p")
	ns.VethPair(t, "legacy0", nil, "legacy0p")
	ns.IP(t, "addr", "add", "192.0.2.1/24", "dev", "uplink0")
	// A route of the routes controller (proto 92), and one of another owner.
	ns.IP(t, "route", "add", "10.244.7.0/24", "via", "192.0.2.7", "proto", "92")
	ns.IP(t, "route", "add", "10.244.8.0/24", "via", "192.0.2.8")
	// Direct server return's managed neighbour for another node.
	ns.IP(t, "neigh", "replace", "192.0.2.7", "dev", "uplink0", "managed")

	cgroup := cgrouptest.New(t)
	var err error
	ns.Do(t, func() {
		if err = dp.AttachDevice("uplink0", bpf.AttachTCX); err != nil {
			return
		}
		if err = dp.AttachDevice("legacy0", bpf.AttachLegacy); err != nil {
			return
		}
		if _, err = tunnel.Ensure(dp, 1450, bpf.AttachTCX); err != nil {
			return
		}
		err = masq.Apply([]netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, 0x534c, masq.PortRange{Min: 32768, Max: 65535})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.AttachSocketLB(cgroup); err != nil {
		t.Fatal(err)
	}
	dp.Close() // the agent has exited; only pins hold the datapath

	dir := t.TempDir()
	o := Options{
		BPFRoot:        root,
		CNIConfFile:    filepath.Join(dir, "10-sluice.conflist"),
		NodeStateFile:  filepath.Join(dir, "node.json"),
		EndpointSocket: filepath.Join(dir, "agent.sock"),
	}
	for _, f := range []string{o.CNIConfFile, o.NodeStateFile} {
		if err := os.WriteFile(f, []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The socket as an agent killed mid-run leaves it.
	ln, err := net.Listen("unix", o.EndpointSocket)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()

	var results []Result
	ns.Do(t, func() { results = Run(o) })
	for _, r := range results {
		t.Logf("%s: %q %v", r.Step, r.Did, r.Err)
		if r.Err != nil || r.Did == "" {
			t.Errorf("first run, %s: did %q, err %v; want something removed", r.Step, r.Did, r.Err)
		}
	}

	// Nothing of Sluice is left.
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Errorf("pin root %s: %v, want it gone", root, err)
	}
	for _, f := range []string{o.CNIConfFile, o.NodeStateFile, o.EndpointSocket} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s: %v, want it gone", f, err)
		}
	}
	if n := cgroupPrograms(t, cgroup); n != 0 {
		t.Errorf("%d programs still attached to the cgroup", n)
	}
	ns.Do(t, func() {
		if _, err := netlink.LinkByName(tunnel.DeviceName); err == nil {
			t.Errorf("the overlay device %s is still there", tunnel.DeviceName)
		}
		for _, dev := range []string{"uplink0", "legacy0"} {
			l, err := netlink.LinkByName(dev)
			if err != nil {
				t.Fatal(err)
			}
			if hasSluiceTC("", l) {
				t.Errorf("%s: legacy filter left", dev)
			}
			for _, a := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: a})
				if err == nil && len(res.Programs) > 0 {
					t.Errorf("%s: %d tcx programs left on %v", dev, len(res.Programs), a)
				}
			}
		}
		have, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: routes.Protocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil || len(have) != 0 {
			t.Errorf("proto 92 routes left: %v %v", have, err)
		}
	})
	out, err := exec.Command("ip", "netns", "exec", ns.Name, "nft", "list", "tables").CombinedOutput()
	if err != nil || strings.Contains(string(out), masq.TableName) {
		t.Errorf("nftables: %s %v", out, err)
	}
	out, err = exec.Command("ip", "-n", ns.Name, "route", "show", "10.244.8.0/24").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "via 192.0.2.8") {
		t.Errorf("another owner's route: %q %v, want it kept", out, err)
	}
	out, err = exec.Command("ip", "-n", ns.Name, "neigh", "show", "dev", "uplink0").CombinedOutput()
	if err != nil || strings.Contains(string(out), "managed") {
		t.Errorf("neighbours: %q %v, want no managed entry left", out, err)
	}

	// Again: nothing to do, no error.
	ns.Do(t, func() { results = Run(o) })
	for _, r := range results {
		if r.Err != nil || r.Did != "" {
			t.Errorf("second run, %s: did %q, err %v; want nothing to do", r.Step, r.Did, r.Err)
		}
	}
}

// cgroupPrograms counts the programs attached to cgroup at socket LB's
// connect hooks.
func cgroupPrograms(t *testing.T, cgroup string) int {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for _, a := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupUDP4Sendmsg} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: a})
		if err != nil {
			t.Fatalf("query cgroup programs: %v", err)
		}
		n += len(res.Programs)
	}
	return n
}
