package bpf

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// FuzzDatapath feeds arbitrary frames through both programs with services,
// conntrack and affinity in place. The verifier already rules out
// out-of-bounds reads; this checks what it cannot: every frame gets a
// defined verdict, frames that are not IP leave untouched, and a frame
// grows only by the ICMP error headers the reject path prepends.
//
//	go test -run '^$' -fuzz FuzzDatapath ./bpf/
func FuzzDatapath(f *testing.F) {
	d := loadTest(f, Config{})
	install(f, d, oneBackend(1, vip4, unix.IPPROTO_TCP, be4a))
	install(f, d, oneBackend(2, ap("10.96.0.10:53"), unix.IPPROTO_UDP, ap("10.244.1.5:53")))
	install(f, d, oneBackend(3, vip6, unix.IPPROTO_TCP, be6a))
	install(f, d, testService{id: 4, vip: ap("10.96.0.11:80"), proto: unix.IPPROTO_TCP})
	install(f, d, testService{id: 5, vip: ap("[fd00:96::11]:53"), proto: unix.IPPROTO_UDP})
	seeds := []flow{
		{src: client4, dst: vip4, proto: unix.IPPROTO_TCP, tcpFlags: "S"},
		{src: client4, dst: ap("10.96.0.10:53"), proto: unix.IPPROTO_UDP, payload: []byte("x")},
		{src: client6, dst: vip6, proto: unix.IPPROTO_TCP, tcpFlags: "A", payload: []byte("data")},
		{src: client4, dst: ap("10.96.0.11:80"), proto: unix.IPPROTO_TCP, tcpFlags: "S", ipv4Option: true},
		{src: client6, dst: ap("[fd00:96::11]:53"), proto: unix.IPPROTO_UDP},
		{src: be4a, dst: client4, proto: unix.IPPROTO_TCP, tcpFlags: "SA"},
		{src: ap("10.244.1.5:0"), dst: ap("10.244.0.2:0"), proto: unix.IPPROTO_ICMP, icmp: []byte{3, 3, 0, 0, 0, 0},
			payload: make([]byte, 28)},
	}
	for _, s := range seeds {
		f.Add(build(f, s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 {
			return
		}
		for _, prog := range []*ebpf.Program{d.FromPod, d.ToPod} {
			opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256)}
			ret, err := prog.Run(opts)
			if errors.Is(err, unix.EINVAL) {
				return // the kernel refuses frames with a truncated IP header before the program runs
			}
			if err != nil {
				t.Fatalf("test run: %v", err)
			}
			if ret != actOK && ret != actShot && ret != actRedirect {
				t.Fatalf("undefined verdict %d", ret)
			}
			out := opts.DataOut
			etype := binary.BigEndian.Uint16(frame[12:14])
			if etype != unix.ETH_P_IP && etype != unix.ETH_P_IPV6 && string(out) != string(frame) {
				t.Fatalf("non-IP frame (ethertype %#x) modified", etype)
			}
			if len(out) > len(frame)+48 {
				t.Fatalf("frame grew from %d to %d bytes", len(frame), len(out))
			}
		}
	})
}
