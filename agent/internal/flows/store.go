package flows

import (
	"context"
	"sync"

	"github.com/sluice-net/sluice/internal/observeapi"
)

// FollowBuffer is how many flows a follower may lag behind before flows
// are dropped for it.
const FollowBuffer = 1024

// Store keeps the last flows in a ring and hands new ones to followers.
// Adding never blocks: a follower that does not keep up loses flows
// (counted by the onDrop callback), not the reader.
type Store struct {
	mu   sync.Mutex
	ring []observeapi.Flow
	next int  // where the next flow goes
	full bool // the ring has wrapped
	seen uint64

	followers map[*follower]struct{}
	onDrop    func() // a flow not sent to a slow follower
}

type follower struct {
	filter  observeapi.FlowFilter
	ch      chan observeapi.Flow
	dropped uint64
}

// NewStore keeps the last size flows (at least 1); onDrop, if not nil, is
// called (under the store's lock: keep it cheap) for every flow a slow
// follower misses.
func NewStore(size int, onDrop func()) *Store {
	return &Store{ring: make([]observeapi.Flow, max(size, 1)), followers: map[*follower]struct{}{}, onDrop: onDrop}
}

// Add stores a flow and offers it to every follower whose filter it
// matches.
func (s *Store) Add(fl observeapi.Flow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ring[s.next] = fl
	s.next++
	if s.next == len(s.ring) {
		s.next, s.full = 0, true
	}
	s.seen++
	for f := range s.followers {
		if !f.filter.Match(fl) {
			continue
		}
		select {
		case f.ch <- fl:
		default:
			f.dropped++
			if s.onDrop != nil {
				s.onDrop()
			}
		}
	}
}

// Len is the number of flows buffered; Cap the most it keeps; Seen the
// number ever added.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.full {
		return len(s.ring)
	}
	return s.next
}

// Cap is the most flows the store keeps.
func (s *Store) Cap() int { return len(s.ring) }

// Seen is the number of flows ever added.
func (s *Store) Seen() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen
}

// Flows returns the buffered flows matching f, oldest first (the newest
// f.Last of them when f.Last > 0), and with f.Follow a channel of the
// matching flows added from then on, with none lost in between; it is
// closed once ctx ends.
func (s *Store) Flows(ctx context.Context, f observeapi.FlowFilter) ([]observeapi.Flow, <-chan observeapi.Flow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []observeapi.Flow
	add := func(flows []observeapi.Flow) {
		for _, fl := range flows {
			if f.Match(fl) {
				out = append(out, fl)
			}
		}
	}
	if s.full {
		add(s.ring[s.next:])
	}
	add(s.ring[:s.next])
	if f.Last > 0 && len(out) > f.Last {
		out = out[len(out)-f.Last:]
	}
	if !f.Follow {
		return out, nil
	}
	fo := &follower{filter: f, ch: make(chan observeapi.Flow, FollowBuffer)}
	s.followers[fo] = struct{}{}
	go func() {
		<-ctx.Done()
		s.mu.Lock()
		delete(s.followers, fo)
		close(fo.ch)
		s.mu.Unlock()
	}()
	return out, fo.ch
}
