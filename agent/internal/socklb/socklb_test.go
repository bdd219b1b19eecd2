package socklb

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/endpointapi"
)

func TestWanted(t *testing.T) {
	for _, c := range []struct {
		annotations map[string]string
		on          bool
		err         string
	}{
		{nil, true, ""},
		{map[string]string{Annotation: "enabled"}, true, ""},
		{map[string]string{Annotation: "disabled"}, false, ""},
		{map[string]string{Annotation: "false"}, false, `metadata.annotations["sluice.dev/socket-lb"]: "false": want "enabled" or "disabled"`},
	} {
		on, err := Wanted(&v1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: c.annotations}})
		if on != c.on || (err == nil) != (c.err == "") || (err != nil && err.Error() != c.err) {
			t.Errorf("%v: got %v, %v; want %v, %q", c.annotations, on, err, c.on, c.err)
		}
	}
}

// mapWriter stands in for the datapath's namespace map.
type mapWriter struct {
	mu      sync.Mutex
	entries map[uint64]bpf.PodSockets
}

func (w *mapWriter) ServePodSockets(netns uint64, p bpf.PodSockets) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.entries[netns] = p
	return nil
}

func (w *mapWriter) PodSocketEntries() (map[uint64]bpf.PodSockets, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[uint64]bpf.PodSockets{}
	for k, v := range w.entries {
		out[k] = v
	}
	return out, nil
}

func (w *mapWriter) on(netns uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.entries[netns].On
}

func pod(name, node, ip string, annotations map[string]string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Annotations: annotations},
		Spec:       v1.PodSpec{NodeName: node},
		Status:     v1.PodStatus{PodIPs: []v1.PodIP{{IP: ip}}},
	}
}

// TestEnterAndFollow: a pod is entered as its annotation says when the
// CNI plugin wires it, a plugin without a cookie enters nothing, and an
// annotation changed while the pod runs switches its entry.
func TestEnterAndFollow(t *testing.T) {
	client := fake.NewClientset(
		pod("plain", "node-a", "10.0.0.5", nil),
		pod("shy", "node-a", "10.0.0.6", map[string]string{Annotation: "disabled"}),
		pod("typo", "node-a", "10.0.0.7", map[string]string{Annotation: "no"}),
	)
	factory := informers.NewSharedInformerFactory(client, 0)
	w := &mapWriter{entries: map[uint64]bpf.PodSockets{}}
	c, err := New(slog.New(slog.NewTextHandler(io.Discard, nil)), factory, w,
		Options{NodeName: "node-a", MinSync: time.Millisecond, MaxSync: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	go func() { _ = c.Run(ctx) }()

	for i, name := range []string{"plain", "shy", "typo"} {
		ip := netip.AddrFrom4([4]byte{10, 0, 0, byte(5 + i)})
		ep := endpointapi.Endpoint{Namespace: "default", Name: name, ContainerID: name, Addrs: []netip.Addr{ip}, NetnsCookie: uint64(100 + i)}
		if err := c.EnsureEndpoint(ctx, ep); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.EnsureEndpoint(ctx, endpointapi.Endpoint{Namespace: "default", Name: "plain", ContainerID: "old"}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := w.PodSocketEntries(); len(entries) != 3 || !entries[100].On || entries[101].On || entries[102].On {
		t.Fatalf("entries %v, want plain on, shy and typo off, nothing for a plugin without a cookie", entries)
	}

	p, err := client.CoreV1().Pods("default").Get(ctx, "plain", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Annotations = map[string]string{Annotation: "disabled"}
	if _, err := client.CoreV1().Pods("default").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for w.on(100) {
		if time.Now().After(deadline) {
			t.Fatal("plain's entry still on after its annotation turned socket LB off")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if entries, _ := w.PodSocketEntries(); entries[101].On || entries[102].On {
		t.Errorf("other entries changed: %v", entries)
	}
}
