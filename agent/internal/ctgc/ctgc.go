// Package ctgc collects the datapath's conntrack garbage: expired entries
// are deleted on a schedule that comes sooner as the maps fill, before
// the LRU has to evict live flows to make room.
package ctgc

import (
	"context"
	"log/slog"
	"time"

	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/bpf"
)

const (
	// Floor is the shortest time between passes: under it a pass
	// over a large map would take a whole CPU.
	Floor = time.Second
	// At or below fillLow the configured interval holds; from there
	// it shrinks in step with the fill, to the floor at fillHigh.
	fillLow  = 0.25
	fillHigh = 0.75
	// A pass's deletions count as churn only when they freed at least
	// this share of the map's capacity: a small map turning over is no
	// reason to collect more often.
	churnMin = 0.01
)

// NextInterval is the time until the next conntrack garbage
// collection, given the configured interval (the longest) and the last
// pass's stats (none: the configured interval). It shrinks as the fuller
// map fills past a quarter, to Floor at three quarters (or the
// configured interval, if that is shorter), and to as little as half when
// a pass deleted a large share of a map's entries (flows come and go
// faster than the interval: the next pass would find as many).
func NextInterval(configured time.Duration, last []bpf.CTStats) time.Duration {
	scale := 1.0
	for _, s := range last {
		if s.Capacity <= 0 {
			continue
		}
		// Fill: 1 at fillLow, 0 at fillHigh.
		f := 1 - (s.Fill()-fillLow)/(fillHigh-fillLow)
		scale = min(scale, f)
		// Churn: the share of the entries the pass found that it
		// deleted; all of them halves the interval.
		if before := s.Deleted + s.Live; before > 0 && float64(s.Deleted) >= churnMin*float64(s.Capacity) {
			scale = min(scale, 1-float64(s.Deleted)/float64(before)/2)
		}
	}
	floor := min(Floor, configured)
	next := time.Duration(float64(configured) * max(scale, 0))
	return max(min(next, configured), floor)
}

// Run deletes expired conntrack entries until ctx ends, at most every
// apart (conntrackGCInterval) and sooner as the maps fill (NextInterval).
func Run(ctx context.Context, log *slog.Logger, dp *bpf.Datapath, m *metrics.Metrics, every time.Duration) {
	next := every
	m.SetConntrackGCInterval(next)
	t := time.NewTimer(next)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		st, err := dp.GCConntrack()
		took := time.Since(start)
		// After a failure, the maps that were walked still say how full
		// they are.
		prev := next
		next = NextInterval(every, st)
		m.ObserveConntrackGC(st, took, err, next)
		if err != nil {
			log.Error("conntrack garbage collection failed", "err", err)
		}
		for _, s := range st {
			if s.Deleted > 0 {
				log.Debug("conntrack garbage collected", "map", s.Map, "deleted", s.Deleted, "live", s.Live, "fill", s.Fill())
			}
		}
		// Info only when collection speeds up from, or returns to, the
		// configured interval: in between it moves with every pass.
		switch {
		case next == prev:
		case prev == every || next == every:
			log.Info("conntrack garbage collection interval changed", "interval", next, "was", prev, "stats", st)
		default:
			log.Debug("conntrack garbage collection interval changed", "interval", next, "was", prev)
		}
		t.Reset(next)
	}
}
