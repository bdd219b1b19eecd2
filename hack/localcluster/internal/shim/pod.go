package shim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-net/sluice/hack/localcluster/internal/nsexec"
)

// runningPod is one pod's sandbox (network namespace, cgroup) and
// containers on this node.
type runningPod struct {
	s   *Shim
	log *slog.Logger

	mu        sync.Mutex
	statusMu  sync.Mutex // serialises status writes (updateStatus)
	pod       *v1.Pod
	netns     string // path; "" for hostNetwork pods (the node's namespace)
	uts       string // path of the UTS namespace holding the pod's hostname
	cgroup    string
	ips       []string
	ready     map[string]bool // container name -> readiness
	restarts  map[string]int32
	started   metav1.Time
	procs     map[string]*exec.Cmd
	stopping  bool
	terminate chan struct{} // closed when deletion is requested
	exited    chan struct{} // closed when the containers have stopped
	termOnce  sync.Once
	done      chan struct{} // closed when the pod is fully torn down
}

func newRunningPod(s *Shim, pod *v1.Pod) *runningPod {
	return &runningPod{
		s: s, log: s.cfg.Log.With("pod", pod.Namespace+"/"+pod.Name), pod: pod.DeepCopy(),
		ready: map[string]bool{}, restarts: map[string]int32{}, procs: map[string]*exec.Cmd{},
		terminate: make(chan struct{}), exited: make(chan struct{}), done: make(chan struct{}),
	}
}

// run sets the sandbox up, runs init containers then containers, probes
// them, and tears everything down once termination is requested.
func (rp *runningPod) run(ctx context.Context) {
	defer close(rp.done)
	defer rp.s.remove(rp.pod.UID)
	rp.started = metav1.Now()
	if err := rp.sandbox(ctx); err != nil {
		return // terminated before the sandbox came up
	}
	for i := range rp.pod.Spec.InitContainers {
		if err := rp.runInit(ctx, &rp.pod.Spec.InitContainers[i]); err != nil {
			rp.teardown(ctx)
			return
		}
	}
	var wg sync.WaitGroup
	for i := range rp.pod.Spec.Containers {
		c := &rp.pod.Spec.Containers[i]
		wg.Add(2)
		go func() { defer wg.Done(); rp.supervise(ctx, c) }()
		go func() { defer wg.Done(); rp.probeLoop(ctx, c) }()
	}
	rp.updateStatus(ctx, "")
	select {
	case <-rp.terminate:
	case <-ctx.Done():
	}
	rp.shutdown(ctx)
	wg.Wait()
	rp.teardown(ctx)
}

// sandbox creates the pod's network namespace and cgroup and calls CNI
// ADD, retrying (as the kubelet does) until it works or the pod goes.
func (rp *runningPod) sandbox(ctx context.Context) error {
	uid := string(rp.pod.UID)
	rp.cgroup = filepath.Join(rp.s.cfg.Cgroup, "pod-"+uid)
	if err := os.MkdirAll(rp.cgroup, 0o755); err != nil {
		rp.updateStatus(ctx, "cgroup: "+err.Error())
	}
	if rp.pod.Spec.HostNetwork {
		rp.ips = rp.s.cfg.NodeIPs
		return nil
	}
	if err := os.MkdirAll(rp.s.podDir(rp.pod.UID), 0o755); err != nil {
		return err
	}
	uts := filepath.Join(rp.s.podDir(rp.pod.UID), "uts")
	if err := nsexec.CreateUTS(uts, rp.pod.Name); err != nil {
		rp.updateStatus(ctx, "UTS namespace: "+err.Error())
		return err
	}
	rp.uts = uts
	name := rp.s.cfg.NetnsPrefix + uid
	for attempt := 0; ; attempt++ {
		err := rp.addNetwork(ctx, name)
		if err == nil {
			return nil
		}
		rp.log.Info("pod sandbox failed; retrying", "error", err)
		rp.updateStatus(ctx, "sandbox: "+err.Error())
		select {
		case <-rp.terminate:
			rp.teardown(ctx)
			return err
		case <-ctx.Done():
			rp.teardown(ctx)
			return err
		case <-time.After(time.Duration(min(attempt+1, 10)) * time.Second):
		}
	}
}

func (rp *runningPod) addNetwork(ctx context.Context, name string) error {
	if rp.netns == "" {
		if err := nsexec.Create(name); err != nil {
			return err
		}
		rp.netns = nsexec.Path(name)
		// Loopback is the runtime's job, not the CNI plugin's.
		if err := nsexec.Do(rp.netns, func() error {
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			return netlink.LinkSetUp(lo)
		}); err != nil {
			return fmt.Errorf("loopback up in %s: %w", name, err)
		}
	}
	ips, err := rp.s.cni.add(ctx, rp.pod, rp.netns)
	if err != nil {
		return fmt.Errorf("CNI ADD: %w", err)
	}
	rp.mu.Lock()
	rp.ips = ips
	rp.mu.Unlock()
	rp.log.Info("pod network ready", "ips", ips, "netns", rp.netns)
	return nil
}

// target is where the pod's processes run.
func (rp *runningPod) target() nsexec.Target {
	return nsexec.Target{Netns: rp.netns, UTS: rp.uts, Cgroup: rp.cgroup}
}

// start launches one container's process in the pod's namespace and cgroup.
func (rp *runningPod) start(c *v1.Container) (*exec.Cmd, error) {
	argv, err := Command(c, rp.s.cfg.Agnhost)
	if err != nil {
		return nil, err
	}
	rp.mu.Lock()
	pod := rp.pod.DeepCopy()
	if len(rp.ips) > 0 {
		pod.Status.PodIP = rp.ips[0]
	}
	rp.mu.Unlock()
	pod.Status.HostIP = rp.s.cfg.NodeIPs[0]
	dir := rp.s.podDir(pod.UID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cmd, logf, err := newCmd(argv, Env(c, pod), c.WorkingDir, filepath.Join(dir, c.Name+".log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	if err := nsexec.Start(rp.target(), cmd); err != nil {
		return nil, fmt.Errorf("start %v: %w", argv, err)
	}
	writePID(dir, c.Name, cmd.Process.Pid)
	rp.log.Info("container started", "container", c.Name, "pid", cmd.Process.Pid, "argv", argv)
	return cmd, nil
}

func (rp *runningPod) runInit(ctx context.Context, c *v1.Container) error {
	for {
		cmd, err := rp.start(c)
		if err == nil {
			err = cmd.Wait()
		}
		if err == nil {
			return nil
		}
		rp.updateStatus(ctx, fmt.Sprintf("init container %s: %v", c.Name, err))
		select {
		case <-rp.terminate:
			return err
		case <-time.After(2 * time.Second):
		}
	}
}

// supervise keeps a container running, restarting it per restartPolicy
// until the pod stops.
func (rp *runningPod) supervise(ctx context.Context, c *v1.Container) {
	for {
		cmd, err := rp.start(c)
		if err != nil {
			rp.updateStatus(ctx, fmt.Sprintf("container %s: %v", c.Name, err))
		} else {
			rp.mu.Lock()
			if rp.stopping {
				// Shutdown took its list of processes before this one
				// started: it is ours to end.
				rp.mu.Unlock()
				signalGroup(cmd.Process.Pid, syscall.SIGKILL)
				_ = cmd.Wait()
				return
			}
			rp.procs[c.Name] = cmd
			rp.mu.Unlock()
			if c.ReadinessProbe == nil {
				// Ready whenever it runs, as with the kubelet.
				rp.setReady(ctx, c.Name, true)
			}
			err = cmd.Wait()
			rp.mu.Lock()
			delete(rp.procs, c.Name)
			stopping := rp.stopping
			rp.mu.Unlock()
			if stopping {
				return
			}
			rp.log.Info("container exited", "container", c.Name, "result", fmt.Sprint(err))
			if rp.pod.Spec.RestartPolicy == v1.RestartPolicyNever || (err == nil && rp.pod.Spec.RestartPolicy == v1.RestartPolicyOnFailure) {
				return
			}
			rp.mu.Lock()
			rp.restarts[c.Name]++
			rp.ready[c.Name] = false
			rp.mu.Unlock()
			rp.updateStatus(ctx, "")
		}
		select {
		case <-rp.terminate:
			return
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// probeLoop keeps the container's readiness current.
func (rp *runningPod) probeLoop(ctx context.Context, c *v1.Container) {
	p := c.ReadinessProbe
	if p == nil {
		return // supervise reports it ready whenever it runs
	}
	period := time.Duration(max(p.PeriodSeconds, 1)) * time.Second
	delay := time.Duration(p.InitialDelaySeconds) * time.Second
	failures, successes := 0, 0
	// Probing goes on while the pod terminates, as the kubelet's does: a
	// draining pod stays serving (EndpointSlice serving=true) while it
	// still answers.
	for {
		select {
		case <-rp.exited:
			return
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = period
		rp.mu.Lock()
		ip := ""
		if len(rp.ips) > 0 {
			ip = rp.ips[0]
		}
		rp.mu.Unlock()
		if err := rp.s.probe(ctx, p, c, ip, rp.target()); err != nil {
			failures, successes = failures+1, 0
			if failures >= int(max(p.FailureThreshold, 1)) {
				rp.setReady(ctx, c.Name, false)
			}
		} else {
			failures, successes = 0, successes+1
			if successes >= int(max(p.SuccessThreshold, 1)) {
				rp.setReady(ctx, c.Name, true)
			}
		}
	}
}

func (rp *runningPod) setReady(ctx context.Context, container string, ready bool) {
	rp.mu.Lock()
	changed := rp.ready[container] != ready
	rp.ready[container] = ready
	rp.mu.Unlock()
	if changed {
		rp.updateStatus(ctx, "")
	}
}

// requestTermination starts the pod's shutdown; pod is the object marked
// for deletion, or nil when it is already gone from the API.
func (rp *runningPod) requestTermination(pod *v1.Pod) {
	rp.termOnce.Do(func() {
		rp.mu.Lock()
		if pod != nil {
			rp.pod = pod.DeepCopy()
		} else {
			zero := int64(0)
			rp.pod.DeletionGracePeriodSeconds = &zero
		}
		rp.mu.Unlock()
		close(rp.terminate)
	})
}

// stopNow ends the pod without waiting for a grace period (shim exit).
func (rp *runningPod) stopNow(ctx context.Context) {
	rp.requestTermination(nil)
	<-rp.done
}

// shutdown is the kubelet's termination: preStop hooks, SIGTERM, then
// SIGKILL once the grace period is over.
func (rp *runningPod) shutdown(ctx context.Context) {
	defer close(rp.exited)
	rp.mu.Lock()
	grace := time.Duration(30) * time.Second
	if g := rp.pod.DeletionGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	rp.mu.Unlock()
	deadline := time.Now().Add(grace)
	rp.log.Info("terminating", "grace", grace)
	if grace > 0 {
		rp.preStop(ctx, deadline)
	}
	rp.mu.Lock()
	rp.stopping = true
	procs := make([]*exec.Cmd, 0, len(rp.procs))
	for _, cmd := range rp.procs {
		procs = append(procs, cmd)
	}
	rp.mu.Unlock()
	for _, cmd := range procs {
		signalGroup(cmd.Process.Pid, syscall.SIGTERM)
	}
	for time.Now().Before(deadline) {
		rp.mu.Lock()
		left := len(rp.procs)
		rp.mu.Unlock()
		if left == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, cmd := range procs {
		signalGroup(cmd.Process.Pid, syscall.SIGKILL)
	}
}

// preStop runs every container's preStop hook (sleep or exec), together,
// bounded by the grace period.
func (rp *runningPod) preStop(ctx context.Context, deadline time.Time) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var wg sync.WaitGroup
	for _, c := range rp.pod.Spec.Containers {
		if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
			continue
		}
		h := c.Lifecycle.PreStop
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch {
			case h.Sleep != nil:
				select {
				case <-ctx.Done():
				case <-time.After(time.Duration(h.Sleep.Seconds) * time.Second):
				}
			case h.Exec != nil && len(h.Exec.Command) > 0:
				argv := append([]string{HostPath(h.Exec.Command[0], rp.s.cfg.Agnhost)}, h.Exec.Command[1:]...)
				cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
				if err := nsexec.Start(rp.target(), cmd); err == nil {
					_ = cmd.Wait()
				}
			}
		}()
	}
	wg.Wait()
}

// teardown releases the sandbox (CNI DEL, namespace, cgroup, PID files)
// and lets the API server forget the pod.
func (rp *runningPod) teardown(ctx context.Context) {
	// Runs on shim exit too: the sandbox must go even when ctx has ended.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if rp.netns != "" {
		if err := rp.s.cni.del(ctx, rp.pod, rp.netns); err != nil {
			rp.log.Info("CNI DEL failed", "error", err)
		}
		if err := nsexec.Delete(filepath.Base(rp.netns)); err != nil {
			rp.log.Info("delete pod netns failed", "error", err)
		}
	}
	if rp.uts != "" {
		if err := nsexec.DeleteUTS(rp.uts); err != nil {
			rp.log.Info("delete pod UTS namespace failed", "error", err)
		}
	}
	if rp.cgroup != "" {
		_ = os.Remove(rp.cgroup)
	}
	_ = os.RemoveAll(rp.s.podDir(rp.pod.UID))
	if rp.pod.DeletionTimestamp != nil {
		zero := int64(0)
		err := rp.s.cfg.Client.CoreV1().Pods(rp.pod.Namespace).Delete(ctx, rp.pod.Name,
			metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: metav1.NewUIDPreconditions(string(rp.pod.UID))})
		if err != nil && !errors.Is(err, context.Canceled) {
			rp.log.Info("final pod deletion", "result", err.Error())
		}
	}
	rp.log.Info("pod stopped")
}
