package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-net/sluice/hack/localcluster/internal/nsexec"
)

// down removes everything `up` made; it is safe to run twice and after a
// crashed `up`. Processes are ended by their recorded PIDs only.
func down(_ []string) error {
	var errs []error
	if s, err := loadState(); err == nil {
		// Shims first: they stop their pods' processes and call CNI DEL.
		for _, prefix := range []string{"shim-", "scheduler", "agent-", "kube-proxy-", "kube-controller-manager", "kube-apiserver", "etcd", "api-forward"} {
			for name, d := range s.Daemons {
				if strings.HasPrefix(name, prefix) {
					if err := d.stop(10 * time.Second); err != nil {
						errs = append(errs, fmt.Errorf("stop %s: %w", name, err))
					}
				}
			}
		}
		errs = append(errs, stopPodProcesses(s)...)
		utsMounts, _ := filepath.Glob(path("nodes", "*", "pods", "*", "uts"))
		for _, m := range utsMounts {
			if err := nsexec.DeleteUTS(m); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Pod namespaces first, then nodes and the control plane, the underlay
	// last: deleting a namespace removes the links in it.
	entries, _ := os.ReadDir(nsexec.Dir)
	for _, late := range []bool{false, true} {
		for _, e := range entries {
			name := e.Name()
			if !strings.HasPrefix(name, netnsPrefix) || (name == underlayNS) != late {
				continue
			}
			if err := nsexec.Delete(name); err != nil {
				errs = append(errs, fmt.Errorf("delete netns %s: %w", name, err))
			}
		}
	}
	if err := os.RemoveAll(bpffsDir); err != nil {
		errs = append(errs, fmt.Errorf("remove bpffs pins %s: %w", bpffsDir, err))
	}
	if cg2, err := cgroup2Root(); err == nil {
		errs = append(errs, removeCgroups(filepath.Join(cg2, cgroupName))...)
	}
	if err := os.RemoveAll(stateDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// stopPodProcesses ends container processes a shim recorded but did not
// stop (a shim that crashed).
func stopPodProcesses(s *state) []error {
	var errs []error
	for _, n := range s.Nodes {
		pidFiles, _ := filepath.Glob(path("nodes", n.Name, "pods", "*", "*.pid"))
		for _, f := range pidFiles {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				continue
			}
			// Only a process still in this node's cgroup tree is ours.
			// Each container is a process group led by the recorded PID;
			// the whole group goes, children included.
			if cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err == nil && strings.Contains(string(cg), "/"+cgroupName+"/"+n.Name+"/") {
				if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
					errs = append(errs, fmt.Errorf("kill process group %d: %w", pid, err))
				}
			}
		}
	}
	return errs
}

// removeCgroups removes a cgroup tree bottom-up (cgroupfs rmdir only takes
// empty directories), first ending what still runs in it.
func removeCgroups(root string) []error {
	if _, err := os.Stat(root); err != nil {
		return nil
	}
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	errs := killCgroupMembers(dirs)
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
		}
	}
	return errs
}

// killCgroupMembers ends, by PID, every process left in the cluster's
// cgroups: commands started in a pod by "exec" that outlived their caller
// (an iperf3 server of an interrupted bench, say). Every cgroup here was
// made by the local cluster, so whatever runs in one is the cluster's.
func killCgroupMembers(dirs []string) []error {
	var errs []error
	members := func() []int {
		var pids []int
		for _, d := range dirs {
			b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
		}
		return pids
	}
	for _, pid := range members() {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill PID %d left in the cluster's cgroups: %w", pid, err))
		}
	}
	for deadline := time.Now().Add(5 * time.Second); len(members()) > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	return errs
}
