package flows

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/internal/observeapi"
)

func flowN(i int) observeapi.Flow {
	v := observeapi.VerdictForwarded
	if i%2 == 1 {
		v = observeapi.VerdictDropped
	}
	return observeapi.Flow{Time: time.Unix(int64(i), 0), Verdict: v, Src: observeapi.Addr{Pod: fmt.Sprintf("ns/p%d", i)}}
}

func times(flows []observeapi.Flow) []int64 {
	var out []int64
	for _, fl := range flows {
		out = append(out, fl.Time.Unix())
	}
	return out
}

func TestStoreKeepsTheLast(t *testing.T) {
	s := NewStore(4, nil)
	if got, _ := s.Flows(context.Background(), observeapi.FlowFilter{}); len(got) != 0 || s.Len() != 0 {
		t.Fatalf("empty store gave %v", got)
	}
	for i := range 3 {
		s.Add(flowN(i))
	}
	got, _ := s.Flows(context.Background(), observeapi.FlowFilter{})
	if fmt.Sprint(times(got)) != "[0 1 2]" || s.Len() != 3 {
		t.Errorf("before wrapping: %v (len %d)", times(got), s.Len())
	}
	for i := 3; i < 10; i++ {
		s.Add(flowN(i))
	}
	got, _ = s.Flows(context.Background(), observeapi.FlowFilter{})
	if fmt.Sprint(times(got)) != "[6 7 8 9]" || s.Len() != 4 || s.Seen() != 10 {
		t.Errorf("after wrapping: %v (len %d, seen %d), want the last 4 oldest first", times(got), s.Len(), s.Seen())
	}
	got, _ = s.Flows(context.Background(), observeapi.FlowFilter{Verdict: observeapi.VerdictDropped})
	if fmt.Sprint(times(got)) != "[7 9]" {
		t.Errorf("dropped: %v", times(got))
	}
	got, _ = s.Flows(context.Background(), observeapi.FlowFilter{Last: 3, Verdict: observeapi.VerdictForwarded})
	if fmt.Sprint(times(got)) != "[6 8]" {
		t.Errorf("last 3 forwarded: %v", times(got))
	}
	got, _ = s.Flows(context.Background(), observeapi.FlowFilter{Last: 1})
	if fmt.Sprint(times(got)) != "[9]" {
		t.Errorf("last 1: %v", times(got))
	}
}

func TestStoreFollow(t *testing.T) {
	s := NewStore(8, nil)
	s.Add(flowN(0))
	s.Add(flowN(1))
	ctx, cancel := context.WithCancel(context.Background())
	buffered, follow := s.Flows(ctx, observeapi.FlowFilter{Follow: true, Pod: "ns/p3"})
	if len(buffered) != 0 {
		t.Errorf("buffered %v, want none matching", times(buffered))
	}
	for i := 2; i < 5; i++ {
		s.Add(flowN(i))
	}
	select {
	case fl := <-follow:
		if fl.Time.Unix() != 3 {
			t.Errorf("followed flow %d, want 3 (the only match)", fl.Time.Unix())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no flow followed")
	}
	cancel()
	closed := make(chan struct{})
	go func() {
		for range follow { // closed once ctx ends
		}
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("follow channel not closed after the context ended")
	}
	s.Add(flowN(3)) // no follower left to offer it to
}

// A follower that reads nothing does not block the store, nor keep
// another follower from its flows once it reads; what each misses is
// counted.
func TestSlowFollowerDoesNotBlock(t *testing.T) {
	var mu sync.Mutex
	dropped := 0
	s := NewStore(16, func() { mu.Lock(); dropped++; mu.Unlock() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, slow := s.Flows(ctx, observeapi.FlowFilter{Follow: true})
	_, other := s.Flows(ctx, observeapi.FlowFilter{Follow: true})
	n := FollowBuffer + 100
	done := make(chan struct{})
	go func() {
		for i := range n {
			s.Add(flowN(i))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Add blocked on followers that read nothing")
	}
	mu.Lock()
	if dropped != 200 || len(slow) != FollowBuffer || len(other) != FollowBuffer {
		t.Errorf("%d dropped, %d and %d queued; want 200 and %d each", dropped, len(slow), len(other), FollowBuffer)
	}
	mu.Unlock()
	// The other follower catches up and gets the next flow.
	for range FollowBuffer {
		<-other
	}
	s.Add(flowN(n))
	select {
	case fl := <-other:
		if fl.Time.Unix() != int64(n) {
			t.Errorf("got flow %d, want %d", fl.Time.Unix(), n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a follower that caught up got no new flow")
	}
}

type fakeReader struct {
	events chan Event
	closed chan struct{}
	once   sync.Once
}

func (r *fakeReader) Read() (Event, error) {
	select {
	case ev, ok := <-r.events:
		if !ok {
			return Event{}, errors.New("bad record")
		}
		return ev, nil
	case <-r.closed:
		return Event{}, fmt.Errorf("read: %w", os.ErrClosed)
	}
}

func (r *fakeReader) Close() error {
	r.once.Do(func() { close(r.closed) })
	return nil
}

func TestRun(t *testing.T) {
	f := newFixture(t)
	m := metrics.New().RegisterFlows()
	s := NewStore(8, nil)
	r := &fakeReader{events: make(chan Event), closed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- Run(ctx, nil, r, f.namer, s, m) }()
	r.events <- Event{Time: f.clock.mono, Type: EventDrop, Proto: 6, Src: ap("10.0.3.10:1"), Dst: ap("10.0.2.11:5432")}
	r.events <- Event{Time: f.clock.mono, Type: EventTrace, Reason: TraceService, Proto: 17, Src: ap("10.0.1.10:1"), Dst: ap("10.96.0.10:53")}
	r.events <- Event{Time: f.clock.mono, Type: EventTrace, Reason: TraceService, Proto: 17, Src: ap("10.0.1.10:1"), Dst: ap("10.96.0.10:53")}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	got, _ := s.Flows(context.Background(), observeapi.FlowFilter{})
	if len(got) != 3 || got[0].Src.Pod != "gamma/web" || got[0].Verdict != observeapi.VerdictDropped {
		t.Errorf("stored %+v", got)
	}
	for _, c := range []struct {
		labels []string
		want   float64
	}{{[]string{"dropped", "drop", "tcp"}, 1}, {[]string{"translated", "trace", "udp"}, 2}} {
		if got := value(t, m.Processed.WithLabelValues(c.labels...)); got != c.want {
			t.Errorf("flows processed %v: %v, want %v", c.labels, got, c.want)
		}
	}
	if value(t, m.Buffered) != 3 || value(t, m.Capacity) != 8 {
		t.Errorf("buffer gauges %v/%v, want 3/8", value(t, m.Buffered), value(t, m.Capacity))
	}
}

func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue() + m.GetGauge().GetValue()
}
