// Package agenttest holds what the agent's controller tests share: Node
// objects to feed them, and reading back the Events a controller posted
// and the metrics it set.
package agenttest

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"

	"github.com/sluice-net/sluice/agent/internal/metrics"
)

// Node is a Node with pod CIDRs cidrs and InternalIPs addrs.
func Node(name string, cidrs []string, addrs ...string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.NodeSpec{PodCIDRs: cidrs}}
	for _, a := range addrs {
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: a})
	}
	return n
}

// Events drains the Events recorded so far ("Warning Reason message").
func Events(rec *record.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// MetricValue reads a counter or gauge from m's registry: the series whose
// one label has the given value, or the first when label is "".
func MetricValue(t testing.TB, m *metrics.Metrics, name, label string) float64 {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			if label != "" && (len(s.GetLabel()) != 1 || s.GetLabel()[0].GetValue() != label) {
				continue
			}
			return s.GetCounter().GetValue() + s.GetGauge().GetValue()
		}
	}
	return 0
}
