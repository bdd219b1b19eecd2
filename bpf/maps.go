package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// MaglevSize is the slot count of this datapath's Maglev tables.
func (d *Datapath) MaglevSize() uint32 {
	return d.Maglev.ValueSize() / 4
}

// SetMaglevTables installs Maglev tables (one backend ID per slot) for
// many services in one batch update. Each table replaces the old one
// whole: a packet reads either the old or the new table.
func (d *Datapath) SetMaglevTables(tables map[uint32][]uint32) error {
	size := d.MaglevSize()
	ids := make([]uint32, 0, len(tables))
	rows := make(maglevRows, 0, len(tables))
	for id, table := range tables {
		if uint32(len(table)) != size {
			return fmt.Errorf("maglev table for service %d: has %d slots, want %d", id, len(table), size)
		}
		ids = append(ids, id)
		rows = append(rows, table)
	}
	if len(ids) == 0 {
		return nil
	}
	if _, err := d.Maglev.BatchUpdate(ids, rows, nil); err != nil {
		return fmt.Errorf("install %d maglev tables (map full? MaxServices is %d): %w", len(ids), d.Maglev.MaxEntries(), err)
	}
	return nil
}

// maglevRows are batch values whose size is only known at load time: one
// row (table) per key, marshalled back to back.
type maglevRows [][]uint32

func (r maglevRows) MarshalBinary() ([]byte, error) {
	n := 0
	for _, row := range r {
		n += len(row)
	}
	out := make([]byte, 0, 4*n)
	for _, row := range r {
		if len(row) > 0 {
			// Native byte order is the kernel's: copy the memory as is.
			out = append(out, unsafe.Slice((*byte)(unsafe.Pointer(&row[0])), 4*len(row))...)
		}
	}
	return out, nil
}

// SetMaglevTable installs one service's table; see SetMaglevTables.
func (d *Datapath) SetMaglevTable(svcID uint32, table []uint32) error {
	return d.SetMaglevTables(map[uint32][]uint32{svcID: table})
}

// MaglevTable reads a service's table; ok is false when it has none.
func (d *Datapath) MaglevTable(svcID uint32) (table []uint32, ok bool, err error) {
	table = make([]uint32, d.MaglevSize())
	if err := d.Maglev.Lookup(svcID, &table); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("read maglev table of service %d: %w", svcID, err)
	}
	return table, true, nil
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

// ConntrackMap is the conntrack map holding flows of the L4 protocol proto.
func (d *Datapath) ConntrackMap(proto uint8) *ebpf.Map {
	if proto == ProtoTCP {
		return d.ConntrackTCP
	}
	return d.ConntrackOther
}

// CTStats is the outcome of one conntrack garbage collection pass over
// one conntrack map.
type CTStats struct {
	Map      string // "tcp" or "other"
	Deleted  int    // entries whose lifetime had passed
	Live     int    // entries left
	Capacity int    // the map's max entries
}

// Fill is the share of the map's capacity that live entries take, 0 to 1.
func (s CTStats) Fill() float64 {
	if s.Capacity == 0 {
		return 0
	}
	return float64(s.Live) / float64(s.Capacity)
}

// GCConntrack deletes every conntrack entry whose lifetime has passed, in
// both conntrack maps. The datapath already ignores such entries; deleting
// them frees room before the LRU has to evict live flows.
func (d *Datapath) GCConntrack() ([]CTStats, error) {
	var out []CTStats
	for _, m := range []struct {
		name string
		m    *ebpf.Map
	}{{"tcp", d.ConntrackTCP}, {"other", d.ConntrackOther}} {
		st, err := gcConntrackMap(m.m)
		st.Map = m.name
		out = append(out, st)
		if err != nil {
			return out, fmt.Errorf("conntrack map %s: %w", m.name, err)
		}
	}
	return out, nil
}

func gcConntrackMap(m *ebpf.Map) (CTStats, error) {
	now := MonotonicNow()
	var (
		stats   = CTStats{Capacity: int(m.MaxEntries())}
		key     CTKey
		val     CTValue
		expired []CTKey
	)
	it := m.Iterate()
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
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return stats, fmt.Errorf("delete expired conntrack entry: %w", err)
		}
		stats.Deleted++
	}
	return stats, nil
}

// Counter names one of the datapath's event counters (Counters).
type Counter = datapathCounter

// Datapath event counters; see enum counter in bpf/include/sluice.h.
const (
	CounterCTReplyRestored   = datapathCounterCOUNTER_CT_REPLY_RESTORED
	CounterCTForwardRestored = datapathCounterCOUNTER_CT_FORWARD_RESTORED
	CounterCTReopened        = datapathCounterCOUNTER_CT_REOPENED
	CounterAffinityStale     = datapathCounterCOUNTER_AFFINITY_STALE
	CounterCTInsertFailed    = datapathCounterCOUNTER_CT_INSERT_FAILED
	// CounterEventsSuppressed counts flow events the per-CPU rate limit
	// held back (Config.EventRate, EventBurst).
	CounterEventsSuppressed = datapathCounterCOUNTER_EVENTS_SUPPRESSED
	// CounterEventsLost counts flow events lost because the ring was full
	// (the reader fell behind).
	CounterEventsLost = datapathCounterCOUNTER_EVENTS_LOST
)

// CounterValues sums the per-CPU event counters, by counter.
func (d *Datapath) CounterValues() (map[Counter]uint64, error) {
	out := map[Counter]uint64{}
	var perCPU []uint64
	for _, c := range []Counter{CounterCTReplyRestored, CounterCTForwardRestored, CounterCTReopened,
		CounterAffinityStale, CounterCTInsertFailed, CounterEventsSuppressed, CounterEventsLost} {
		if err := d.Counters.Lookup(uint32(c), &perCPU); err != nil {
			return nil, fmt.Errorf("read datapath counter %d: %w", c, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		out[c] = sum
	}
	return out, nil
}

// RecordEndpoint records a local pod behind the host veth ifindex: each of
// its addresses in the endpoints map, and its slot for from_pod's source
// check. A slot another veth holds is taken over; that veth is then
// checked through the endpoints map, more slowly but as strictly.
func (d *Datapath) RecordEndpoint(ifindex uint32, addrs []netip.Addr, v EndpointValue) error {
	v.Ifindex = ifindex
	slot := EndpointSlot{Ifindex: ifindex}
	for _, a := range addrs {
		if err := d.Endpoints.Put(EndpointKey{Addr: Addr(a)}, v); err != nil {
			return fmt.Errorf("record endpoint %s (map sluice_endpoints_v1 full?): %w", a, err)
		}
		if a.Is4() {
			slot.Addr4 = a.As4()
		} else {
			slot.Addr6 = a.As16()
		}
	}
	if err := d.EndpointSlots.Put(ifindex%endpointSlots, slot); err != nil {
		return fmt.Errorf("record endpoint slot of ifindex %d: %w", ifindex, err)
	}
	return nil
}

// ForgetEndpoint removes what RecordEndpoint wrote; the slot only if it
// is still this veth's. Entries already gone are not an error.
func (d *Datapath) ForgetEndpoint(ifindex uint32, addrs []netip.Addr) error {
	var errs []error
	for _, a := range addrs {
		if err := d.Endpoints.Delete(EndpointKey{Addr: Addr(a)}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete endpoint %s: %w", a, err))
		}
	}
	var slot EndpointSlot
	if ifindex != 0 {
		if err := d.EndpointSlots.Lookup(ifindex%endpointSlots, &slot); err != nil {
			errs = append(errs, fmt.Errorf("read endpoint slot of ifindex %d: %w", ifindex, err))
		} else if slot.Ifindex == ifindex {
			if err := d.EndpointSlots.Put(ifindex%endpointSlots, EndpointSlot{}); err != nil {
				errs = append(errs, fmt.Errorf("clear endpoint slot of ifindex %d: %w", ifindex, err))
			}
		}
	}
	return errors.Join(errs...)
}

// SetNodePodCIDRs writes this node's pod CIDRs (at most one per family;
// a family without one is cleared), which no packet from outside may claim
// as its source.
func (d *Datapath) SetNodePodCIDRs(cidrs []netip.Prefix) error {
	var v4, v6 NodeCIDR
	for _, c := range cidrs {
		k := CIDR(c)
		if c.Addr().Is4() {
			v4 = NodeCIDR{Addr: k.Addr, Prefixlen: k.Prefixlen}
		} else {
			v6 = NodeCIDR{Addr: k.Addr, Prefixlen: k.Prefixlen}
		}
	}
	for i, v := range []NodeCIDR{v4, v6} {
		if err := d.NodeCIDRs.Put(uint32(i), v); err != nil {
			return fmt.Errorf("write the node's pod CIDRs (map sluice_node_cidrs_v1): %w", err)
		}
	}
	return nil
}

// DropKey names one drop counter: a reason at a hook (which says the
// direction: from_pod is a pod's egress, to_pod its ingress).
type DropKey struct {
	Reason DropReason
	Hook   Hook
}

// DropCountsByHook sums the per-CPU drop counters by reason and hook,
// omitting zeros.
func (d *Datapath) DropCountsByHook() (map[DropKey]DropCounter, error) {
	out := map[DropKey]DropCounter{}
	var perCPU []DropCounter
	for h := Hook(0); h < hookMax; h++ {
		for r := DropReason(0); r < dropReasonMax; r++ {
			if err := d.Drops.Lookup(uint32(h)*uint32(dropReasonMax)+uint32(r), &perCPU); err != nil {
				return nil, fmt.Errorf("read drop counter %s at %s: %w", r, h, err)
			}
			var sum DropCounter
			for _, c := range perCPU {
				sum.Packets += c.Packets
				sum.Bytes += c.Bytes
			}
			if sum.Packets > 0 {
				out[DropKey{Reason: r, Hook: h}] = sum
			}
		}
	}
	return out, nil
}

// DropCounts sums the drop counters by reason over every hook.
func (d *Datapath) DropCounts() (map[DropReason]DropCounter, error) {
	byHook, err := d.DropCountsByHook()
	if err != nil {
		return nil, err
	}
	out := map[DropReason]DropCounter{}
	for k, c := range byHook {
		sum := out[k.Reason]
		sum.Packets += c.Packets
		sum.Bytes += c.Bytes
		out[k.Reason] = sum
	}
	return out, nil
}

// EventReader reads the datapath's flow events (Datapath.Events). Read
// is not safe for concurrent use; Close and SetDeadline may be called from
// any goroutine.
//
// The datapath does not wake the reader for each event (an interrupt each):
// Read polls the ring every EventPollInterval and is woken early only when
// many events wait, so an event reaches Read within EventPollInterval.
type EventReader struct {
	r        *ringbuf.Reader
	rec      ringbuf.Record
	deadline atomic.Pointer[time.Time]
}

// EventPollInterval is the longest an event waits in the ring for a
// blocked Read.
const EventPollInterval = 50 * time.Millisecond

// NewEventReader opens the flow event ring of dp. Only one reader should
// read a ring: each event goes to one of them.
func NewEventReader(dp *Datapath) (*EventReader, error) {
	r, err := ringbuf.NewReader(dp.Events)
	if err != nil {
		return nil, fmt.Errorf("open the flow event ring buffer: %w", err)
	}
	return &EventReader{r: r}, nil
}

// Read blocks for the next flow event. After Close it returns an error
// wrapping ringbuf.ErrClosed (os.ErrClosed); past the deadline, one
// wrapping os.ErrDeadlineExceeded.
func (r *EventReader) Read() (FlowEvent, error) {
	var ev FlowEvent
	for {
		wait := time.Now().Add(EventPollInterval)
		dl := r.deadline.Load()
		if dl != nil && dl.Before(wait) {
			wait = *dl
		}
		r.r.SetDeadline(wait)
		err := r.r.ReadInto(&r.rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// A poll found nothing (or reports an earlier timeout).
			if dl != nil && !time.Now().Before(*dl) {
				return ev, fmt.Errorf("read flow event: %w", err)
			}
			continue
		}
		if err != nil {
			return ev, fmt.Errorf("read flow event: %w", err)
		}
		if _, err := binary.Decode(r.rec.RawSample, binary.NativeEndian, &ev); err != nil {
			return ev, fmt.Errorf("decode flow event of %d bytes: %w", len(r.rec.RawSample), err)
		}
		return ev, nil
	}
}

// SetDeadline makes Read return an error wrapping os.ErrDeadlineExceeded
// once t has passed (at its next poll when Read is blocked); the zero time
// removes the deadline.
func (r *EventReader) SetDeadline(t time.Time) {
	if t.IsZero() {
		r.deadline.Store(nil)
		return
	}
	r.deadline.Store(&t)
}

// Close unblocks a pending Read and releases the ring.
func (r *EventReader) Close() error { return r.r.Close() }
