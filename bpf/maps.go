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

// MaglevSizes are the sizes of Maglev table the datapath has a map for,
// smallest first: size class i+1 (MaglevClass) holds tables of
// MaglevSizes[i] slots in map sluice_maglev_<size>_v1. They match enum
// maglev_class in bpf/include/sluice.h.
var MaglevSizes = [...]uint32{251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071}

// MaglevClass names the map of a service's Maglev table: 1.. for the
// sizes of MaglevSizes; MaglevLegacy for the single-size map of earlier
// releases (sluice_maglev_v1), read only while an upgrade's first sync
// moves the tables.
type MaglevClass uint8

// MaglevLegacy is the class of tables in the earlier releases' map.
const MaglevLegacy MaglevClass = 0

const (
	maglevClassShift = 8
	maglevClassMask  = 0xf << maglevClassShift
	maglevClasses    = len(MaglevSizes) + 1 // the legacy class included
)

// MaglevClassOfSize is the class of tables of size slots; ok is false when
// no map holds that size.
func MaglevClassOfSize(size uint32) (c MaglevClass, ok bool) {
	for i, s := range MaglevSizes {
		if s == size {
			return MaglevClass(i + 1), true
		}
	}
	return 0, false
}

// MaglevClassOf is the class a service entry's flags name.
func MaglevClassOf(flags uint32) MaglevClass {
	return MaglevClass((flags & maglevClassMask) >> maglevClassShift)
}

// Flags are the bits of ServiceValue.Flags that name class c.
func (c MaglevClass) Flags() uint32 { return uint32(c) << maglevClassShift & maglevClassMask }

// WithMaglevClass returns service flags with their class set to c.
func WithMaglevClass(flags uint32, c MaglevClass) uint32 { return flags&^maglevClassMask | c.Flags() }

// maglevMap is the map holding class c's tables; nil for a class this
// build does not know.
func (d *Datapath) maglevMap(c MaglevClass) *ebpf.Map {
	if int(c) >= len(d.MaglevMaps) {
		return nil
	}
	return d.MaglevMaps[c]
}

// MaglevClassSize is the slot count of class c's tables (0 when unknown).
func (d *Datapath) MaglevClassSize(c MaglevClass) uint32 {
	if m := d.maglevMap(c); m != nil {
		return m.ValueSize() / 4
	}
	return 0
}

// MaglevMaxSize is the largest table size this datapath was loaded for
// (Config.MaglevSize, rounded down to MaglevSizes): the largest class
// whose map has room for more than one table.
func (d *Datapath) MaglevMaxSize() uint32 {
	size := MaglevSizes[0]
	for i, s := range MaglevSizes {
		if m := d.MaglevMaps[i+1]; m != nil && m.MaxEntries() > 1 {
			size = s
		}
	}
	return size
}

// SetMaglevTables installs Maglev tables of class c (one backend ID per
// slot) for many services in one batch update. Each table replaces the
// old one of its class whole: a packet reads either the old or the new
// table.
func (d *Datapath) SetMaglevTables(c MaglevClass, tables map[uint32][]uint32) error {
	m := d.maglevMap(c)
	if m == nil {
		return fmt.Errorf("maglev class %d: no such table map", c)
	}
	size := m.ValueSize() / 4
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
	if _, err := m.BatchUpdate(ids, rows, nil); err != nil {
		return fmt.Errorf("install %d maglev tables of %d slots (map full? MaxServices is %d): %w", len(ids), size, m.MaxEntries(), err)
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
func (d *Datapath) SetMaglevTable(c MaglevClass, svcID uint32, table []uint32) error {
	return d.SetMaglevTables(c, map[uint32][]uint32{svcID: table})
}

// MaglevTable reads a service's table of class c; ok is false when it has
// none.
func (d *Datapath) MaglevTable(c MaglevClass, svcID uint32) (table []uint32, ok bool, err error) {
	m := d.maglevMap(c)
	if m == nil {
		return nil, false, nil
	}
	table = make([]uint32, m.ValueSize()/4)
	if err := m.Lookup(svcID, &table); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("read maglev table of service %d (class %d): %w", svcID, c, err)
	}
	return table, true, nil
}

// DeleteMaglevTable removes a service's table of class c; a missing one
// is not an error.
func (d *Datapath) DeleteMaglevTable(c MaglevClass, svcID uint32) error {
	m := d.maglevMap(c)
	if m == nil {
		return nil
	}
	if err := m.Delete(svcID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete maglev table for service %d (class %d): %w", svcID, c, err)
	}
	return nil
}

// MaglevTableIDs lists the services that have a table of class c.
func (d *Datapath) MaglevTableIDs(c MaglevClass) ([]uint32, error) {
	m := d.maglevMap(c)
	if m == nil {
		return nil, nil
	}
	var ids []uint32
	var id uint32
	// Keys only: a table is up to 512 KiB.
	for err := m.NextKey(nil, &id); ; err = m.NextKey(id, &id) {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return ids, nil
		}
		if err != nil {
			return ids, fmt.Errorf("list maglev tables of class %d: %w", c, err)
		}
		ids = append(ids, id)
	}
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
	// Direct server return: packets sent on to a backend's node, packets
	// received for a local backend, and backends' replies sent straight
	// to the client.
	CounterDSRSent     = datapathCounterCOUNTER_DSR_SENT
	CounterDSRReceived = datapathCounterCOUNTER_DSR_RECEIVED
	CounterDSRReplies  = datapathCounterCOUNTER_DSR_REPLIES
	// XDP masquerade: packets sent on to a remote backend from the node's
	// address, backends' replies sent back to the client, and new flows
	// left to netfilter because no port of the range was free.
	CounterMasqForward   = datapathCounterCOUNTER_MASQ_FORWARD
	CounterMasqReply     = datapathCounterCOUNTER_MASQ_REPLY
	CounterMasqPortsBusy = datapathCounterCOUNTER_MASQ_PORTS_BUSY
)

// CounterValues sums the per-CPU event counters, by counter.
func (d *Datapath) CounterValues() (map[Counter]uint64, error) {
	out := map[Counter]uint64{}
	var perCPU []uint64
	for _, c := range []Counter{CounterCTReplyRestored, CounterCTForwardRestored, CounterCTReopened,
		CounterAffinityStale, CounterCTInsertFailed, CounterEventsSuppressed, CounterEventsLost,
		CounterDSRSent, CounterDSRReceived, CounterDSRReplies, CounterMasqForward, CounterMasqReply, CounterMasqPortsBusy} {
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

// Maps lists every pinned map of the datapath by its pinned name (the
// earlier releases' Maglev map while it is still there).
func (d *Datapath) Maps() map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	for name, m := range map[string]*ebpf.Map{
		datapathMapSluiceServicesV1: d.Services, datapathMapSluiceBackendsV2: d.Backends,
		datapathMapSluiceCtTcpV1: d.ConntrackTCP, datapathMapSluiceCtOtherV1: d.ConntrackOther,
		datapathMapSluiceAffinityV2: d.Affinity, datapathMapSluiceEndpointsV1: d.Endpoints,
		datapathMapSluiceDropsV2: d.Drops, datapathMapSluiceCountersV1: d.Counters, datapathMapSluiceEventsV3: d.Events,
		datapathMapSluiceSockRevnatV1: d.SockRevnat, datapathMapSluiceSockNetnsV1: d.SockNetns, datapathMapSluiceFragsV1: d.Frags,
		datapathMapSluiceLbRangesV1: d.LBRanges, datapathMapSluiceFrontendAddrsV1: d.FrontendAddrs, datapathMapSluiceTunnelV1: d.Tunnel,
		datapathMapSluiceEndpointSlotsV1: d.EndpointSlots, datapathMapSluiceNodeCidrsV1: d.NodeCIDRs,
		datapathMapSluiceIpcacheV1: d.IPCache, datapathMapSluicePolicyCidrsV1: d.PolicyCIDRs,
		datapathMapSluicePolicyEndpointsV1: d.PolicyEndpoints, datapathMapSluicePolicyV1: d.Policy,
		datapathMapSluicePolicyStateV1: d.PolicyState,
	} {
		if m != nil {
			out[name] = m
		}
	}
	for i, size := range MaglevSizes {
		if m := d.MaglevMaps[i+1]; m != nil {
			out[maglevMapName(size)] = m
		}
	}
	if m := d.MaglevMaps[MaglevLegacy]; m != nil && m.MaxEntries() > 1 {
		out[datapathMapSluiceMaglevV1] = m
	}
	return out
}

// MapMemory is the kernel's memory accounting of each map of Maps, in
// bytes (what the kernel charges for it: for a map without preallocation,
// what its entries take now; 0 when it accounts none).
func (d *Datapath) MapMemory() (map[string]uint64, error) {
	out := map[string]uint64{}
	for name, m := range d.Maps() {
		info, err := m.Info()
		if err != nil {
			return nil, fmt.Errorf("read the memory of map %s: %w", name, err)
		}
		// 0 when the kernel accounts none (an empty LPM trie).
		mem, _ := info.Memlock()
		out[name] = mem
	}
	return out, nil
}
