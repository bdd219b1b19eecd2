package routes

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/sluice-net/sluice/agent/internal/agenttest"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

func TestDesired(t *testing.T) {
	nodes := []*v1.Node{
		agenttest.Node("self", []string{"10.244.0.0/24"}, "192.168.1.10"),
		agenttest.Node("b", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, "192.168.1.11", "fd00:1::11"),
		agenttest.Node("c", []string{"10.244.2.0/24"}, "192.168.1.12"),
		agenttest.Node("no-v6-address", []string{"fd00:10:244:3::/64"}, "192.168.1.13"),
		agenttest.Node("bad", []string{"nope"}, "192.168.1.14"),
		agenttest.Node("no-cidr", nil, "192.168.1.15"),
	}
	show := func(rs []Route) string {
		var lines []string
		for _, r := range rs {
			lines = append(lines, fmt.Sprintf("%s via %s", r.Dst, r.Via))
		}
		return strings.Join(lines, "\n")
	}
	got, errs := Desired(nodes, "self", false)
	want := "10.244.1.0/24 via 192.168.1.11\n10.244.2.0/24 via 192.168.1.12\nfd00:10:244:1::/64 via fd00:1::11"
	if g := show(got); g != want {
		t.Errorf("got:\n%s\nwant:\n%s", g, want)
	}
	// The overlay's underlay is IPv4 where a node has it, whatever the
	// pod CIDR's family.
	tunnelled, _ := Desired(nodes, "self", true)
	want = "10.244.1.0/24 via 192.168.1.11\n10.244.2.0/24 via 192.168.1.12\nfd00:10:244:1::/64 via 192.168.1.11\nfd00:10:244:3::/64 via 192.168.1.13"
	if g := show(tunnelled); g != want {
		t.Errorf("tunnelled, got:\n%s\nwant:\n%s", g, want)
	}
	msgs := fmt.Sprint(errs)
	for _, w := range []string{`node bad: spec.podCIDRs[0]: "nope" is not a CIDR`, "node no-v6-address: no InternalIP of the family of pod CIDR fd00:10:244:3::/64"} {
		if !strings.Contains(msgs, w) {
			t.Errorf("errors %s; want %q", msgs, w)
		}
	}
}

// TestSync programs routes in a namespace of its own and checks them with
// iproute2, as an operator would.
func TestSync(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	ns := netnstest.New(t, "sl-routes")
	ns.VethPair(t, "uplink", nil, "uplink-peer")
	ns.IP(t, "addr", "add", "192.168.1.10/24", "dev", "uplink")
	ns.IP(t, "addr", "add", "fd00:1::10/64", "dev", "uplink", "nodad")
	// Someone else's route to a pod-looking CIDR: never ours to touch.
	ns.IP(t, "route", "add", "10.250.0.0/24", "via", "192.168.1.1", "proto", "static")

	show := func() string {
		out, err := exec.Command("ip", "-n", ns.Name, "route", "show", "proto", "92").CombinedOutput()
		if err != nil {
			t.Fatalf("ip route: %v: %s", err, out)
		}
		out6, _ := exec.Command("ip", "-n", ns.Name, "-6", "route", "show", "proto", "92").CombinedOutput()
		return strings.TrimSpace(string(out) + string(out6))
	}
	sync := func(rs ...Route) int {
		var n int
		var err error
		ns.Do(t, func() { n, err = MainTable{}.Sync(rs) })
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	r := func(dst, via string) Route {
		return Route{Dst: netip.MustParsePrefix(dst), Via: netip.MustParseAddr(via)}
	}

	if n := sync(r("10.244.1.0/24", "192.168.1.11"), r("fd00:10:244:1::/64", "fd00:1::11")); n != 2 {
		t.Errorf("first sync changed %d routes, want 2", n)
	}
	got := show()
	for _, w := range []string{"10.244.1.0/24 via 192.168.1.11 dev uplink", "fd00:10:244:1::/64 via fd00:1::11 dev uplink"} {
		if !strings.Contains(got, w) {
			t.Errorf("routes:\n%s\nwant %q", got, w)
		}
	}
	if n := sync(r("10.244.1.0/24", "192.168.1.11"), r("fd00:10:244:1::/64", "fd00:1::11")); n != 0 {
		t.Errorf("unchanged sync changed %d routes", n)
	}
	// Node b moved to another address; the IPv6 node went away.
	if n := sync(r("10.244.1.0/24", "192.168.1.21")); n != 2 {
		t.Errorf("sync changed %d routes, want 2", n)
	}
	if got := show(); got != "10.244.1.0/24 via 192.168.1.21 dev uplink" {
		t.Errorf("routes after change:\n%s", got)
	}
	sync()
	if got := show(); got != "" {
		t.Errorf("routes left after every node went:\n%s", got)
	}
	out, _ := exec.Command("ip", "-n", ns.Name, "route", "show", "10.250.0.0/24").CombinedOutput()
	if !strings.Contains(string(out), "via 192.168.1.1") {
		t.Errorf("someone else's route was touched: %q", out)
	}
}
