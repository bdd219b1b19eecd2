package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/sluice-net/sluice/hack/localcluster/internal/nsexec"
)

// xdpPass attaches a program that passes every frame to port, the
// underlay's end of a node's veth, pinned under bpffsDir so that it
// outlives this process (down removes the pins, and the namespace with
// the port). A veth in native XDP (a node's uplink under --dsr) delivers
// what it sends on (XDP_TX) only to a peer that runs XDP too, where a NIC
// would put it on the wire.
func xdpPass(port string) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "underlay_pass", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()}})
	if err != nil {
		return fmt.Errorf("load the underlay's XDP pass program: %w", err)
	}
	defer prog.Close()
	dir := filepath.Join(bpffsDir, "underlay")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return nsexec.Do(nsexec.Path(underlayNS), func() error {
		l, err := netlink.LinkByName(port)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", port, underlayNS, err)
		}
		xl, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: l.Attrs().Index})
		if err != nil {
			return fmt.Errorf("attach XDP pass on %s: %w", port, err)
		}
		defer xl.Close()
		return xl.Pin(filepath.Join(dir, port))
	})
}
