package clustercidrs

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/agent/internal/nodewatch"
)

func node(name string, cidrs ...string) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.NodeSpec{PodCIDRs: cidrs}}
}

func TestParse(t *testing.T) {
	static, fromNodes, err := Parse([]string{"10.250.0.1/16", "nodes"})
	if err != nil || !fromNodes || fmt.Sprint(static) != "[10.250.0.0/16]" {
		t.Errorf("Parse: %v %v %v; want [10.250.0.0/16] (masked), from nodes", static, fromNodes, err)
	}
	if _, _, err := Parse([]string{"nodes", "all"}); err == nil || !strings.Contains(err.Error(), `clusterCIDRs[1]: "all" is not a CIDR or "nodes"`) {
		t.Errorf("Parse of a bad element: %v", err)
	}
}

func TestDesired(t *testing.T) {
	got, errs := Desired([]*v1.Node{
		node("b", "10.244.2.0/24", "fd00:10:244:2::/64"),
		node("a", "10.244.1.7/24", "fd00:10:244:1::/64"),
		node("bad", "nope"),
		node("none"),
	}, []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")})
	want := "[10.244.1.0/24 10.244.2.0/24 fd00:10:244:1::/64 fd00:10:244:2::/64]"
	if fmt.Sprint(got) != want {
		t.Errorf("Desired: %v, want %s (masked, sorted, once each)", got, want)
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), `node bad: spec.podCIDRs[0]: "nope" is not a CIDR`) {
		t.Errorf("errors %v", errs)
	}
}

// TestController: the masquerade follows Nodes joining and leaving; a
// failed apply is retried.
func TestController(t *testing.T) {
	client := fake.NewClientset(node("a", "10.244.1.0/24"))
	factory := informers.NewSharedInformerFactory(client, 0)
	var mu sync.Mutex
	var applied [][]netip.Prefix
	fail := true
	apply := func(c []netip.Prefix) error {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			fail = false
			return fmt.Errorf("netlink: busy")
		}
		applied = append(applied, c)
		return nil
	}
	c, err := New(slog.Default(), factory, nil, apply, metrics.New(), nodewatch.Options{MinSync: 10 * time.Millisecond, MaxSync: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	factory.Start(ctx.Done())
	go func() { _ = c.Run(ctx) }()
	waitFor := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			mu.Lock()
			last := ""
			if len(applied) > 0 {
				last = fmt.Sprint(applied[len(applied)-1])
			}
			mu.Unlock()
			if last == want {
				return
			}
		}
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("applied %v, want last %s", applied, want)
	}
	waitFor("[10.244.1.0/24]")
	if _, err := client.CoreV1().Nodes().Create(ctx, node("b", "10.244.2.0/24"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("[10.244.1.0/24 10.244.2.0/24]")
	if err := client.CoreV1().Nodes().Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("[10.244.2.0/24]")
	mu.Lock()
	defer mu.Unlock()
	if slices.ContainsFunc(applied, func(c []netip.Prefix) bool { return len(c) == 0 }) {
		t.Errorf("an empty set was applied: %v", applied)
	}
}
