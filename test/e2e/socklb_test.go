//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/internal/observeapi"
)

// socketLBAnnotation opts a pod out of socket-level load balancing.
const socketLBAnnotation = "sluice.dev/socket-lb"

// TestSocketLBInPods: a pod's connection to a ClusterIP is translated at
// its socket (sluice observe shows the hook "socket") and reaches the
// backend; a pod annotated
// sluice.dev/socket-lb: disabled is translated per packet on its veth
// (hook from_pod), and switching the annotation while it runs moves its
// next connection to the socket.
func TestSocketLBInPods(t *testing.T) {
	t.Parallel()
	f := newTestNS(t)
	a, b := f.nodes[0], f.nodes[1]
	web := map[string]string{"app": "web"}
	optedOut := netexecPod("client-tc", b, nil)
	optedOut.Annotations = map[string]string{socketLBAnnotation: "disabled"}
	f.runPods(netexecPod("web-a", a, web), netexecPod("client", b, nil), optedOut)
	vip := f.createService(service("web", web), 1)
	url := "http://" + net.JoinHostPort(vip, strconv.Itoa(svcHTTPPort)) + "/hostname"

	// translatedAt fetches the Service from client and says where sluice
	// observe saw the connection translated.
	translatedAt := func(client string) (string, error) {
		port := nextSourcePort()
		answered, err := f.curlFrom(client, port, 5*time.Second, url)
		if err != nil {
			return "", fmt.Errorf("%s -> %s: %w", client, url, err)
		}
		fl := f.awaitFlow(b, port, "--verdict", observeapi.VerdictTranslated, "--pod", f.name+"/"+client)
		if fl.Backend == nil || fl.Backend.Pod != f.name+"/"+strings.TrimSpace(answered) || fl.Dst.IP != vip {
			return "", fmt.Errorf("%s: flow %s, want %s translated to %s, the pod that answered", client, describeFlow(fl), vip, answered)
		}
		return fl.Hook, nil
	}
	f.dialEventually("client", "http", vip, svcHTTPPort)
	for _, c := range []struct{ client, hook string }{{"client", "socket"}, {"client-tc", "from_pod"}} {
		hook, err := translatedAt(c.client)
		if err != nil {
			t.Fatal(err)
		}
		if hook != c.hook {
			t.Errorf("%s: translated at %q, want %q", c.client, hook, c.hook)
		}
	}

	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"enabled"}}}`, socketLBAnnotation)
	if _, err := f.client.CoreV1().Pods(f.name).Patch(t.Context(), "client-tc", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	f.eventually("client-tc translated at its socket once its annotation allows it", datapathTimeout, func(context.Context) error {
		hook, err := translatedAt("client-tc")
		if err == nil && hook != "socket" {
			err = fmt.Errorf("translated at %q", hook)
		}
		return err
	})
}
