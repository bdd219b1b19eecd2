package shim

import (
	"context"
	"fmt"
	"sort"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// podStatus is what the kubelet would report: phase, addresses, and
// readiness of each container and of the pod. message, when set, explains
// why the pod is not running yet.
func (rp *runningPod) podStatus(message string) v1.PodStatus {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	st := v1.PodStatus{
		Phase:     v1.PodRunning,
		HostIP:    rp.s.cfg.NodeIPs[0],
		HostIPs:   hostIPs(rp.s.cfg.NodeIPs),
		StartTime: &rp.started,
		Message:   message,
	}
	if len(rp.ips) == 0 {
		st.Phase = v1.PodPending
	}
	st.PodIPs = podIPs(rp.ips)
	if len(rp.ips) > 0 {
		st.PodIP = rp.ips[0]
	}
	allReady := len(rp.pod.Spec.Containers) > 0
	for _, c := range rp.pod.Spec.Containers {
		cs := v1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: rp.ready[c.Name],
			RestartCount: rp.restarts[c.Name], ContainerID: fmt.Sprintf("localcluster://%s/%s", rp.pod.UID, c.Name),
		}
		if cmd := rp.procs[c.Name]; cmd != nil {
			cs.State.Running = &v1.ContainerStateRunning{StartedAt: rp.started}
			started := true
			cs.Started = &started
		} else {
			cs.State.Waiting = &v1.ContainerStateWaiting{Reason: "ContainerCreating", Message: message}
		}
		allReady = allReady && cs.Ready
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	sort.Slice(st.ContainerStatuses, func(i, j int) bool { return st.ContainerStatuses[i].Name < st.ContainerStatuses[j].Name })
	cond := func(t v1.PodConditionType, ok bool) v1.PodCondition {
		s := v1.ConditionFalse
		if ok {
			s = v1.ConditionTrue
		}
		return v1.PodCondition{Type: t, Status: s, LastTransitionTime: metav1.Now()}
	}
	st.Conditions = []v1.PodCondition{
		cond(v1.PodScheduled, true),
		cond(v1.PodReadyToStartContainers, len(rp.ips) > 0),
		cond(v1.PodInitialized, len(rp.ips) > 0),
		cond(v1.ContainersReady, allReady),
		cond(v1.PodReady, allReady),
	}
	return st
}

// updateStatus writes the pod's status, keeping transition times of
// conditions that did not change.
func (rp *runningPod) updateStatus(ctx context.Context, message string) {
	// One writer at a time, each with a snapshot taken while it holds the
	// turn: a status computed earlier can never overwrite a newer one.
	rp.statusMu.Lock()
	defer rp.statusMu.Unlock()
	pods := rp.s.cfg.Client.CoreV1().Pods(rp.pod.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		want := rp.podStatus(message)
		cur, err := pods.Get(ctx, rp.pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != rp.pod.UID {
			return nil // a new pod with the same name: not ours
		}
		for i, c := range want.Conditions {
			for _, old := range cur.Status.Conditions {
				if old.Type == c.Type && old.Status == c.Status {
					want.Conditions[i].LastTransitionTime = old.LastTransitionTime
				}
			}
		}
		cur.Status = want
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		rp.log.Info("pod status update failed", "error", err)
	}
}

// setNodeReady reports the node Ready unless the network is not (netErr).
func (s *Shim) setNodeReady(ctx context.Context, netErr error) error {
	nodes := s.cfg.Client.CoreV1().Nodes()
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := nodes.Get(ctx, s.cfg.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := v1.NodeCondition{Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady",
			Message: "localcluster node shim is posting ready status", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}
		if netErr != nil {
			c.Status, c.Reason, c.Message = v1.ConditionFalse, "NetworkPluginNotReady", "CNI STATUS: "+netErr.Error()
		}
		replaced := false
		for i, old := range n.Status.Conditions {
			if old.Type == v1.NodeReady {
				if old.Status == c.Status {
					c.LastTransitionTime = old.LastTransitionTime
				}
				n.Status.Conditions[i], replaced = c, true
			}
		}
		if !replaced {
			n.Status.Conditions = append(n.Status.Conditions, c)
		}
		_, err = nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
}

func hostIPs(ips []string) []v1.HostIP {
	var out []v1.HostIP
	for _, ip := range ips {
		out = append(out, v1.HostIP{IP: ip})
	}
	return out
}

func podIPs(ips []string) []v1.PodIP {
	var out []v1.PodIP
	for _, ip := range ips {
		out = append(out, v1.PodIP{IP: ip})
	}
	return out
}
