package scheduler

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestChoose(t *testing.T) {
	node := func(name, zone string) *v1.Node {
		return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"zone": zone}}}
	}
	nodes := []*v1.Node{node("node-2", "b"), node("node-1", "a"), node("node-3", "a")}
	for _, c := range []struct {
		name     string
		selector map[string]string
		pods     map[string]int
		want     string
	}{
		{"empty cluster: first by name", nil, nil, "node-1"},
		{"fewest pods", nil, map[string]int{"node-1": 2, "node-2": 1, "node-3": 1}, "node-2"},
		{"nodeSelector narrows", map[string]string{"zone": "a"}, map[string]int{"node-1": 1}, "node-3"},
		{"nodeSelector beats load", map[string]string{"zone": "b"}, map[string]int{"node-2": 9}, "node-2"},
		{"nothing fits", map[string]string{"zone": "c"}, nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod := &v1.Pod{Spec: v1.PodSpec{NodeSelector: c.selector}}
			if got := Choose(pod, nodes, c.pods); got != c.want {
				t.Errorf("Choose = %q, want %q", got, c.want)
			}
		})
	}
}
