package compile

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/agent/internal/apiobj"
)

// KindHostPort is the Kind of a frontend a pod's hostPort makes.
const KindHostPort = "HostPort"

// HostPorts compiles the hostPorts of a pod running on this node into
// frontends on the node's addresses (those of the pod's hostIP only, when
// it names one), each to the pod's address of that family and the
// container port, for traffic from outside and from inside alike: what the
// portmap plugin does with kube-proxy. Entry.Service names the pod. A
// hostNetwork pod, a pod of another node, or one without an address yet
// has none.
func HostPorts(pod *v1.Pod, node Node) (Desired, []error) {
	out := Desired{}
	if pod.Spec.NodeName != node.Name || pod.Spec.HostNetwork || pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
		return out, nil
	}
	key := types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}
	var errs []error
	bad := func(field, reason string) {
		errs = append(errs, &apiobj.Error{Kind: "Pod", Object: key, Field: field, Reason: reason})
	}
	var podAddrs []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			podAddrs = append(podAddrs, a)
		}
	}
	for ci, c := range pod.Spec.Containers {
		for pi, p := range c.Ports {
			if p.HostPort == 0 {
				continue
			}
			field := fmt.Sprintf("spec.containers[%d].ports[%d]", ci, pi)
			proto, ok := apiobj.Protocol(p.Protocol)
			if !ok {
				bad(field+".protocol", fmt.Sprintf("%q is not TCP, UDP or SCTP", p.Protocol))
				continue
			}
			if p.HostPort < 0 || p.HostPort > 65535 || p.ContainerPort <= 0 || p.ContainerPort > 65535 {
				bad(field, fmt.Sprintf("hostPort %d to containerPort %d: not ports", p.HostPort, p.ContainerPort))
				continue
			}
			addrs := node.Addrs
			if p.HostIP != "" {
				hostIP, err := netip.ParseAddr(p.HostIP)
				switch {
				case err != nil:
					bad(field+".hostIP", fmt.Sprintf("%q is not an IP address", p.HostIP))
					continue
				case !hostIP.IsUnspecified():
					addrs = []netip.Addr{hostIP}
				}
			}
			for _, a := range addrs {
				for _, pa := range podAddrs {
					if familyOf(pa) != familyOf(a) {
						continue
					}
					e := Entry{Service: key, PortName: p.Name, Kind: KindHostPort, Created: pod.CreationTimestamp.Time,
						Backends: []Backend{{Addr: netip.AddrPortFrom(pa, uint16(p.ContainerPort)), Local: true}}}
					for _, scope := range []Scope{ScopeInternal, ScopeExternal} {
						out[Frontend{Addr: netip.AddrPortFrom(a, uint16(p.HostPort)), Proto: proto, Scope: scope}] = e
					}
				}
			}
		}
	}
	return out, errs
}
