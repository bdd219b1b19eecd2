// Package runner is a bounded-frequency runner in the manner of
// kube-proxy's: Run requests a sync and returns at once; requests that
// arrive while one is pending coalesce; syncs are at least MinInterval
// apart (so a burst of 10,000 changes costs a few syncs) and at most
// MaxInterval apart (a periodic full sync); a failed sync is retried after
// RetryInterval.
package runner

import (
	"context"
	"time"

	"k8s.io/utils/clock"
)

// Runner calls fn under the frequency bounds.
type Runner struct {
	fn                                      func() error
	minInterval, maxInterval, retryInterval time.Duration
	clock                                   clock.Clock
	requests                                chan struct{}
}

// New makes a runner; clk is clock.RealClock{} outside tests.
func New(fn func() error, minInterval, maxInterval, retryInterval time.Duration, clk clock.Clock) *Runner {
	return &Runner{fn: fn, minInterval: minInterval, maxInterval: maxInterval, retryInterval: retryInterval,
		clock: clk, requests: make(chan struct{}, 1)}
}

// Run requests a sync. It never blocks.
func (r *Runner) Run() {
	select {
	case r.requests <- struct{}{}:
	default: // one is already pending: it will see this change too
	}
}

// Loop runs syncs until ctx ends.
func (r *Runner) Loop(ctx context.Context) {
	var last time.Time
	periodic := r.clock.NewTimer(r.maxInterval)
	defer periodic.Stop()
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.requests:
		case <-periodic.C():
		case <-retry:
		}
		// Keep the minimum gap; requests arriving meanwhile coalesce into
		// this sync.
		if wait := r.minInterval - r.clock.Since(last); !last.IsZero() && wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-r.clock.After(wait):
			}
		}
		select {
		case <-r.requests: // folded into this sync
		default:
		}
		last = r.clock.Now()
		retry = nil
		if err := r.fn(); err != nil {
			retry = r.clock.After(r.retryInterval)
		}
		if !periodic.Stop() {
			select {
			case <-periodic.C():
			default:
			}
		}
		periodic.Reset(r.maxInterval)
	}
}
