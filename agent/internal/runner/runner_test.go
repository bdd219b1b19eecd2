package runner

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

type harness struct {
	clock *clocktesting.FakeClock
	runs  atomic.Int32
	fail  atomic.Bool
	r     *Runner
}

func start(t *testing.T) *harness {
	h := &harness{clock: clocktesting.NewFakeClock(time.Unix(1000, 0))}
	h.r = New(func() error {
		h.runs.Add(1)
		if h.fail.Load() {
			return errors.New("boom")
		}
		return nil
	}, time.Second, time.Minute, 5*time.Second, h.clock)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.r.Loop(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

// waitRuns waits (in real time) until fn has run n times.
func (h *harness) waitRuns(t *testing.T, n int32) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.runs.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("fn ran %d times, want %d", h.runs.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// settle gives the loop time to (not) act on what happened.
func settle() { time.Sleep(20 * time.Millisecond) }

func TestFirstRequestRunsAtOnce(t *testing.T) {
	h := start(t)
	h.r.Run()
	h.waitRuns(t, 1)
}

func TestBurstCoalescesAndKeepsMinInterval(t *testing.T) {
	h := start(t)
	h.r.Run()
	h.waitRuns(t, 1)
	for range 1000 {
		h.r.Run()
	}
	settle()
	if got := h.runs.Load(); got != 1 {
		t.Fatalf("ran %d times before the minimum interval passed, want 1", got)
	}
	h.clock.Step(time.Second)
	h.waitRuns(t, 2)
	settle()
	if got := h.runs.Load(); got != 2 {
		t.Errorf("a burst of 1000 requests cost %d syncs, want 2", got)
	}
}

func TestPeriodicSync(t *testing.T) {
	h := start(t)
	settle()
	h.clock.Step(time.Minute)
	h.waitRuns(t, 1)
}

func TestRetryAfterFailure(t *testing.T) {
	h := start(t)
	h.fail.Store(true)
	h.r.Run()
	h.waitRuns(t, 1)
	h.fail.Store(false)
	settle()
	h.clock.Step(5 * time.Second)
	h.waitRuns(t, 2)
}
