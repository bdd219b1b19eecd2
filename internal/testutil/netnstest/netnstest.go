// Package netnstest gives tests network namespaces of their own: created
// with iproute2, deleted with every link in them when the test ends. All
// traffic a test sends must stay inside such namespaces.
package netnstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// NS is a network namespace the test created.
type NS struct {
	Name string
}

// New creates a namespace named prefix-<random> and deletes it when the
// test ends. IPv6 DAD is off in it so addresses are usable at once.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	n := &NS{Name: prefix + "-" + hex.EncodeToString(b)}
	IP(t, "netns", "add", n.Name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", n.Name, err, out)
		}
	})
	n.Sysctl(t, "net.ipv6.conf.default.accept_dad=0")
	return n
}

// Path is the namespace's bind mount, as CNI_NETNS expects it.
func (n *NS) Path() string { return "/var/run/netns/" + n.Name }

// IP runs an iproute2 command inside the namespace.
func (n *NS) IP(t testing.TB, args ...string) {
	t.Helper()
	IP(t, append([]string{"-n", n.Name}, args...)...)
}

// Sysctl sets a sysctl inside the namespace.
func (n *NS) Sysctl(t testing.TB, kv string) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "exec", n.Name, "sysctl", "-qw", kv).CombinedOutput(); err != nil {
		t.Fatalf("sysctl %s in %s: %v: %s", kv, n.Name, err, out)
	}
}

// Do runs fn on an OS thread switched into the namespace (network only:
// bpffs and cgroups stay visible). Sockets and child processes created in
// fn belong to the namespace. fn may call t.Fatal: the test then stops
// here, on its own goroutine, as if fn had run there.
func (n *NS) Do(t testing.TB, fn func()) {
	t.Helper()
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		t.Fatalf("open netns %s: %v", n.Name, err)
	}
	defer h.Close()
	done := make(chan struct{})
	returned := false
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
			t.Errorf("enter netns %s: %v", n.Name, err)
			return
		}
		// A thread that cannot go back stays locked: Go then retires it
		// instead of reusing it in the wrong namespace.
		defer func() {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
		}()
		fn()
		returned = true
	}()
	<-done
	if !returned {
		t.FailNow() // fn stopped early (t.Fatal) or could not enter the namespace
	}
}

// Dialer returns a dial function whose connections are made from inside
// the namespace, for clients (HTTP, client-go) that dial on goroutines of
// their own.
func (n *NS) Dialer(t testing.TB) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		n.Do(t, func() {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
		})
		return c, err
	}
}

// HTTPClient is an HTTP client whose connections start inside the namespace.
func (n *NS) HTTPClient(t testing.TB) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: n.Dialer(t)}}
}

// ServeWhoAmI answers TCP connections and UDP datagrams on port, over
// IPv4 and IPv6, with the address the client was seen from: what a test
// asserts about NAT. It stops when the test ends.
func (n *NS) ServeWhoAmI(t testing.TB, port int) {
	t.Helper()
	n.Serve(t, port, func(c net.Conn) {
		fmt.Fprintln(c, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
	}, func(_ []byte, from netip.AddrPort) []byte {
		return []byte(from.Addr().Unmap().String())
	})
}

// Serve listens on port over TCP and UDP, IPv4 and IPv6, inside the
// namespace: each connection goes to onConn (in a goroutine of its own;
// closed when it returns), each datagram to onDatagram, whose answer (if
// any) is sent back. It stops when the test ends.
func (n *NS) Serve(t testing.TB, port int, onConn func(net.Conn), onDatagram func(payload []byte, from netip.AddrPort) []byte) {
	t.Helper()
	for _, fam := range []struct{ tcp, udp, any string }{{"tcp4", "udp4", "0.0.0.0"}, {"tcp6", "udp6", "::"}} {
		addr := net.JoinHostPort(fam.any, strconv.Itoa(port))
		var ln net.Listener
		var pc net.PacketConn
		var err error
		n.Do(t, func() {
			if ln, err = net.Listen(fam.tcp, addr); err == nil {
				pc, err = net.ListenPacket(fam.udp, addr)
			}
		})
		if err != nil {
			t.Fatalf("listen on %s in %s: %v", addr, n.Name, err)
		}
		t.Cleanup(func() { ln.Close(); pc.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					onConn(c)
				}()
			}
		}()
		go func() {
			buf := make([]byte, 65536)
			for {
				k, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				if reply := onDatagram(buf[:k], from.(*net.UDPAddr).AddrPort()); reply != nil {
					_, _ = pc.WriteTo(reply, from)
				}
			}
		}()
	}
}

// WhoAmI asks a ServeWhoAmI server at dst, over "tcp" or "udp" from inside
// the namespace, which address it saw; on failure it returns the error text.
func (n *NS) WhoAmI(t testing.TB, network string, dst netip.AddrPort) string {
	var got string
	n.Do(t, func() {
		c, err := net.DialTimeout(network, dst.String(), 3*time.Second)
		if err != nil {
			got = err.Error()
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if network == "udp" {
			if _, err := c.Write([]byte("?")); err != nil {
				got = err.Error()
				return
			}
		}
		buf := make([]byte, 64)
		k, err := c.Read(buf)
		if err != nil {
			got = err.Error()
			return
		}
		got = strings.TrimSpace(string(buf[:k]))
	})
	return got
}

// VethPair creates a veth pair inside n, moves the peer into peerNS (nil
// keeps it in n) and brings both up.
func (n *NS) VethPair(t testing.TB, name string, peerNS *NS, peer string) {
	t.Helper()
	n.IP(t, "link", "add", name, "type", "veth", "peer", "name", peer)
	if peerNS != nil {
		n.IP(t, "link", "set", peer, "netns", peerNS.Name)
		peerNS.IP(t, "link", "set", peer, "up")
	} else {
		n.IP(t, "link", "set", peer, "up")
	}
	n.IP(t, "link", "set", name, "up")
}

// IP runs an iproute2 command, failing the test on error.
func IP(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}
