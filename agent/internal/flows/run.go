package flows

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"time"

	"github.com/sluice-net/sluice/agent/internal/metrics"
	"github.com/sluice-net/sluice/internal/observeapi"
)

// Reader is the datapath's event ring (bpf.EventReader, through FromBPF).
type Reader interface {
	// Read blocks for the next event; after Close it returns an error
	// wrapping os.ErrClosed.
	Read() (Event, error)
	Close() error
}

// Run reads events from r until ctx ends, names them with n and adds them
// to s, counting them in m. It closes r. log nil logs nothing.
func Run(ctx context.Context, log *slog.Logger, r Reader, n *Namer, s *Store, m *metrics.Flows) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m.Capacity.Set(float64(s.Cap()))
	stop := context.AfterFunc(ctx, func() { _ = r.Close() })
	defer stop()
	defer r.Close()
	var lastErr time.Time
	for {
		ev, err := r.Read()
		if err != nil {
			if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			m.Errors.Inc()
			if time.Since(lastErr) > time.Minute {
				log.Warn("flow events: a record could not be read", "err", err)
				lastErr = time.Now()
			}
			continue
		}
		fl := n.Name(ev)
		typ := "trace"
		if fl.Verdict == observeapi.VerdictDropped {
			typ = "drop"
		}
		m.Processed.WithLabelValues(fl.Verdict, typ, fl.Proto).Inc()
		s.Add(fl)
		m.Buffered.Set(float64(s.Len()))
	}
}
