// Package nsexec creates named network namespaces and starts processes in
// them. Only the network namespace is entered (never `ip netns exec`, which
// remounts /sys and hides bpffs and cgroups), and a process can be placed
// into a UTS namespace and a cgroup v2 directory from its first instruction.
package nsexec

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where iproute2 and CNI runtimes keep named namespaces.
const Dir = "/var/run/netns"

// Path is the bind mount of the named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

// Create makes the named namespace (like `ip netns add`); it is an error if
// it exists.
func Create(name string) error {
	if _, err := os.Stat(Path(name)); err == nil {
		return fmt.Errorf("network namespace %s already exists", name)
	}
	return onThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err != nil {
			return fmt.Errorf("create network namespace %s: %w", name, err)
		}
		h.Close()
		return netns.Set(orig)
	})
}

// Delete removes the named namespace; a missing one is not an error.
func Delete(name string) error {
	err := netns.DeleteNamed(name)
	if err != nil && os.IsNotExist(err) {
		return nil
	}
	return err
}

// Do runs fn on an OS thread inside the namespace at path. Sockets and
// processes fn creates belong to that namespace.
func Do(path string, fn func() error) error {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer h.Close()
	return onThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			return fmt.Errorf("enter network namespace %s: %w", path, err)
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			return err // the thread stays locked and Go retires it
		}
		return fnErr
	})
}

// onThread runs fn on a locked OS thread of its own; if fn leaves the
// thread in another namespace (an error on the way back), the thread is
// never unlocked, so Go discards it rather than reuse it.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		if err == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Target says where a process starts: a network namespace (the current
// one when empty), a UTS namespace holding the pod's hostname (the
// machine's when empty) and a cgroup v2 directory (the caller's when empty).
type Target struct {
	Netns, UTS, Cgroup string
	// Interactive keeps the caller's process group (the terminal's), for a
	// command a user runs; otherwise the process leads a group of its own,
	// which is how daemons and containers are ended.
	Interactive bool
}

// Start starts cmd in target.
func Start(target Target, cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = !target.Interactive
	if target.Cgroup != "" {
		fd, err := os.Open(target.Cgroup)
		if err != nil {
			return fmt.Errorf("open cgroup %s: %w", target.Cgroup, err)
		}
		defer fd.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(fd.Fd())
	}
	start := cmd.Start
	if target.UTS != "" {
		start = func() error { return inUTS(target.UTS, cmd.Start) }
	}
	if target.Netns == "" {
		return onThread(start)
	}
	return Do(target.Netns, start)
}

// inUTS runs fn with the calling (locked) thread in the UTS namespace at
// path, and switches back.
func inUTS(path string, fn func() error) error {
	orig, err := os.Open("/proc/thread-self/ns/uts")
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open UTS namespace %s: %w", path, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWUTS); err != nil {
		return fmt.Errorf("enter UTS namespace %s: %w", path, err)
	}
	fnErr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWUTS); err != nil {
		return err // the thread stays locked and Go retires it
	}
	return fnErr
}

// CreateUTS makes a UTS namespace with the given hostname, kept alive by a
// bind mount on path (a file it creates), as a pod sandbox has.
func CreateUTS(path, hostname string) error {
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		// This thread never leaves the new namespace: it stays locked, so
		// Go ends it when the goroutine returns.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWUTS); err != nil {
			errc <- fmt.Errorf("unshare UTS: %w", err)
			return
		}
		if err := unix.Sethostname([]byte(hostname)); err != nil {
			errc <- fmt.Errorf("sethostname %q: %w", hostname, err)
			return
		}
		errc <- unix.Mount("/proc/thread-self/ns/uts", path, "", unix.MS_BIND, "")
	}()
	return <-errc
}

// DeleteUTS releases a namespace CreateUTS made; a missing one is fine.
func DeleteUTS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount UTS namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// DialContext returns a dial function whose connections start inside the
// namespace at path, for clients that dial on goroutines of their own.
func DialContext(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = Do(path, func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
