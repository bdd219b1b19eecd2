package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// MaglevSize is the slot count of this datapath's Maglev tables.
func (d *Datapath) MaglevSize() (uint32, error) {
	if d.maglevSpec == nil {
		return 0, errors.New("datapath was opened read-only; only the loader knows the Maglev table size")
	}
	return d.maglevSpec.MaxEntries, nil
}

// SetMaglevTables installs Maglev tables (one backend ID per slot) for
// many services at once. Each table is built in a fresh inner map and
// swapped in by one batch update of the outer map, so packets never see a
// half-written table. Batching matters: the kernel waits for an RCU grace
// period after every map-in-map update call, milliseconds each.
func (d *Datapath) SetMaglevTables(tables map[uint32][]uint32) error {
	size, err := d.MaglevSize()
	if err != nil {
		return err
	}
	keys := make([]uint32, size)
	for i := range keys {
		keys[i] = uint32(i)
	}
	ids := make([]uint32, 0, len(tables))
	fds := make([]uint32, 0, len(tables))
	inners := make([]*ebpf.Map, 0, len(tables))
	defer func() {
		for _, m := range inners {
			m.Close()
		}
	}()
	for id, table := range tables {
		if uint32(len(table)) != size {
			return fmt.Errorf("maglev table for service %d: has %d slots, want %d", id, len(table), size)
		}
		inner, err := ebpf.NewMap(d.maglevSpec)
		if err != nil {
			return fmt.Errorf("create maglev table for service %d: %w", id, err)
		}
		inners = append(inners, inner)
		if _, err := inner.BatchUpdate(keys, table, nil); err != nil {
			return fmt.Errorf("fill maglev table for service %d: %w", id, err)
		}
		ids = append(ids, id)
		fds = append(fds, uint32(inner.FD()))
	}
	if len(ids) == 0 {
		return nil
	}
	if _, err := d.Maglev.BatchUpdate(ids, fds, nil); err != nil {
		return fmt.Errorf("install %d maglev tables: %w", len(ids), err)
	}
	return nil
}

// SetMaglevTable installs one service's table; see SetMaglevTables.
func (d *Datapath) SetMaglevTable(svcID uint32, table []uint32) error {
	return d.SetMaglevTables(map[uint32][]uint32{svcID: table})
}

// DeleteMaglevTable removes a service's table; a missing one is not an error.
func (d *Datapath) DeleteMaglevTable(svcID uint32) error {
	if err := d.Maglev.Delete(svcID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete maglev table for service %d: %w", svcID, err)
	}
	return nil
}

// MonotonicNow is the clock the datapath stamps conntrack and affinity
// entries with (bpf_ktime_get_ns, CLOCK_MONOTONIC), in nanoseconds.
func MonotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// CTStats is the outcome of one conntrack garbage collection pass.
type CTStats struct {
	Deleted int // entries whose lifetime had passed
	Live    int // entries left
}

// GCConntrack deletes every conntrack entry whose lifetime has passed. The
// datapath already ignores such entries; deleting them frees room before
// the LRU has to evict live flows.
func (d *Datapath) GCConntrack() (CTStats, error) {
	now := MonotonicNow()
	var (
		stats   CTStats
		key     CTKey
		val     CTValue
		expired []CTKey
	)
	it := d.Conntrack.Iterate()
	for it.Next(&key, &val) {
		if val.ExpiresNs <= now {
			expired = append(expired, key)
		} else {
			stats.Live++
		}
	}
	if err := it.Err(); err != nil {
		return stats, fmt.Errorf("walk conntrack: %w", err)
	}
	for _, k := range expired {
		if err := d.Conntrack.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return stats, fmt.Errorf("delete expired conntrack entry: %w", err)
		}
		stats.Deleted++
	}
	return stats, nil
}

// DropCounts sums the per-CPU drop counters by reason, omitting zeros.
func (d *Datapath) DropCounts() (map[DropReason]DropCounter, error) {
	out := map[DropReason]DropCounter{}
	var perCPU []DropCounter
	for r := DropReason(0); r < dropReasonMax; r++ {
		if err := d.Drops.Lookup(uint32(r), &perCPU); err != nil {
			return nil, fmt.Errorf("read drop counter %s: %w", r, err)
		}
		var sum DropCounter
		for _, c := range perCPU {
			sum.Packets += c.Packets
			sum.Bytes += c.Bytes
		}
		if sum.Packets > 0 {
			out[r] = sum
		}
	}
	return out, nil
}

// NewDropReader opens the drop event stream; read records with
// ReadDropEvent. Close it to unblock a pending read.
func (d *Datapath) NewDropReader() (*ringbuf.Reader, error) {
	r, err := ringbuf.NewReader(d.Events)
	if err != nil {
		return nil, fmt.Errorf("open drop event ring buffer: %w", err)
	}
	return r, nil
}

// ReadDropEvent blocks for the next drop event.
func ReadDropEvent(r *ringbuf.Reader) (DropEvent, error) {
	var ev DropEvent
	rec, err := r.Read()
	if err != nil {
		return ev, err
	}
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &ev); err != nil {
		return ev, fmt.Errorf("decode drop event of %d bytes: %w", len(rec.RawSample), err)
	}
	return ev, nil
}
