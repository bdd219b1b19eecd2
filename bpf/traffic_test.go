package bpf

import (
	"bufio"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/internal/testutil/netnstest"
)

// TestTrafficThroughVIP sends real TCP and UDP through the attached
// programs: a client namespace reaches a server namespace through a service
// address, across a router namespace standing in for the node, where both
// pods' host-side veths carry from_pod and to_pod. Replies must come back
// from the service address, and the server must see the real client.
func TestTrafficThroughVIP(t *testing.T) {
	d := loadTest(t, Config{})
	node := netnstest.New(t, "sl-node")
	client := netnstest.New(t, "sl-client")
	server := netnstest.New(t, "sl-server")
	node.VethPair(t, "hclient", client, "eth0c")
	node.VethPair(t, "hserver", server, "eth0s")

	node.IP(t, "addr", "add", "10.200.1.1/24", "dev", "hclient")
	node.IP(t, "addr", "add", "10.200.2.1/24", "dev", "hserver")
	node.IP(t, "addr", "add", "fd00:200:1::1/64", "dev", "hclient", "nodad")
	node.IP(t, "addr", "add", "fd00:200:2::1/64", "dev", "hserver", "nodad")
	node.Sysctl(t, "net.ipv4.ip_forward=1")
	node.Sysctl(t, "net.ipv6.conf.all.forwarding=1")
	client.IP(t, "addr", "add", "10.200.1.2/24", "dev", "eth0c")
	client.IP(t, "addr", "add", "fd00:200:1::2/64", "dev", "eth0c", "nodad")
	client.IP(t, "route", "add", "default", "via", "10.200.1.1")
	client.IP(t, "-6", "route", "add", "default", "via", "fd00:200:1::1")
	server.IP(t, "addr", "add", "10.200.2.2/24", "dev", "eth0s")
	server.IP(t, "addr", "add", "fd00:200:2::2/64", "dev", "eth0s", "nodad")
	server.IP(t, "route", "add", "default", "via", "10.200.2.1")
	server.IP(t, "-6", "route", "add", "default", "via", "fd00:200:2::1")

	node.Do(t, func() {
		for _, dev := range []string{"hclient", "hserver"} {
			if err := d.AttachPod(dev, AttachAuto); err != nil {
				t.Fatalf("attach %s: %v", dev, err)
			}
		}
		// The pods' addresses, as the CNI records them.
		for dev, addrs := range map[string][]string{"hclient": {"10.200.1.2", "fd00:200:1::2"}, "hserver": {"10.200.2.2", "fd00:200:2::2"}} {
			l, err := net.InterfaceByName(dev)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range addrs {
				addEndpoints(t, d, uint32(l.Index), netip.MustParseAddr(a))
			}
		}
	})

	install(t, d, oneBackend(1, ap("10.96.0.10:80"), unix.IPPROTO_TCP, ap("10.200.2.2:8080")))
	install(t, d, oneBackend(2, ap("10.96.0.10:53"), unix.IPPROTO_UDP, ap("10.200.2.2:8080")))
	install(t, d, oneBackend(3, ap("[fd00:96::10]:80"), unix.IPPROTO_TCP, ap("[fd00:200:2::2]:8080")))
	install(t, d, oneBackend(4, ap("[fd00:96::10]:53"), unix.IPPROTO_UDP, ap("[fd00:200:2::2]:8080")))

	// The server answers with the address it saw the client at.
	server.ServeWhoAmI(t, 8080)

	for _, c := range []struct {
		vip    string
		client string
		udp    string
	}{{"10.96.0.10", "10.200.1.2", "udp4"}, {"fd00:96::10", "fd00:200:1::2", "udp6"}} {
		t.Run("tcp to "+c.vip, func(t *testing.T) {
			var got string
			var remote netip.AddrPort
			client.Do(t, func() {
				conn, err := net.DialTimeout("tcp", net.JoinHostPort(c.vip, "80"), 3*time.Second)
				if err != nil {
					t.Fatalf("connect to service: %v", err)
				}
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
				remote = conn.RemoteAddr().(*net.TCPAddr).AddrPort()
				line, err := bufio.NewReader(conn).ReadString('\n')
				got = strings.TrimSpace(line)
				if err != nil {
					t.Fatalf("read from service: %v", err)
				}
			})
			if want := c.client; got != want {
				t.Errorf("server answered %q, want %q (the server must see the client's own address)", got, want)
			}
			if remote.Addr().Unmap().String() != c.vip || remote.Port() != 80 {
				t.Errorf("connection's peer is %v, want the service", remote)
			}
		})
		t.Run("udp to "+c.vip, func(t *testing.T) {
			var got string
			var from net.Addr
			client.Do(t, func() {
				conn, err := net.ListenPacket(c.udp, ":0")
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
				dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(c.vip), 53))
				if _, err := conn.WriteTo([]byte("ping"), dst); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 64)
				n, f, err := conn.ReadFrom(buf)
				if err != nil {
					t.Fatalf("no UDP reply from the service: %v", err)
				}
				got, from = string(buf[:n]), f
			})
			if from == nil {
				return
			}
			if want := c.client; got != want {
				t.Errorf("server answered %q, want %q", got, want)
			}
			fromAP := from.(*net.UDPAddr).AddrPort()
			if fromAP.Addr().Unmap().String() != c.vip || fromAP.Port() != 53 {
				t.Errorf("UDP reply came from %v, want the service %s:53", fromAP, c.vip)
			}
		})
	}
	t.Run("tcp to a service without backends is refused", func(t *testing.T) {
		install(t, d, testService{id: 5, vip: ap("10.96.0.11:80"), proto: unix.IPPROTO_TCP})
		client.Do(t, func() {
			_, err := net.DialTimeout("tcp", "10.96.0.11:80", 3*time.Second)
			if err == nil || !strings.Contains(err.Error(), "connection refused") {
				t.Errorf("dial got %v, want connection refused", err)
			}
		})
	})
	t.Run("udp to a service without backends gets port unreachable", func(t *testing.T) {
		install(t, d, testService{id: 6, vip: ap("10.96.0.11:53"), proto: unix.IPPROTO_UDP})
		client.Do(t, func() {
			conn, err := net.Dial("udp", "10.96.0.11:53")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
			_, _ = conn.Write([]byte("ping"))
			_, err = conn.Read(make([]byte, 8))
			if err == nil || !strings.Contains(err.Error(), "connection refused") {
				t.Errorf("read got %v, want connection refused from ICMP port unreachable", err)
			}
		})
	})
}
