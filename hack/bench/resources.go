package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
)

// Resources of a service proxy, read after a scale point's runs.
//
// CPU is the daemon's own time plus that of its children it has waited
// for (utime + stime + cutime + cstime of /proc/PID/stat): kube-proxy runs
// iptables-restore and nft as children and waits for each, so their time
// counts; the agent has none.
//
// Kernel memory is what the proxy keeps in the kernel beside its RSS:
//   - Sluice: the BPF maps pinned on its node (the kernel's own accounting
//     of each map, MapInfo.Memlock, as bpftool shows it), which hold its
//     Services, backends, Maglev tables and connection tracking;
//   - kube-proxy: the kernel's connection tracking of the node (entries
//     times the nf_conntrack slab object size; Sluice keeps its own in BPF
//     maps, counted above), and its rules: the kernel memory charged to a
//     memory cgroup of its own, into which the bench moves it right after
//     the cluster comes up, so that iptables-restore and nft, its children,
//     are charged there too (the kernel charges iptables tables and
//     nf_tables objects to the writer's memory cgroup).
//
// Each daemon, the agent too, is moved into such a cgroup, so the kernel
// memory each allocates for itself after the move (sockets, page tables,
// thread stacks) counts on both sides alike; the agent's maps were created
// before the move and are counted by their memlock instead.

// procCPU returns a process's CPU seconds, its own and its waited-for
// children's.
func procCPU(pid int) (self, children float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime, stime, cutime and cstime (fields 14-17) of a
// /proc/PID/stat line, in seconds.
func parseStatCPU(stat string) (self, children float64, err error) {
	i := strings.LastIndex(stat, ")")
	if i < 0 || i+2 > len(stat) {
		return 0, 0, fmt.Errorf("/proc stat %.60q: no command field", stat)
	}
	f := strings.Fields(stat[i+2:]) // from field 3 (state) on
	if len(f) < 15 {
		return 0, 0, fmt.Errorf("/proc stat %.60q: %d fields, want at least 17", stat, len(f)+2)
	}
	var t [4]float64
	for k := range t {
		if t[k], err = strconv.ParseFloat(f[11+k], 64); err != nil {
			return 0, 0, fmt.Errorf("/proc stat field %d: %w", 14+k, err)
		}
	}
	const userHZ = 100
	return (t[0] + t[1]) / userHZ, (t[2] + t[3]) / userHZ, nil
}

func procRSSMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// mapMemlock sums the kernel memory of the BPF maps pinned under dir, each
// map once; it returns the sum in bytes and the number of maps.
func mapMemlock(dir string) (uint64, int, error) {
	seen := map[ebpf.MapID]bool{}
	var total uint64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		m, err := ebpf.LoadPinnedMap(p, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return nil // a pinned program or link
		}
		defer m.Close()
		info, err := m.Info()
		if err != nil {
			return fmt.Errorf("map %s: %w", p, err)
		}
		id, ok := info.ID()
		if !ok || seen[id] {
			return nil
		}
		seen[id] = true
		// 0, reported as not available, is an empty map that allocates
		// as it fills (an LPM trie or a BPF_F_NO_PREALLOC hash).
		mem, _ := info.Memlock()
		total += mem
		return nil
	})
	return total, len(seen), err
}

// conntrackEntries is the number of entries in the connection tracking
// table of the network namespace pid runs in (the "entries" column of
// /proc/PID/net/stat/nf_conntrack, hexadecimal, the same on every CPU's
// line); 0 when nf_conntrack is not loaded there.
func conntrackEntries(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/stat/nf_conntrack", pid))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return parseConntrackStat(string(b))
}

func parseConntrackStat(s string) (int, error) {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) < 2 {
		return 0, fmt.Errorf("nf_conntrack stat %.60q: no per-CPU line", s)
	}
	head, first := strings.Fields(lines[0]), strings.Fields(lines[1])
	if len(head) == 0 || head[0] != "entries" || len(first) == 0 {
		return 0, fmt.Errorf("nf_conntrack stat %.60q: first column is not entries", s)
	}
	n, err := strconv.ParseInt(first[0], 16, 64)
	if err != nil {
		return 0, fmt.Errorf("nf_conntrack stat entries %q: %w", first[0], err)
	}
	return int(n), nil
}

// conntrackObjectSize is the size of one conntrack entry in its slab
// cache (/proc/slabinfo); the kernel's 256 bytes of 6.x when the cache is
// merged into another and not listed.
func conntrackObjectSize() int {
	f, err := os.Open("/proc/slabinfo")
	if err != nil {
		return 256
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if x := strings.Fields(sc.Text()); len(x) > 3 && x[0] == "nf_conntrack" {
			if n, err := strconv.Atoi(x[3]); err == nil && n > 0 {
				return n
			}
		}
	}
	return 256
}

// memcgs are the memory cgroups the bench moves the service proxies into,
// one each: under its own cgroup in a cgroup v1 memory hierarchy, or, on a
// cgroup v2 host with the memory controller, beside the nodes in the local
// cluster's cgroup (which the local cluster's down removes).
type memcgs struct {
	base string // the directory holding one cgroup per implementation
	v1   bool
}

const memcgName = "sluice-bench"

// newMemcgs finds where to make the cgroups and removes those a previous
// interrupted run left (empty once its cluster is down).
func newMemcgs(clusterCgroup string) (*memcgs, error) {
	if root, own, ok := v1Memory(); ok {
		m := &memcgs{base: filepath.Join(root, own, memcgName), v1: true}
		m.remove()
		return m, os.MkdirAll(m.base, 0o755)
	}
	ctl, err := os.ReadFile(filepath.Join(clusterCgroup, "cgroup.controllers"))
	if err != nil || !strings.Contains(" "+string(ctl)+" ", " memory ") {
		return nil, errors.New("no memory cgroup controller (neither a cgroup v1 memory hierarchy nor memory in the cluster's cgroup v2 controllers)")
	}
	if err := os.WriteFile(filepath.Join(clusterCgroup, "cgroup.subtree_control"), []byte("+memory"), 0o644); err != nil {
		return nil, fmt.Errorf("enable the memory controller below %s: %w", clusterCgroup, err)
	}
	return &memcgs{base: filepath.Join(clusterCgroup, memcgName)}, os.MkdirAll(filepath.Join(clusterCgroup, memcgName), 0o755)
}

// v1Memory finds the cgroup v1 memory hierarchy's mount and this
// process's cgroup in it.
func v1Memory() (root, own string, ok bool) {
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return "", "", false
	}
	for _, l := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(l)
		if len(f) > 3 && f[2] == "cgroup" && slices.Contains(strings.Split(f[3], ","), "memory") {
			root = f[1]
		}
	}
	cg, err := os.ReadFile("/proc/self/cgroup")
	if root == "" || err != nil {
		return "", "", false
	}
	for _, l := range strings.Split(string(cg), "\n") {
		if f := strings.SplitN(l, ":", 3); len(f) == 3 && slices.Contains(strings.Split(f[1], ","), "memory") {
			return root, f[2], true
		}
	}
	return "", "", false
}

// adopt moves a daemon (all its threads) into the implementation's cgroup;
// children it starts later are born there.
func (m *memcgs) adopt(impl string, pid int) error {
	dir := filepath.Join(m.base, impl)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("move PID %d into %s: %w", pid, dir, err)
	}
	return nil
}

// kernelBytes is the kernel memory charged to the implementation's cgroup.
func (m *memcgs) kernelBytes(impl string) (uint64, error) {
	dir := filepath.Join(m.base, impl)
	if m.v1 {
		b, err := os.ReadFile(filepath.Join(dir, "memory.kmem.usage_in_bytes"))
		if err != nil {
			return 0, err
		}
		return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	b, err := os.ReadFile(filepath.Join(dir, "memory.stat"))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, " "); ok && k == "kernel" {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s/memory.stat has no kernel line", dir)
}

// remove deletes the cgroups, once the processes in them have ended (the
// cluster is down); a cgroup still charged for memory leaves the
// hierarchy all the same.
func (m *memcgs) remove() {
	if m == nil {
		return
	}
	entries, _ := os.ReadDir(m.base)
	for _, e := range entries {
		if e.IsDir() {
			_ = syscall.Rmdir(filepath.Join(m.base, e.Name()))
		}
	}
	_ = syscall.Rmdir(m.base)
}
