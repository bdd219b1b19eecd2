package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-net/sluice/internal/observeapi"
)

// followWait is how long a followed flow waits for the other agents'
// streams before it is printed (a quiet agent holds nothing back longer).
const followWait = time.Second

func observeCmd(g *globals) *cobra.Command {
	var (
		f     observeapi.FlowFilter
		since string
	)
	c := &cobra.Command{
		Use:   "observe",
		Short: "The flows the datapath saw: drops, and new flows translated to a backend or allowed by policy",
		Long: `observe prints the flows the agents keep in memory (oldest first), then, with
--follow, new ones as they come. One line per flow: time, (node,) source,
destination (a pod, an address, or "Service NAMESPACE/NAME:PORT -> backend"),
protocol and destination port, verdict, drop reason or allowed direction,
and the policies: for a drop, those isolating the pod; for an allowed flow,
the rules that allowed it. From several agents, flows are merged by time.`,
		Example: `  sluice observe --verdict dropped
  sluice observe --pod demo/web --since 5m
  sluice observe -f -n demo -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				f.Since = t
			}
			switch f.Verdict {
			case "", observeapi.VerdictDropped, observeapi.VerdictForwarded, observeapi.VerdictTranslated:
			default:
				return fmt.Errorf("--verdict %q: want %s, %s or %s", f.Verdict,
					observeapi.VerdictDropped, observeapi.VerdictForwarded, observeapi.VerdictTranslated)
			}
			for _, p := range []struct{ flag, v string }{{"--pod", f.Pod}, {"--service", f.Service}} {
				if p.v != "" && strings.Count(p.v, "/") != 1 {
					return fmt.Errorf("%s %q: want NAMESPACE/NAME", p.flag, p.v)
				}
			}
			if f.Last < 0 {
				return fmt.Errorf("--last %d: want 0 (all) or more", f.Last)
			}
			return runObserve(cmd.Context(), g, f)
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.Pod, "pod", "", "flows either side of which is this pod (NAMESPACE/NAME)")
	fl.StringVarP(&f.Namespace, "namespace", "n", "", "flows either side of which is in this namespace")
	fl.StringVar(&f.Service, "service", "", "flows translated for, or dropped at, this Service (NAMESPACE/NAME)")
	fl.StringVar(&f.Verdict, "verdict", "", "dropped, forwarded (a new flow policy allowed) or translated (a new service flow)")
	fl.BoolVarP(&f.Follow, "follow", "f", false, "keep printing new flows as they come")
	fl.StringVar(&since, "since", "", "only flows since a duration ago (5m) or a time (RFC 3339)")
	fl.IntVar(&f.Last, "last", 0, "only the newest N buffered flows (each agent's with --follow); 0: all")
	return c
}

// parseSince reads --since: a duration before now, or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since %q: want a duration back (5m) or an RFC 3339 time", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: want a duration back (5m, 1h30m) or an RFC 3339 time (2026-01-02T15:04:05Z)", s)
	}
	return t, nil
}

func runObserve(ctx context.Context, g *globals, f observeapi.FlowFilter) error {
	agents, remote, err := g.agents(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if !f.Follow {
		var tcancel context.CancelFunc
		ctx, tcancel = context.WithTimeout(ctx, g.timeout)
		defer tcancel()
	}
	events := make(chan mergeEvent, 256)
	var (
		mu     sync.Mutex
		failed []error
	)
	for i, a := range agents {
		go func() {
			err := readStream(ctx, a, i, f, events)
			if err != nil && ctx.Err() == nil {
				if len(agents) > 1 {
					// The others keep going: say it now.
					fmt.Fprintln(g.stderr, "sluice:", err)
				}
				mu.Lock()
				failed = append(failed, err)
				mu.Unlock()
			}
			select {
			case events <- mergeEvent{src: i, end: true}:
			case <-ctx.Done():
			}
		}()
	}
	p := &flowPrinter{w: g.stdout, remote: remote, json: g.output == "json"}
	wait := time.Duration(-1) // without --follow the streams end: an exact merge
	if f.Follow {
		wait = followWait
	}
	var merr error
	if !f.Follow && (len(agents) > 1 || !p.json) {
		// A known set: merged, trimmed to --last overall, aligned from the
		// first line.
		var flows []observeapi.Flow
		merr = mergeFlows(ctx, events, len(agents), wait, func(fl observeapi.Flow) error {
			flows = append(flows, fl)
			return nil
		})
		if f.Last > 0 && len(flows) > f.Last {
			flows = flows[len(flows)-f.Last:]
		}
		if !p.json {
			p.fit(flowHeader(remote))
			for _, fl := range flows {
				p.fit(flowCells(fl, remote))
			}
		}
		for _, fl := range flows {
			if err := p.print(fl); err != nil {
				return err
			}
		}
	} else {
		if !p.json {
			// Flows come one by one: start the columns at typical widths so
			// the header mostly lines up with them.
			p.fit(flowHeader(remote))
			p.fit(followWidths(remote))
		}
		merr = mergeFlows(ctx, events, len(agents), wait, p.print)
	}
	cancel()
	mu.Lock()
	errs := failed
	mu.Unlock()
	switch {
	case errors.Is(merr, context.DeadlineExceeded):
		return fmt.Errorf("the flows did not all come within --timeout %v", g.timeout)
	case merr != nil && !errors.Is(merr, context.Canceled):
		return merr
	case len(errs) == 1 && len(agents) == 1:
		return errs[0]
	case len(errs) == len(agents):
		return errors.New("no agent answered")
	case len(errs) > 0:
		return errPartial
	}
	return nil
}

// followWidths are cells of typical widths for a followed stream.
func followWidths(remote bool) []string {
	w := []string{strings.Repeat(" ", len(flowTimeLayout))}
	if remote {
		w = append(w, strings.Repeat(" ", 8))
	}
	for _, n := range []int{24, 2, 40, 9, 10, 15} {
		w = append(w, strings.Repeat(" ", n))
	}
	return w
}

// readStream sends agent a's flows to events: opened, then each flow.
func readStream(ctx context.Context, a *agent, src int, f observeapi.FlowFilter, events chan<- mergeEvent) error {
	body, err := a.stream(ctx, observeapi.PathFlows, f.Query())
	if err != nil {
		return err
	}
	defer body.Close()
	send := func(ev mergeEvent) error {
		select {
		case events <- ev:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := send(mergeEvent{src: src, open: true}); err != nil {
		return nil
	}
	err = observeapi.DecodeFlows(body, func(fl observeapi.Flow) error {
		if fl.Node == "" {
			fl.Node = a.Node
		}
		return send(mergeEvent{src: src, flow: fl, at: time.Now()})
	})
	switch {
	case ctx.Err() != nil:
	case err != nil:
		return fmt.Errorf("%s: the flow stream broke (did the agent restart?): %w", a.name, err)
	case f.Follow:
		return fmt.Errorf("%s: the agent ended the flow stream (did it restart?)", a.name)
	}
	return nil
}

// mergeEvent is one source's news: its stream opened, a flow (received at
// at), or its end.
type mergeEvent struct {
	src  int
	open bool
	end  bool
	flow observeapi.Flow
	at   time.Time
}

// mergeFlows merges n sources' flows, each in time order, into one time
// order, calling emit for each. A source's head flow is emitted when it is
// the oldest pending and every other source either has a flow pending or
// has ended (the merge is then exact), or, when wait >= 0, once every
// source's stream is open and it has waited wait since it came and since
// the last stream opened: a quiet source holds the others back no longer
// than that. With wait < 0 every
// source is waited for until it ends. Returns when every source has ended
// (nil), emit fails, or ctx ends.
func mergeFlows(ctx context.Context, events <-chan mergeEvent, n int, wait time.Duration, emit func(observeapi.Flow) error) error {
	type pending struct {
		fl observeapi.Flow
		at time.Time
	}
	queues := make([][]pending, n)
	opened := make([]bool, n)
	ended := make([]bool, n)
	open, live := 0, n
	var allOpen time.Time // when the last stream opened
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		// Emit what may go now.
		for {
			oldest := -1
			waiting := false // some live source has nothing pending
			for i := range n {
				if len(queues[i]) == 0 {
					if !ended[i] {
						waiting = true
					}
					continue
				}
				if oldest < 0 || queues[i][0].fl.Time.Before(queues[oldest][0].fl.Time) {
					oldest = i
				}
			}
			if oldest < 0 {
				break
			}
			head := queues[oldest][0]
			// It waits from when it came, or from when the last stream
			// opened: that stream's buffered flows come just after.
			since := head.at
			if allOpen.After(since) {
				since = allOpen
			}
			if waiting && (wait < 0 || open < live || time.Since(since) < wait) {
				if wait >= 0 && open == live {
					d := wait - time.Since(since)
					if timer == nil {
						timer = time.NewTimer(d)
					} else {
						timer.Reset(d)
					}
				}
				break
			}
			queues[oldest] = queues[oldest][1:]
			if err := emit(head.fl); err != nil {
				return err
			}
		}
		if live == 0 {
			return nil
		}
		var tick <-chan time.Time
		if timer != nil {
			tick = timer.C
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick:
		case ev := <-events:
			switch {
			case ev.open:
				if !opened[ev.src] {
					opened[ev.src] = true
					open++
					allOpen = time.Now()
				}
			case ev.end:
				if !ended[ev.src] {
					ended[ev.src] = true
					live--
					if opened[ev.src] {
						open--
					}
				}
			default:
				queues[ev.src] = append(queues[ev.src], pending{fl: ev.flow, at: ev.at})
			}
		}
	}
}
