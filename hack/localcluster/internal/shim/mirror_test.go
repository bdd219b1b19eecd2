package shim

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
)

// TestMirrorPodStatus: the shim runs nothing for a mirror pod, reports it
// Running at the node's address, and Ready exactly while its readiness
// probe passes.
func TestMirrorPodStatus(t *testing.T) {
	var healthy atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())

	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "agent-node-1", Namespace: "sys", UID: "u1",
			Annotations: map[string]string{v1.MirrorPodAnnotationKey: "test"}},
		Spec: v1.PodSpec{NodeName: "node-1", HostNetwork: true, Containers: []v1.Container{{
			Name: "agent", Image: "sluice:dev",
			ReadinessProbe: &v1.Probe{PeriodSeconds: 1, ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{
				Host: "127.0.0.1", Path: "/readyz", Port: intstr.FromInt(port)}}},
		}}},
	}
	client := fake.NewClientset(pod)
	s := &Shim{cfg: Config{NodeName: "node-1", NodeIPs: []string{"192.0.2.1", "2001:db8::1"}, Client: client, Log: slog.Default()},
		pods: map[types.UID]*runningPod{}, mirrors: map[types.UID]*mirror{}}
	if !IsMirror(pod) {
		t.Fatal("IsMirror is false for a pod with the mirror annotation")
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	s.observe(ctx, pod)
	if len(s.pods) != 0 {
		t.Fatalf("the shim runs the mirror pod: %v", s.pods)
	}

	wait := func(ready bool) {
		t.Helper()
		var last string
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			got, err := client.CoreV1().Pods("sys").Get(ctx, "agent-node-1", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			st := got.Status
			cond := v1.ConditionUnknown
			for _, c := range st.Conditions {
				if c.Type == v1.PodReady {
					cond = c.Status
				}
			}
			last = fmt.Sprintf("phase %s, podIP %s, hostIP %s, Ready %s", st.Phase, st.PodIP, st.HostIP, cond)
			if st.Phase == v1.PodRunning && st.PodIP == "192.0.2.1" && st.HostIP == "192.0.2.1" &&
				(cond == v1.ConditionTrue) == ready && cond != v1.ConditionUnknown &&
				len(st.ContainerStatuses) == 1 && st.ContainerStatuses[0].Ready == ready {
				return
			}
		}
		t.Fatalf("want Running at the node's address with Ready %v; got %s", ready, last)
	}
	wait(false)
	healthy.Store(true)
	wait(true)
	healthy.Store(false)
	wait(false)

	// Gone from the API: the shim stops reporting it.
	s.forget(pod.UID)
	if len(s.mirrors) != 0 {
		t.Errorf("still reporting %d mirror pods after forget", len(s.mirrors))
	}
}
