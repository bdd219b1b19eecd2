package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
