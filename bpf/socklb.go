package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// sockHooks are the cgroup hooks of socket-level load balancing, by
// program name.
var sockHooks = []struct {
	prog   string
	attach ebpf.AttachType
}{
	{"sock4_connect", ebpf.AttachCGroupInet4Connect},
	{"sock4_sendmsg", ebpf.AttachCGroupUDP4Sendmsg},
	{"sock4_recvmsg", ebpf.AttachCGroupUDP4Recvmsg},
	{"sock4_getpeername", ebpf.AttachCgroupInet4GetPeername},
	{"sock6_connect", ebpf.AttachCGroupInet6Connect},
	{"sock6_sendmsg", ebpf.AttachCGroupUDP6Sendmsg},
	{"sock6_recvmsg", ebpf.AttachCGroupUDP6Recvmsg},
	{"sock6_getpeername", ebpf.AttachCgroupInet6GetPeername},
}

func sockLinkPin(root, prog string) string {
	return filepath.Join(linksDir(root), "cgroup_"+prog)
}

// AttachSocketLB attaches socket-level load balancing to a cgroup v2
// directory: every process below it (host processes, hostNetwork pods, and
// pods when it is the root cgroup) reaches services by a connect or sendmsg
// translated once, instead of per packet. Links are pinned, so they outlive
// the agent; attaching again swaps in the current programs.
func (d *Datapath) AttachSocketLB(cgroupPath string) error {
	var st unix.Stat_t
	if err := unix.Stat(cgroupPath, &st); err != nil {
		return fmt.Errorf("socket LB cgroup %s: %w", cgroupPath, err)
	}
	for _, h := range sockHooks {
		prog := d.sockProgs[h.prog]
		pin := sockLinkPin(d.root, h.prog)
		if old, err := link.LoadPinnedLink(pin, nil); err == nil {
			info, ierr := old.Info()
			if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == st.Ino {
				err := old.Update(prog)
				old.Close()
				if err != nil {
					return fmt.Errorf("update %s on %s: %w", h.prog, cgroupPath, err)
				}
				continue
			}
			// Pinned for another cgroup: the setting changed.
			_ = old.Unpin()
			old.Close()
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: h.attach, Program: prog})
		if err != nil {
			return fmt.Errorf("attach %s to cgroup %s: %w", h.prog, cgroupPath, err)
		}
		_ = os.Remove(pin)
		err = l.Pin(pin)
		l.Close()
		if err != nil {
			return fmt.Errorf("pin %s link: %w", h.prog, err)
		}
	}
	return nil
}

// DetachSocketLB removes socket-level load balancing pinned under root.
func DetachSocketLB(root string) error {
	var errs []error
	for _, h := range sockHooks {
		pin := sockLinkPin(root, h.prog)
		l, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("open %s: %w", pin, err))
			continue
		}
		errs = append(errs, l.Unpin(), l.Close())
	}
	return errors.Join(errs...)
}

// NetnsCookie returns the cookie of the calling thread's network namespace,
// the identity bpf_get_netns_cookie reports for its sockets.
func NetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("SO_NETNS_COOKIE (Linux 5.14 or later): %w", err)
	}
	return c, nil
}

// PodSockets is a pod's entry in the socket LB's namespace map: its
// addresses, and whether its sockets are translated (On) or left to the
// tc path (the pod opted out).
type PodSockets struct {
	Addrs []netip.Addr
	On    bool
}

// ServePodSockets enters a pod's network namespace (by cookie, NetnsCookie
// run inside it) with its addresses: with on, socket LB serves its
// sockets, keying ClientIP affinity on the address of each connection's
// family as the tc path does.
func (d *Datapath) ServePodSockets(netns uint64, p PodSockets) error {
	if d.SockNetns == nil {
		return errors.New("map sluice_sock_netns_v1 not pinned: the agent runs a release before socket LB served pods")
	}
	var v SockNetnsValue
	for _, a := range p.Addrs {
		if a.Unmap().Is4() {
			v.Addr4 = Addr(a)
		} else {
			v.Addr6 = Addr(a)
		}
	}
	if p.On {
		v.Flags = uint32(datapathSockNetnsFlagsSOCK_NETNS_F_LB)
	}
	if err := d.SockNetns.Put(netns, v); err != nil {
		return fmt.Errorf("enter pod netns %#x for socket LB (map sluice_sock_netns_v1 full?): %w", netns, err)
	}
	return nil
}

// PodSocketEntries lists the socket LB's pods by namespace cookie.
func (d *Datapath) PodSocketEntries() (map[uint64]PodSockets, error) {
	out := map[uint64]PodSockets{}
	if d.SockNetns == nil {
		return out, nil
	}
	var netns uint64
	var v SockNetnsValue
	it := d.SockNetns.Iterate()
	for it.Next(&netns, &v) {
		out[netns] = v.podSockets()
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list sluice_sock_netns_v1: %w", err)
	}
	return out, nil
}

func (v SockNetnsValue) podSockets() PodSockets {
	p := PodSockets{On: v.Flags&uint32(datapathSockNetnsFlagsSOCK_NETNS_F_LB) != 0}
	for _, raw := range [][16]byte{v.Addr4, v.Addr6} {
		if raw != ([16]byte{}) {
			p.Addrs = append(p.Addrs, netip.AddrFrom16(raw).Unmap())
		}
	}
	return p
}

// ForgetPodSockets removes the entries of the pods holding any of addrs
// (a pod's namespace may be gone by its DEL, so entries go by address).
func (d *Datapath) ForgetPodSockets(addrs []netip.Addr) error {
	entries, err := d.PodSocketEntries()
	if err != nil {
		return err
	}
	var errs []error
	for netns, p := range entries {
		if !slices.ContainsFunc(p.Addrs, func(a netip.Addr) bool {
			return slices.ContainsFunc(addrs, func(b netip.Addr) bool { return b.Unmap() == a })
		}) {
			continue
		}
		if err := d.SockNetns.Delete(netns); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete pod netns %#x from sluice_sock_netns_v1: %w", netns, err))
		}
	}
	return errors.Join(errs...)
}
