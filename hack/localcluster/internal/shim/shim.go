// Package shim is the local cluster's stand-in for the kubelet. Running in
// a node's network namespace, it watches the pods bound to its node, gives
// each a network namespace through the installed CNI plugin (libcni with
// the installed conflist, exactly as a container runtime calls it), runs
// the containers' commands inside it, probes readiness, reports status, and
// on deletion honours preStop and the grace period before CNI DEL.
package shim

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Config places one node's shim.
type Config struct {
	NodeName string
	// NodeIPs are the node's InternalIPs, IPv4 first: hostNetwork pods'
	// addresses and every pod's hostIPs.
	NodeIPs []string
	Client  kubernetes.Interface
	// CNIBinDir and CNIConfDir are the node's installed CNI directories;
	// CNICacheDir is libcni's result cache.
	CNIBinDir, CNIConfDir, CNICacheDir string
	// Agnhost is the built agnhost binary that agnhost images run.
	Agnhost string
	// NetnsPrefix names pod network namespaces: prefix + pod UID.
	NetnsPrefix string
	// Cgroup is the node's cgroup v2 directory; each pod gets a child.
	Cgroup string
	// StateDir keeps per-pod PID files (for `localcluster down`) and logs.
	StateDir string
	Log      *slog.Logger
}

// Shim runs the node's pods.
type Shim struct {
	cfg  Config
	cni  *cniNet
	mu   sync.Mutex
	pods map[types.UID]*runningPod
	// mirrors are the mirror pods of the node (IsMirror), reported only.
	mirrors map[types.UID]*mirror
}

// New checks the CNI configuration and returns a shim.
func New(cfg Config) (*Shim, error) {
	cni, err := newCNINet(cfg.CNIBinDir, cfg.CNIConfDir, cfg.CNICacheDir)
	if err != nil {
		return nil, err
	}
	return &Shim{cfg: cfg, cni: cni, pods: map[types.UID]*runningPod{}, mirrors: map[types.UID]*mirror{}}, nil
}

// Run serves pods until ctx ends, then stops every pod it runs.
func (s *Shim) Run(ctx context.Context) error {
	go s.heartbeat(ctx)
	factory := informers.NewSharedInformerFactoryWithOptions(s.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", s.cfg.NodeName).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.observe(ctx, o.(*v1.Pod)) },
		UpdateFunc: func(_, o any) { s.observe(ctx, o.(*v1.Pod)) },
		DeleteFunc: func(o any) {
			if tomb, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = tomb.Obj
			}
			if p, ok := o.(*v1.Pod); ok {
				s.forget(p.UID)
			}
		},
	})
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())
	<-ctx.Done()
	s.mu.Lock()
	pods := make([]*runningPod, 0, len(s.pods))
	for _, p := range s.pods {
		pods = append(pods, p)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range pods {
		wg.Add(1)
		go func() { defer wg.Done(); p.stopNow(context.Background()) }()
	}
	wg.Wait()
	return nil
}

// observe starts a pod new to this node and begins termination of one the
// API marked for deletion.
func (s *Shim) observe(ctx context.Context, pod *v1.Pod) {
	if IsMirror(pod) {
		s.observeMirror(ctx, pod)
		return
	}
	s.mu.Lock()
	rp := s.pods[pod.UID]
	if rp == nil {
		if pod.DeletionTimestamp != nil && pod.Status.Phase == "" {
			s.mu.Unlock()
			return // never started here; nothing to stop
		}
		rp = newRunningPod(s, pod)
		s.pods[pod.UID] = rp
		s.mu.Unlock()
		go rp.run(ctx)
		return
	}
	s.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		rp.requestTermination(pod)
	}
}

// forget stops a pod whose object is gone (force deletion) at once.
func (s *Shim) forget(uid types.UID) {
	if s.forgetMirror(uid) {
		return
	}
	s.mu.Lock()
	rp := s.pods[uid]
	s.mu.Unlock()
	if rp != nil {
		rp.requestTermination(nil)
	}
}

func (s *Shim) remove(uid types.UID) {
	s.mu.Lock()
	delete(s.pods, uid)
	s.mu.Unlock()
}

// podDir holds a pod's PID files and container logs.
func (s *Shim) podDir(uid types.UID) string {
	return filepath.Join(s.cfg.StateDir, "pods", string(uid))
}

// heartbeat keeps the Node Ready while the CNI reports its network ready
// (CNI STATUS, as the kubelet learns it through the runtime).
func (s *Shim) heartbeat(ctx context.Context) {
	for {
		netErr := s.cni.status(ctx)
		if err := s.setNodeReady(ctx, netErr); err != nil {
			s.cfg.Log.Warn("node status update failed", "node", s.cfg.NodeName, "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
}

// signalGroup sends sig to a process group started by nsexec.Start.
func signalGroup(pid int, sig syscall.Signal) {
	_ = syscall.Kill(-pid, sig)
}

func writePID(dir, name string, pid int) {
	_ = os.MkdirAll(dir, 0o755)
	_ = os.WriteFile(filepath.Join(dir, name+".pid"), []byte(fmt.Sprintf("%d\n", pid)), 0o644)
}
