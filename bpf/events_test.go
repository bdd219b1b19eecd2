package bpf

import (
	"testing"
	"time"
)

// eventReader opens the datapath's flow events for the test.
func eventReader(t testing.TB, d *Datapath) *EventReader {
	t.Helper()
	r, err := NewEventReader(d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// nextEvent reads events until one of type typ, failing after a second.
func nextEvent(t testing.TB, r *EventReader, typ uint8) FlowEvent {
	t.Helper()
	r.SetDeadline(time.Now().Add(time.Second))
	for {
		ev, err := r.Read()
		if err != nil {
			t.Fatalf("read a flow event of type %d: %v", typ, err)
		}
		if ev.Type == typ {
			return ev
		}
	}
}
