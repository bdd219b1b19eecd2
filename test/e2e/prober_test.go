//go:build e2e

package e2e_test

import (
	"sync"
	"time"
)

// probeGap is the pause between two connects; each connect also takes a
// driver round trip.
const probeGap = 200 * time.Millisecond

// prober opens a new TCP connection from a client pod to a target again
// and again, and counts the outcomes per phase of the test.
type prober struct {
	f              *testNS
	client, target string
	stop, done     chan struct{}
	halt           func()

	mu     sync.Mutex
	phases []*probePhase // the last one is current
}

type probePhase struct {
	name     string
	attempts int
	failures []probeFailure
}

type probeFailure struct {
	at  time.Time
	err error
}

// startProber starts connecting, counting into phase until enter names the
// next one; the probing stops when the test ends at the latest.
func (f *testNS) startProber(client, target, phase string) *prober {
	p := &prober{f: f, client: client, target: target, stop: make(chan struct{}), done: make(chan struct{})}
	p.halt = sync.OnceFunc(func() {
		close(p.stop)
		<-p.done
	})
	p.enter(phase)
	go p.run()
	f.t.Cleanup(p.halt)
	return p
}

func (p *prober) run() {
	defer close(p.done)
	for {
		p.mu.Lock()
		phase := p.phases[len(p.phases)-1]
		p.mu.Unlock()
		start := time.Now()
		_, err := p.f.exec(p.client, "/agnhost", "connect", p.target, "--timeout=2s", "--protocol=tcp")
		p.mu.Lock()
		phase.attempts++
		if err != nil {
			phase.failures = append(phase.failures, probeFailure{at: start, err: err})
		}
		p.mu.Unlock()
		select {
		case <-p.stop:
			return
		case <-time.After(probeGap):
		}
	}
}

// enter starts a new phase; attempts that start from now on count in it.
func (p *prober) enter(phase string) {
	p.f.t.Logf("%s phase %q", time.Now().Format(time.StampMilli), phase)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.phases = append(p.phases, &probePhase{name: phase})
}

// finish stops probing, logs every phase with its failures, and fails the
// test if any connect failed or a phase saw none at all.
func (p *prober) finish() {
	p.halt()
	t := p.f.t
	failed := 0
	for _, ph := range p.phases {
		t.Logf("phase %q: %d connects to %s from %s, %d failed", ph.name, ph.attempts, p.target, p.client, len(ph.failures))
		for _, fl := range ph.failures {
			t.Logf("  %s: %v", fl.at.Format(time.StampMilli), fl.err)
		}
		if ph.attempts == 0 {
			t.Errorf("phase %q: no connect attempted", ph.name)
		}
		failed += len(ph.failures)
	}
	if failed > 0 {
		t.Errorf("%d connects to %s failed, want none", failed, p.target)
	}
}
