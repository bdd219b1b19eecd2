// Package proxyhealth serves kube-proxy's health endpoints, /healthz and
// /livez (kube-proxy's port is 10256), with kube-proxy's meaning and body:
// cloud load balancers probe /healthz on every node to route
// externalTrafficPolicy Cluster traffic, and tooling written for
// kube-proxy reads the JSON.
//
// The proxy is healthy unless a change it was told of (a Service,
// EndpointSlice or Node event) has waited longer than the timeout for a
// sync that programs it. /healthz is also unhealthy while the node is
// being deleted or is tainted ToBeDeletedByClusterAutoscaler, so load
// balancers drain it first; /livez ignores the node.
package proxyhealth

import (
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
)

// DefaultTimeout is how long a change may wait for its sync: kube-proxy's
// (twice its default sync period of 30 s).
const DefaultTimeout = time.Minute

// ToBeDeletedTaint is the cluster autoscaler's taint on a node it is about
// to remove.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// Tracker follows the service proxy's syncs and the node's state, and
// answers the health endpoints from them.
type Tracker struct {
	clock   clock.PassiveClock
	timeout time.Duration
	healthz *prometheus.CounterVec // by code
	livez   *prometheus.CounterVec

	mu           sync.Mutex
	lastUpdated  time.Time
	oldestQueued time.Time // zero: nothing waits for a sync
	nodeEligible bool
}

// New returns a Tracker counting its answers in healthz and livez (label
// "code"). The first sync counts as queued from now: a proxy that never
// completes one turns unhealthy after timeout.
func New(c clock.PassiveClock, timeout time.Duration, healthz, livez *prometheus.CounterVec) *Tracker {
	return &Tracker{clock: c, timeout: timeout, healthz: healthz, livez: livez, oldestQueued: c.Now(), nodeEligible: true}
}

// Queued records that a change waits for a sync; the oldest waiting one
// counts.
func (t *Tracker) Queued() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.oldestQueued.IsZero() {
		t.oldestQueued = t.clock.Now()
	}
}

// Updated records a sync that programmed every change queued before it.
func (t *Tracker) Updated() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lastUpdated, t.oldestQueued = t.clock.Now(), time.Time{}
}

// SyncNode follows this node's state; nil means it was deleted.
func (t *Tracker) SyncNode(n *v1.Node) {
	eligible := n != nil && n.DeletionTimestamp == nil &&
		!slices.ContainsFunc(n.Spec.Taints, func(taint v1.Taint) bool { return taint.Key == ToBeDeletedTaint })
	t.mu.Lock()
	t.nodeEligible = eligible
	t.mu.Unlock()
}

// state reads the proxy's health, the time to report as its last update,
// the current time and the node's eligibility.
func (t *Tracker) state() (healthy bool, lastUpdated, now time.Time, nodeEligible bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now = t.clock.Now()
	healthy = t.oldestQueued.IsZero() || now.Sub(t.oldestQueued) < t.timeout
	lastUpdated = t.lastUpdated
	if healthy {
		// As kube-proxy: a healthy proxy reports itself updated now.
		lastUpdated = now
	}
	return healthy, lastUpdated, now, t.nodeEligible
}

// Handler serves /healthz and /livez.
func (t *Tracker) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		healthy, last, now, eligible := t.state()
		body := fmt.Sprintf(`{"lastUpdated": %q,"currentTime": %q, "nodeEligible": %v}`, wall(last), wall(now), eligible)
		t.answer(w, t.healthz, healthy && eligible, body)
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		healthy, last, now, _ := t.state()
		t.answer(w, t.livez, healthy, fmt.Sprintf(`{"lastUpdated": %q,"currentTime": %q}`, wall(last), wall(now)))
	})
	return mux
}

func (t *Tracker) answer(w http.ResponseWriter, count *prometheus.CounterVec, healthy bool, body string) {
	code := http.StatusOK
	if !healthy {
		code = http.StatusServiceUnavailable
	}
	count.WithLabelValues(fmt.Sprint(code)).Inc()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprint(w, body)
}

// wall is t as kube-proxy prints it, without the process's monotonic
// clock reading.
func wall(t time.Time) string { return t.Round(0).String() }
