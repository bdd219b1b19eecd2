package shim

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	v1 "k8s.io/api/core/v1"
)

// cniNet calls the installed plugin with the installed conflist through
// libcni, as containerd and CRI-O do.
type cniNet struct {
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
}

func newCNINet(binDir, confDir, cacheDir string) (*cniNet, error) {
	files, err := libcni.ConfFiles(confDir, []string{".conflist"})
	if err != nil {
		return nil, fmt.Errorf("read CNI config dir %s: %w", confDir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no .conflist in %s: is the CNI installed on this node?", confDir)
	}
	sort.Strings(files) // the runtime's rule: the first file by name wins
	list, err := libcni.NetworkConfFromFile(files[0])
	if err != nil {
		return nil, fmt.Errorf("CNI config %s: %w", files[0], err)
	}
	return &cniNet{cni: libcni.NewCNIConfigWithCacheDir([]string{binDir}, cacheDir, nil), list: list}, nil
}

func runtimeConf(pod *v1.Pod, netns string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: "localcluster-" + string(pod.UID),
		NetNS:       netns,
		IfName:      "eth0",
		// IgnoreUnknown, as containerd sends it: plugins that do not know
		// the Kubernetes arguments (the reference ones) accept them.
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", pod.Namespace}, {"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", "localcluster-" + string(pod.UID)}, {"K8S_POD_UID", string(pod.UID)},
		},
	}
}

// add runs CNI ADD and returns the pod's addresses.
func (n *cniNet) add(ctx context.Context, pod *v1.Pod, netns string) ([]string, error) {
	res, err := n.cni.AddNetworkList(ctx, n.list, runtimeConf(pod, netns))
	if err != nil {
		return nil, err
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil, err
	}
	var ips []string
	for _, ip := range r.IPs {
		ips = append(ips, ip.Address.IP.String())
	}
	if len(ips) == 0 {
		return nil, errors.New("the plugin returned no address")
	}
	return ips, nil
}

func (n *cniNet) del(ctx context.Context, pod *v1.Pod, netns string) error {
	return n.cni.DelNetworkList(ctx, n.list, runtimeConf(pod, netns))
}

// status is CNI STATUS: nil once the plugin can add pods.
func (n *cniNet) status(ctx context.Context) error {
	return n.cni.GetStatusNetworkList(ctx, n.list)
}
