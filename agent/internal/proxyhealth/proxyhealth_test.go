package proxyhealth

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
)

func newTracker() (*Tracker, *clocktesting.FakePassiveClock, *prometheus.CounterVec) {
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC))
	healthz := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "h"}, []string{"code"})
	livez := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "l"}, []string{"code"})
	return New(clk, DefaultTimeout, healthz, livez), clk, healthz
}

// get asks the handler for path and decodes kube-proxy's JSON body.
func get(t *testing.T, tr *Tracker, path string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	tr.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s Content-Type %q", path, ct)
	}
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("%s body %q: %v", path, rec.Body.String(), err)
	}
	return rec.Code, body
}

// TestHealth: healthy until a queued change outlives the timeout without
// a sync (the first sync after start included), healthy again after one;
// /healthz fails on a node being drained away, /livez does not.
func TestHealth(t *testing.T) {
	tr, clk, healthz := newTracker()
	want := func(t *testing.T, healthzCode, livezCode int, eligible bool) {
		t.Helper()
		code, body := get(t, tr, "/healthz")
		if code != healthzCode || body["nodeEligible"] != eligible {
			t.Errorf("/healthz: %d %v, want %d with nodeEligible %v", code, body, healthzCode, eligible)
		}
		if _, ok := body["lastUpdated"].(string); !ok {
			t.Errorf("/healthz body %v has no lastUpdated", body)
		}
		code, body = get(t, tr, "/livez")
		if _, has := body["nodeEligible"]; code != livezCode || has {
			t.Errorf("/livez: %d %v, want %d without nodeEligible", code, body, livezCode)
		}
	}
	t.Run("starting, within the timeout", func(t *testing.T) { want(t, 200, 200, true) })
	clk.SetTime(clk.Now().Add(DefaultTimeout))
	t.Run("no first sync within the timeout", func(t *testing.T) { want(t, 503, 503, true) })
	tr.Updated()
	t.Run("synced", func(t *testing.T) { want(t, 200, 200, true) })

	tr.Queued()
	clk.SetTime(clk.Now().Add(DefaultTimeout / 2))
	tr.Queued() // a later change does not restart the wait
	t.Run("a change waiting less than the timeout", func(t *testing.T) { want(t, 200, 200, true) })
	clk.SetTime(clk.Now().Add(DefaultTimeout / 2))
	t.Run("a change waiting the timeout", func(t *testing.T) { want(t, 503, 503, true) })
	tr.Updated()
	t.Run("programmed", func(t *testing.T) { want(t, 200, 200, true) })

	tainted := &v1.Node{Spec: v1.NodeSpec{Taints: []v1.Taint{{Key: ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}}}
	tr.SyncNode(tainted)
	t.Run("tainted for removal", func(t *testing.T) { want(t, 503, 200, false) })
	tr.SyncNode(&v1.Node{})
	t.Run("taint gone", func(t *testing.T) { want(t, 200, 200, true) })
	tr.SyncNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &metav1.Time{Time: clk.Now()}}})
	t.Run("being deleted", func(t *testing.T) { want(t, 503, 200, false) })
	tr.SyncNode(nil)
	t.Run("deleted", func(t *testing.T) { want(t, 503, 200, false) })

	if got := testutil.ToFloat64(healthz.WithLabelValues("503")); got != 5 {
		t.Errorf("healthz 503 answers counted: %v, want 5", got)
	}
}

// TestLastUpdated: while healthy the body reports the current time as the
// last update, as kube-proxy does; while unhealthy, the last real sync.
func TestLastUpdated(t *testing.T) {
	tr, clk, _ := newTracker()
	tr.Updated()
	synced := clk.Now()
	clk.SetTime(synced.Add(time.Hour))
	if _, body := get(t, tr, "/healthz"); body["lastUpdated"] != body["currentTime"] {
		t.Errorf("healthy: %v, want lastUpdated = currentTime", body)
	}
	tr.Queued()
	clk.SetTime(clk.Now().Add(2 * DefaultTimeout))
	if _, body := get(t, tr, "/healthz"); body["lastUpdated"] != synced.String() {
		t.Errorf("unhealthy: %v, want lastUpdated %q", body, synced.String())
	}
}
