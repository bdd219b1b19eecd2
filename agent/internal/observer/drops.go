package observer

import (
	"cmp"
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/observeapi"
)

// dropSampleEvery is how often the drop counters are sampled for the
// last minute's counts.
const dropSampleEvery = 5 * time.Second

// lastMinute is the window of DropCount.LastMinute.
const lastMinute = time.Minute

// dropWindow keeps samples of the drop counters covering the last minute.
type dropWindow struct {
	read func() (map[bpf.DropKey]bpf.DropCounter, error)
	now  func() time.Time

	mu      sync.Mutex
	samples []dropSample // oldest first
}

type dropSample struct {
	at     time.Time
	counts map[bpf.DropKey]bpf.DropCounter
}

func newDropWindow(read func() (map[bpf.DropKey]bpf.DropCounter, error)) *dropWindow {
	return &dropWindow{read: read, now: time.Now}
}

func (w *dropWindow) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		w.sample()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sample records the counters now, dropping samples no longer needed: the
// newest one at least a minute old is kept as the window's base.
func (w *dropWindow) sample() {
	counts, err := w.read()
	if err != nil {
		return
	}
	now := w.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.samples = append(w.samples, dropSample{at: now, counts: counts})
	for len(w.samples) > 1 && now.Sub(w.samples[1].at) >= lastMinute {
		w.samples = w.samples[1:]
	}
}

// base is the sample the last minute is counted from: the newest one at
// least a minute old, else the oldest (the agent watched for less).
func (w *dropWindow) base(now time.Time) map[bpf.DropKey]bpf.DropCounter {
	w.mu.Lock()
	defer w.mu.Unlock()
	var base map[bpf.DropKey]bpf.DropCounter
	for _, s := range w.samples {
		if base != nil && now.Sub(s.at) < lastMinute {
			break
		}
		base = s.counts
	}
	return base
}

// snapshot reads the counters now, with their increase over the last
// minute.
func (w *dropWindow) snapshot(dp *bpf.Datapath) observeapi.Drops {
	out := observeapi.Drops{Since: loadedAt(dp), Drops: []observeapi.DropCount{}}
	counts, err := w.read()
	if err != nil {
		return out
	}
	base := w.base(w.now())
	for k, c := range counts {
		dc := observeapi.DropCount{Reason: k.Reason.String(), Hook: k.Hook.String(), Direction: k.Hook.Direction(),
			Packets: c.Packets, Bytes: c.Bytes, LastMinute: c.Packets}
		if base != nil {
			dc.LastMinute = c.Packets - min(c.Packets, base[k].Packets)
		}
		out.Drops = append(out.Drops, dc)
	}
	slices.SortFunc(out.Drops, func(a, b observeapi.DropCount) int {
		return cmp.Or(cmp.Compare(b.Packets, a.Packets), cmp.Compare(a.Reason, b.Reason), cmp.Compare(a.Hook, b.Hook))
	})
	return out
}

// loadedAt is when the datapath's drop counters were made (their pin's
// time: a restarted agent reuses them): they count from then. Zero when
// not known.
func loadedAt(dp *bpf.Datapath) time.Time {
	if dp == nil {
		return time.Time{}
	}
	pins, _ := filepath.Glob(filepath.Join(dp.PinRoot(), "maps", "sluice_drops_v*"))
	for _, p := range pins {
		if fi, err := os.Stat(p); err == nil {
			return fi.ModTime()
		}
	}
	return time.Time{}
}
