package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-net/sluice/hack/localcluster/internal/nsexec"
)

// daemon is a long-running process of the cluster, recorded so that
// `down` and `restart-agent` end exactly it, by its own PID.
type daemon struct {
	Name   string   `json:"name"`
	Argv   []string `json:"argv"`
	Env    []string `json:"env,omitempty"`
	Netns  string   `json:"netns,omitempty"` // path; "" is the root namespace
	Cgroup string   `json:"cgroup,omitempty"`
	PID    int      `json:"pid"`
}

func (d *daemon) logPath() string { return path("logs", d.Name+".log") }

// start runs the daemon detached from this process: its own process
// group, output to its log file.
func (d *daemon) start() error {
	logf, err := os.OpenFile(d.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(d.Argv[0], d.Argv[1:]...)
	cmd.Env = append(os.Environ(), d.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := nsexec.Start(nsexec.Target{Netns: d.Netns, Cgroup: d.Cgroup}, cmd); err != nil {
		return fmt.Errorf("start %s: %w", d.Name, err)
	}
	d.PID = cmd.Process.Pid
	// Reap it if it dies while this process still runs; after that, init does.
	go func() { _ = cmd.Wait() }()
	return nil
}

// alive reports whether the recorded PID still runs the recorded program
// (a PID reused by something else does not count).
func (d *daemon) alive() bool { return pidRuns(d.PID, d.Argv[0]) }

func pidRuns(pid int, program string) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	argv0, _, _ := strings.Cut(string(b), "\x00")
	if program != "" && argv0 != program {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	// A zombie has ended; only its parent's wait is missing.
	return err == nil && !strings.Contains(string(st), ") Z ")
}

// stop sends SIGTERM, waits up to grace, then SIGKILL: to the daemon's
// process group (it leads one: nsexec.Start), so that its children, such as
// kube-proxy's iptables-restore, end with it; after checking the PID still
// belongs to the daemon.
func (d *daemon) stop(grace time.Duration) error {
	return stopPID(d.PID, d.Argv[0], grace)
}

func stopPID(pid int, program string, grace time.Duration) error {
	if !pidRuns(pid, program) {
		return nil
	}
	if err := signalGroup(pid, syscall.SIGTERM); err != nil {
		return err
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && pidRuns(pid, program) {
		time.Sleep(50 * time.Millisecond)
	}
	// Whatever is left of the group, the leader included, goes now.
	if err := signalGroup(pid, syscall.SIGKILL); err != nil {
		return err
	}
	for range 100 {
		if !pidRuns(pid, program) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("PID %d (%s) survived SIGKILL", pid, program)
}

// signalGroup signals the process group led by pid, or pid alone if it
// leads none; a group already gone is not an error.
func signalGroup(pid int, sig syscall.Signal) error {
	err := syscall.Kill(-pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		err = syscall.Kill(pid, sig)
	}
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to PID %d: %w", sig, pid, err)
	}
	return nil
}
