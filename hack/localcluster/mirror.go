package main

import (
	"context"
	"fmt"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/sluice-net/sluice/internal/observeapi"
)

// The local cluster's agents are daemons of this tool, not pods: nothing
// in the API would show them. Each node gets a mirror Pod, as the kubelet
// makes for a static pod it runs from a file: the DaemonSet's agent
// container on the node, hostNetwork, so that whatever finds agents
// through the API (the `sluice` CLI's remote mode: pods labelled
// app.kubernetes.io/name=sluice-agent, reached through the API server's
// pod proxy at the pod IP, the node's) finds them here as on a real
// cluster. The node's shim does not run it; it only reports it Running,
// and Ready while the agent's readiness probe passes (shim.IsMirror).

// agentPodName is the mirror Pod of the agent on node, named as the
// kubelet names a static pod's mirror: the pod's name, a dash, the node.
func agentPodName(node string) string { return "sluice-agent-" + node }

// agentMirrorPod is the mirror Pod of node's agent: the DaemonSet's pod
// template as far as a mirror pod may carry it (no service account, no
// ConfigMap volume: the API refuses both on mirror pods), owned by the
// Node like the kubelet's.
func (in *install) agentMirrorPod(node *v1.Node) *v1.Pod {
	tmpl := in.ds.Spec.Template
	agent := in.agent.DeepCopy()
	agent.VolumeMounts = nil
	if !hasPort(agent.Ports, observeapi.DefaultPort) {
		agent.Ports = append(agent.Ports, v1.ContainerPort{Name: observeapi.PortName, ContainerPort: observeapi.DefaultPort, Protocol: v1.ProtocolTCP})
	}
	for i := range agent.Ports {
		agent.Ports[i].HostPort = agent.Ports[i].ContainerPort // hostNetwork
	}
	labels := map[string]string{}
	for k, v := range tmpl.Labels {
		labels[k] = v
	}
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      agentPodName(node.Name),
			Namespace: in.ds.Namespace,
			Labels:    labels,
			Annotations: map[string]string{
				v1.MirrorPodAnnotationKey: "localcluster:" + in.ds.Namespace + "/" + in.ds.Name,
			},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID, Controller: ptr.To(true),
			}},
		},
		Spec: v1.PodSpec{
			NodeName:    node.Name,
			HostNetwork: true,
			DNSPolicy:   tmpl.Spec.DNSPolicy,
			Tolerations: tmpl.Spec.Tolerations,
			// The agent runs with the DaemonSet's service account (its
			// token kubeconfig); the mirror may not name it.
			AutomountServiceAccountToken: ptr.To(false),
			Containers:                   []v1.Container{*agent},
		},
	}
}

func hasPort(ports []v1.ContainerPort, port int32) bool {
	for _, p := range ports {
		if p.ContainerPort == port {
			return true
		}
	}
	return false
}

// registerAgentPod creates node's agent mirror Pod; the node's shim
// reports its status from then on. A mirror left by an earlier agent of
// the node is replaced.
func registerAgentPod(ctx context.Context, client kubernetes.Interface, in *install, nodeName string) error {
	node, err := client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("agent mirror pod: %w", err)
	}
	pod := in.agentMirrorPod(node)
	pods := client.CoreV1().Pods(pod.Namespace)
	err = pods.Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete the old agent mirror pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create agent mirror pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}
