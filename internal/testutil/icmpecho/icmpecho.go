// Package icmpecho sends one ICMP or ICMPv6 echo request from a raw socket
// and waits for its reply: a ping for tests, which must run in the network
// namespace it pings from (a pod's, or one a test created). It also gives
// the Internet checksum that hand-built test packets need.
package icmpecho

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Checksum is the Internet checksum (RFC 1071) of b.
func Checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Message is an ICMP or ICMPv6 message of type typ with identifier id and
// sequence 1; IPv4's carries its checksum, IPv6's is left to the kernel
// (it covers a pseudo header the socket fills in).
func Message(v6 bool, typ, code uint8, id uint16, body []byte) []byte {
	b := append([]byte{typ, code, 0, 0, byte(id >> 8), byte(id), 0, 1}, body...)
	if !v6 {
		binary.BigEndian.PutUint16(b[2:], Checksum(b))
	}
	return b
}

// Echo sends one echo request with identifier id to dst, from src when it
// is valid, and reports whether the reply came back within wait. A reply
// not seen is (false, nil); only a socket failure is an error.
func Echo(src, dst netip.Addr, id uint16, wait time.Duration) (bool, error) {
	network, req, rep := "ip4:icmp", uint8(8), uint8(0)
	if dst.Is6() {
		network, req, rep = "ip6:ipv6-icmp", 128, 129
	}
	laddr := ""
	if src.IsValid() {
		laddr = src.String()
	}
	c, err := net.ListenPacket(network, laddr)
	if err != nil {
		return false, fmt.Errorf("raw %s socket: %w", network, err)
	}
	defer c.Close()
	if _, err := c.WriteTo(Message(dst.Is6(), req, 0, id, []byte("sluice echo")), &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return false, fmt.Errorf("send echo to %s: %w", dst, err)
	}
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return false, err
	}
	buf := make([]byte, 1500)
	for {
		// The raw socket sees every ICMP message of the namespace (an
		// IPv4 one without its IP header): ours is the reply from dst
		// with our identifier.
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return false, nil
			}
			return false, err
		}
		ipFrom, ok := from.(*net.IPAddr)
		if !ok {
			continue
		}
		fromAddr, _ := netip.AddrFromSlice(ipFrom.IP)
		if n >= 8 && buf[0] == rep && binary.BigEndian.Uint16(buf[4:]) == id && fromAddr.Unmap() == dst {
			return true, nil
		}
	}
}
