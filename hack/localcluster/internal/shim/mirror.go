package shim

import (
	"context"
	"errors"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/sluice-net/sluice/hack/localcluster/internal/nsexec"
)

// IsMirror reports whether pod is a mirror pod: the API's copy of a pod
// the node runs by other means (the local cluster's agent daemons, as a
// kubelet's static pods). The shim never runs one; it reports its status.
func IsMirror(pod *v1.Pod) bool {
	_, ok := pod.Annotations[v1.MirrorPodAnnotationKey]
	return ok
}

// mirror follows one mirror pod: its readiness probes, run as the kubelet
// runs a static pod's, decide the status it reports.
type mirror struct {
	s      *Shim
	pod    *v1.Pod
	cancel context.CancelFunc
}

// observeMirror starts reporting a mirror pod new to this node, and
// finishes the deletion of one the API marked for deletion (a mirror pod
// has no process of the shim's to stop).
func (s *Shim) observeMirror(ctx context.Context, pod *v1.Pod) {
	if pod.DeletionTimestamp != nil {
		s.forgetMirror(pod.UID)
		err := s.cfg.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name,
			metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0), Preconditions: metav1.NewUIDPreconditions(string(pod.UID))})
		if err != nil && !apierrors.IsNotFound(err) {
			s.cfg.Log.Info("mirror pod deletion", "pod", pod.Namespace+"/"+pod.Name, "error", err)
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mirrors[pod.UID] != nil {
		return
	}
	mctx, cancel := context.WithCancel(ctx)
	m := &mirror{s: s, pod: pod.DeepCopy(), cancel: cancel}
	s.mirrors[pod.UID] = m
	go m.run(mctx)
}

// forgetMirror stops reporting a mirror pod; false if uid is none.
func (s *Shim) forgetMirror(uid types.UID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mirrors[uid]
	if m != nil {
		m.cancel()
		delete(s.mirrors, uid)
	}
	return m != nil
}

// run probes the pod's containers every period (the shortest readiness
// probe period; 1 s without probes) and writes the status whenever the
// readiness of a container changes, and once at the start.
func (m *mirror) run(ctx context.Context) {
	log := m.s.cfg.Log.With("pod", m.pod.Namespace+"/"+m.pod.Name, "mirror", true)
	period := time.Duration(0)
	for _, c := range m.pod.Spec.Containers {
		if p := c.ReadinessProbe; p != nil {
			if d := time.Duration(max(p.PeriodSeconds, 1)) * time.Second; period == 0 || d < period {
				period = d
			}
		}
	}
	if period == 0 {
		period = time.Second
	}
	started := metav1.Now()
	var last map[string]bool
	written := false
	for {
		ready := map[string]bool{}
		for i := range m.pod.Spec.Containers {
			c := &m.pod.Spec.Containers[i]
			ready[c.Name] = c.ReadinessProbe == nil ||
				m.s.probe(ctx, c.ReadinessProbe, c, m.s.cfg.NodeIPs[0], nsexec.Target{}) == nil
		}
		if ctx.Err() != nil {
			return
		}
		changed := !written || len(last) != len(ready)
		for k, v := range ready {
			changed = changed || last[k] != v
		}
		if changed {
			if err := m.writeStatus(ctx, ready, started); err != nil {
				log.Info("mirror pod status update failed", "error", err)
			} else {
				written, last = true, ready
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(period):
		}
	}
}

// writeStatus reports the pod Running at the node's address, each
// container Ready as probed.
func (m *mirror) writeStatus(ctx context.Context, ready map[string]bool, started metav1.Time) error {
	pods := m.s.cfg.Client.CoreV1().Pods(m.pod.Namespace)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, m.pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != m.pod.UID {
			return errors.New("replaced by a pod of the same name")
		}
		ips := m.s.cfg.NodeIPs
		st := v1.PodStatus{
			Phase: v1.PodRunning, HostIP: ips[0], HostIPs: hostIPs(ips),
			PodIP: ips[0], PodIPs: podIPs(ips), StartTime: &started,
		}
		allReady := len(m.pod.Spec.Containers) > 0
		for _, c := range m.pod.Spec.Containers {
			st.ContainerStatuses = append(st.ContainerStatuses, v1.ContainerStatus{
				Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: ready[c.Name], Started: ptr.To(true),
				ContainerID: "localcluster://" + string(m.pod.UID) + "/" + c.Name,
				State:       v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: started}},
			})
			allReady = allReady && ready[c.Name]
		}
		cond := func(t v1.PodConditionType, ok bool) v1.PodCondition {
			c := v1.PodCondition{Type: t, Status: v1.ConditionFalse, LastTransitionTime: metav1.Now()}
			if ok {
				c.Status = v1.ConditionTrue
			}
			for _, old := range cur.Status.Conditions {
				if old.Type == c.Type && old.Status == c.Status {
					c.LastTransitionTime = old.LastTransitionTime
				}
			}
			return c
		}
		st.Conditions = []v1.PodCondition{
			cond(v1.PodScheduled, true), cond(v1.PodReadyToStartContainers, true), cond(v1.PodInitialized, true),
			cond(v1.ContainersReady, allReady), cond(v1.PodReady, allReady),
		}
		cur.Status = st
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}
