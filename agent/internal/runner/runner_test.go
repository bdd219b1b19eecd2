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
	// pending is how many requests were waiting when fn last ran.
	pending atomic.Int32
	r       *Runner
}

func start(t *testing.T) *harness {
	h := &harness{clock: clocktesting.NewFakeClock(time.Unix(1000, 0))}
	h.r = New(func() error {
		h.pending.Store(int32(len(h.r.requests)))
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

// waitTimers waits (in real time) until the loop has armed n timers on the
// fake clock: stepping the clock before it has would fire nothing.
func (h *harness) waitTimers(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.clock.Waiters() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d timers armed, want %d", h.clock.Waiters(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFirstRequestRunsAtOnce(t *testing.T) {
	h := start(t)
	h.r.Run()
	h.waitRuns(t, 1)
}

func TestBurstCoalescesAndKeepsMinInterval(t *testing.T) {
	h := start(t)
	h.r.Run()
	h.waitRuns(t, 1)
	h.r.Run()
	// The loop has taken that request and waits for the minimum gap (a
	// second timer beside the periodic one); the burst arrives meanwhile.
	h.waitTimers(t, 2)
	for range 1000 {
		h.r.Run()
	}
	if got := h.runs.Load(); got != 1 {
		t.Fatalf("ran %d times before the minimum interval passed, want 1", got)
	}
	h.clock.Step(time.Second)
	h.waitRuns(t, 2)
	if n := h.pending.Load(); n != 0 {
		t.Errorf("the second sync left %d requests of the burst pending: they would cost a third", n)
	}
}

func TestPeriodicSync(t *testing.T) {
	h := start(t)
	h.waitTimers(t, 1)
	h.clock.Step(time.Minute)
	h.waitRuns(t, 1)
}

func TestRetryAfterFailure(t *testing.T) {
	h := start(t)
	h.fail.Store(true)
	h.r.Run()
	h.waitRuns(t, 1)
	h.fail.Store(false)
	// The periodic timer and the retry.
	h.waitTimers(t, 2)
	h.clock.Step(5 * time.Second)
	h.waitRuns(t, 2)
}
