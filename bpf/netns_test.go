package bpf

import (
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// testNS is a network namespace the test created and deletes afterwards,
// with every link in it. All test traffic stays inside such namespaces.
type testNS struct {
	name string
}

func newNS(t testing.TB, prefix string) *testNS {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	n := &testNS{name: prefix + "-" + hex.EncodeToString(b)}
	ipCmd(t, "netns", "add", n.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", n.name, err, out)
		}
	})
	// Without DAD, IPv6 link-local addresses answer neighbour discovery at
	// once instead of after a second or two of tentative state.
	n.sysctl(t, "net.ipv6.conf.default.accept_dad=0")
	return n
}

// ip runs an iproute2 command inside the namespace.
func (n *testNS) ip(t testing.TB, args ...string) {
	t.Helper()
	ipCmd(t, append([]string{"-n", n.name}, args...)...)
}

// sysctl sets a sysctl inside the namespace.
func (n *testNS) sysctl(t testing.TB, kv string) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "exec", n.name, "sysctl", "-qw", kv).CombinedOutput(); err != nil {
		t.Fatalf("sysctl %s in %s: %v: %s", kv, n.name, err, out)
	}
}

// do runs fn on an OS thread switched into the namespace. Sockets and
// netlink handles created in fn stay in the namespace after it returns.
func (n *testNS) do(t testing.TB, fn func()) {
	t.Helper()
	h, err := netns.GetFromName(n.name)
	if err != nil {
		t.Fatalf("open netns %s: %v", n.name, err)
	}
	defer h.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Errorf("get current netns: %v", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			t.Errorf("enter netns %s: %v", n.name, err)
			return
		}
		fn()
		// Leave the thread locked if it cannot go back: Go then retires
		// it instead of reusing a thread in the wrong namespace.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	<-done
}

func ipCmd(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// vethPair creates a veth pair inside ns and moves the peer into peerNS
// (nil keeps it in ns), both up.
func vethPair(t testing.TB, ns *testNS, name string, peerNS *testNS, peer string) {
	t.Helper()
	ns.ip(t, "link", "add", name, "type", "veth", "peer", "name", peer)
	if peerNS != nil {
		ns.ip(t, "link", "set", peer, "netns", peerNS.name)
		peerNS.ip(t, "link", "set", peer, "up")
	} else {
		ns.ip(t, "link", "set", peer, "up")
	}
	ns.ip(t, "link", "set", name, "up")
}
