// Package bpf loads, pins and attaches Sluice's tc eBPF datapath and gives
// typed access to its maps. It imports nothing else of Sluice, so both the
// agent and the CNI plugin can use it.
//
// Everything lives under one bpffs directory (Config.PinRoot):
//
//	<root>/maps/   the datapath's maps, pinned by name (name carries a layout version)
//	<root>/progs/  from_pod and to_pod, for the CNI plugin to attach
//	<root>/links/  tcx links per host veth, so attachments outlive the process
//
// Several simulated nodes can share one kernel by using different roots.
package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
)

// DefaultPinRoot is where a node's datapath is pinned unless configured.
const DefaultPinRoot = "/sys/fs/bpf/sluice"

// Config sizes and tunes the datapath at load time. Zero fields take the
// defaults of DefaultConfig.
type Config struct {
	// PinRoot is the bpffs directory holding this node's datapath.
	PinRoot string
	// MaglevSize is the largest Maglev table a service may get, in slots
	// (a prime). Each service's table is sized to its backends: the
	// smallest of MaglevSizes at least 100 times its backend count (which
	// keeps the disruption of a backend change near the ideal 1/N), capped
	// at the largest of MaglevSizes not above MaglevSize.
	MaglevSize uint32
	// Map capacities. Conntrack has one map for TCP and one for every
	// other protocol, so a flood of one cannot evict flows of the other.
	MaxServices, MaxBackends, MaxAffinity, MaxEndpoints uint32
	MaxConntrackTCP, MaxConntrackOther                  uint32
	// NetworkPolicy map capacities: pod IPs of the whole cluster, ipBlock
	// prefixes, and allow rules of this node's endpoints (local endpoints
	// share MaxEndpoints).
	MaxIPCache, MaxPolicyCIDRs, MaxPolicyRules uint32
	// Conntrack lifetimes by state. CTTimeoutUnreplied is for flows other
	// than TCP until their first reply, CTTimeoutOther after it.
	CTTimeoutSYN, CTTimeoutTCP, CTTimeoutClose, CTTimeoutOther, CTTimeoutUnreplied time.Duration
	// HostNetnsCookie limits socket-level load balancing to sockets of the
	// network namespace with this cookie (NetnsCookie of the node's); pods'
	// traffic then takes the tc path. 0 translates sockets everywhere.
	HostNetnsCookie uint64
	// EventRate and EventBurst limit the flow events (drops and new flows,
	// read with NewEventReader) each CPU sends: at most EventRate per
	// second on average, EventBurst at once; what is held back is counted
	// (CounterEventsSuppressed); a rate above 1e9 is no limit. EventsOff
	// sends none at all (a zero EventRate takes the default, like every
	// other field).
	EventRate, EventBurst uint32
	EventsOff             bool
	// DSR turns on direct server return in xdp_netdev (AttachXDP): flows
	// from outside to a remote backend are sent on to the backend's node
	// in Geneve over UDP port DSRPort, and the backend's node replies to
	// the client itself. DSRMaxInner is the largest packet such a flow may
	// carry: the uplink MTU less DSROverhead (the default assumes 1500).
	DSR         bool
	DSRPort     uint16
	DSRMaxInner uint32
	// MasqPortMin..MasqPortMax (both zero: off) turns on the XDP
	// masquerade when DSR is off: xdp_netdev sends flows from outside to
	// a remote backend on from the node's address and a source port of
	// this range, which no socket of the node and no netfilter
	// masquerade may use, and sends the replies back to the client.
	MasqPortMin, MasqPortMax uint16
}

// DefaultDSRPort is Geneve's port (RFC 8926), the default of Config.DSRPort.
const DefaultDSRPort = 6081

// DSROverhead is what direct server return adds to a packet over an IPv4
// underlay (outer IPv4, UDP, Geneve with its option); over IPv6, 20 more.
const DSROverhead = 60

// DefaultConfig returns the configuration used for zero Config fields.
func DefaultConfig() Config {
	return Config{
		PinRoot:            DefaultPinRoot,
		MaglevSize:         16381,
		MaxServices:        65536,
		MaxBackends:        262144,
		MaxConntrackTCP:    262144,
		MaxConntrackOther:  131072,
		MaxAffinity:        65536,
		MaxEndpoints:       4096,
		MaxIPCache:         65536,
		MaxPolicyCIDRs:     16384,
		MaxPolicyRules:     262144,
		CTTimeoutSYN:       30 * time.Second,
		CTTimeoutTCP:       6 * time.Hour,
		CTTimeoutClose:     10 * time.Second,
		CTTimeoutOther:     60 * time.Second,
		CTTimeoutUnreplied: 10 * time.Second,
		EventRate:          1000,
		EventBurst:         1000,
		DSRPort:            DefaultDSRPort,
		DSRMaxInner:        1500 - DSROverhead,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	setDefault := func(v *uint32, def uint32) {
		if *v == 0 {
			*v = def
		}
	}
	setDefaultDur := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	if c.PinRoot == "" {
		c.PinRoot = d.PinRoot
	}
	setDefault(&c.MaglevSize, d.MaglevSize)
	setDefault(&c.MaxServices, d.MaxServices)
	setDefault(&c.MaxBackends, d.MaxBackends)
	setDefault(&c.MaxConntrackTCP, d.MaxConntrackTCP)
	setDefault(&c.MaxConntrackOther, d.MaxConntrackOther)
	setDefault(&c.MaxAffinity, d.MaxAffinity)
	setDefault(&c.MaxEndpoints, d.MaxEndpoints)
	setDefault(&c.MaxIPCache, d.MaxIPCache)
	setDefault(&c.MaxPolicyCIDRs, d.MaxPolicyCIDRs)
	setDefault(&c.MaxPolicyRules, d.MaxPolicyRules)
	setDefault(&c.EventRate, d.EventRate)
	setDefault(&c.EventBurst, d.EventBurst)
	setDefault(&c.DSRMaxInner, d.DSRMaxInner)
	if c.DSRPort == 0 {
		c.DSRPort = d.DSRPort
	}
	setDefaultDur(&c.CTTimeoutSYN, d.CTTimeoutSYN)
	setDefaultDur(&c.CTTimeoutTCP, d.CTTimeoutTCP)
	setDefaultDur(&c.CTTimeoutClose, d.CTTimeoutClose)
	setDefaultDur(&c.CTTimeoutOther, d.CTTimeoutOther)
	setDefaultDur(&c.CTTimeoutUnreplied, d.CTTimeoutUnreplied)
	return c
}

func (c Config) validate() error {
	if !IsPrime(c.MaglevSize) {
		return fmt.Errorf("MaglevSize: %d is not prime; Maglev needs a prime table size such as 16381", c.MaglevSize)
	}
	if c.MaglevSize < MaglevSizes[0] {
		return fmt.Errorf("MaglevSize: %d is below the smallest table size, %d", c.MaglevSize, MaglevSizes[0])
	}
	if (c.MasqPortMin == 0) != (c.MasqPortMax == 0) || c.MasqPortMin > c.MasqPortMax {
		return fmt.Errorf("MasqPortMin, MasqPortMax: %d-%d is not a port range (both zero turns the XDP masquerade off)", c.MasqPortMin, c.MasqPortMax)
	}
	return nil
}

// IsPrime reports whether n is prime: a Maglev table size must be.
func IsPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	for d := uint32(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// Datapath holds the loaded programs and maps of one node.
type Datapath struct {
	FromPod *ebpf.Program
	ToPod   *ebpf.Program
	// FromNetdev and ToNetdev serve the node's uplinks (AttachDevice);
	// nil when opened with OpenPinned.
	FromNetdev *ebpf.Program
	ToNetdev   *ebpf.Program
	// ToTunnel serves the overlay device (AttachTunnel); nil when opened
	// with OpenPinned.
	ToTunnel *ebpf.Program
	// XDPNetdev is the uplinks' XDP program (AttachXDP); nil when opened
	// with OpenPinned.
	XDPNetdev *ebpf.Program

	Services *ebpf.Map
	Backends *ebpf.Map
	// MaglevMaps hold the Maglev tables by size class (MaglevClass):
	// index 0 is the earlier releases' single-size map, 1.. the maps of
	// MaglevSizes.
	MaglevMaps [maglevClasses]*ebpf.Map
	// ConntrackTCP and ConntrackOther: conntrack of TCP, and of every
	// other protocol (ConntrackMap picks by protocol).
	ConntrackTCP, ConntrackOther *ebpf.Map
	Affinity                     *ebpf.Map
	Endpoints                    *ebpf.Map
	Drops                        *ebpf.Map
	// Counters counts datapath events that are not drops (enum counter).
	Counters *ebpf.Map
	// Events is the ring of flow events (FlowEvent): read it with
	// NewEventReader.
	Events *ebpf.Map
	// SockRevnat remembers the service behind each socket translated by
	// socket-level load balancing.
	SockRevnat *ebpf.Map
	// SockNetns holds the pods socket-level load balancing serves, by
	// network namespace cookie (ServePodSockets); nil when opened from
	// pins of a release before it.
	SockNetns *ebpf.Map
	// LBRanges holds the loadBalancerSourceRanges of restricted frontends
	// (PutLBRange); nil when opened from pins of a release before them.
	LBRanges *ebpf.Map
	// FrontendAddrs holds the addresses that serve Services only
	// (PutFrontendAddr); nil when opened from pins of a release before it.
	FrontendAddrs *ebpf.Map
	// Tunnel holds the overlay's tunnel endpoints (PutTunnelEndpoint); nil
	// when opened from pins of a release before the overlay.
	Tunnel *ebpf.Map
	// Nodes holds the cluster's node addresses and NodeAddrs this node's
	// (SetNodeAddrs), for direct server return; nil when opened read-only.
	Nodes, NodeAddrs *ebpf.Map
	// Frags holds, per fragmented datagram, what its first fragment got.
	Frags *ebpf.Map
	// EndpointSlots holds each pod veth's addresses by ifindex, the fast
	// path of from_pod's source check (RecordEndpoint writes it).
	EndpointSlots *ebpf.Map
	// NodeCIDRs holds this node's pod CIDRs (SetNodePodCIDRs): from_netdev
	// drops packets from outside claiming an address in them.
	NodeCIDRs *ebpf.Map
	// NetworkPolicy: identities of the cluster's pod IPs, of ipBlock
	// prefixes, this node's isolated endpoints and their allow rules.
	// PolicyState counts the isolated endpoints; at 0 policy is skipped.
	IPCache, PolicyCIDRs, PolicyEndpoints, Policy, PolicyState *ebpf.Map

	// Migrated is what Load carried over from maps of an earlier layout
	// (see migrate.go); FinishMigration completes it.
	Migrated MigrationStats

	root      string
	sockProgs map[string]*ebpf.Program // cgroup hooks, by program name; nil when opened read-only
	legacy    *migration               // old maps until FinishMigration
	tookOver  bool                     // FinishMigration has run: no old program is attached
}

func mapsDir(root string) string  { return filepath.Join(root, "maps") }
func progsDir(root string) string { return filepath.Join(root, "progs") }
func linksDir(root string) string { return filepath.Join(root, "links") }

// Load loads the datapath for a node and pins it under cfg.PinRoot. Maps
// already pinned there are reused with their contents, so a restarted agent
// picks up the working datapath without disturbing it. A pinned map whose
// layout differs from this build's is an error, never silently reused.
// Programs are loaded anew and their pins replaced atomically; existing
// attachments keep running until they are re-attached.
func Load(cfg Config) (*Datapath, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("parse embedded datapath object: %w", err)
	}
	if err := configureSpec(spec, cfg); err != nil {
		return nil, err
	}
	for _, dir := range []string{mapsDir(cfg.PinRoot), progsDir(cfg.PinRoot), linksDir(cfg.PinRoot)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory %s (is bpffs mounted at its parent?): %w", dir, err)
		}
	}

	var objs datapathObjects
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: mapsDir(cfg.PinRoot)}})
	if err != nil {
		var verr *ebpf.VerifierError
		switch {
		case errors.Is(err, ebpf.ErrMapIncompatible):
			return nil, fmt.Errorf("a map pinned under %s has a layout this build cannot use (%w); it was made by "+
				"another Sluice version or configuration: drain the node and remove %s to start afresh",
				mapsDir(cfg.PinRoot), err, cfg.PinRoot)
		case errors.As(err, &verr):
			return nil, fmt.Errorf("kernel verifier rejected the datapath: %+v", verr)
		}
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	d := &Datapath{
		FromPod: objs.FromPod, ToPod: objs.ToPod, FromNetdev: objs.FromNetdev, ToNetdev: objs.ToNetdev, ToTunnel: objs.ToTunnel,
		XDPNetdev: objs.XdpNetdev,
		Services:  objs.SluiceServicesV1, Backends: objs.SluiceBackendsV2,
		MaglevMaps: [maglevClasses]*ebpf.Map{objs.SluiceMaglevV1, objs.SluiceMaglev251V1, objs.SluiceMaglev509V1,
			objs.SluiceMaglev1021V1, objs.SluiceMaglev2039V1, objs.SluiceMaglev4093V1, objs.SluiceMaglev8191V1,
			objs.SluiceMaglev16381V1, objs.SluiceMaglev32749V1, objs.SluiceMaglev65521V1, objs.SluiceMaglev131071V1},
		ConntrackTCP: objs.SluiceCtTcpV1, ConntrackOther: objs.SluiceCtOtherV1,
		Affinity: objs.SluiceAffinityV2, Endpoints: objs.SluiceEndpointsV1,
		Drops: objs.SluiceDropsV2, Counters: objs.SluiceCountersV1, Events: objs.SluiceEventsV3,
		SockRevnat: objs.SluiceSockRevnatV1, SockNetns: objs.SluiceSockNetnsV1, LBRanges: objs.SluiceLbRangesV1,
		FrontendAddrs: objs.SluiceFrontendAddrsV1, Tunnel: objs.SluiceTunnelV1, Nodes: objs.SluiceNodesV1, NodeAddrs: objs.SluiceNodeAddrsV1,
		Frags: objs.SluiceFragsV1, EndpointSlots: objs.SluiceEndpointSlotsV1, NodeCIDRs: objs.SluiceNodeCidrsV1,
		IPCache: objs.SluiceIpcacheV1, PolicyCIDRs: objs.SluicePolicyCidrsV1,
		PolicyEndpoints: objs.SluicePolicyEndpointsV1, Policy: objs.SluicePolicyV1, PolicyState: objs.SluicePolicyStateV1,
		root: cfg.PinRoot,
		sockProgs: map[string]*ebpf.Program{
			"sock4_connect": objs.Sock4Connect, "sock4_sendmsg": objs.Sock4Sendmsg,
			"sock4_recvmsg": objs.Sock4Recvmsg, "sock4_getpeername": objs.Sock4Getpeername,
			"sock6_connect": objs.Sock6Connect, "sock6_sendmsg": objs.Sock6Sendmsg,
			"sock6_recvmsg": objs.Sock6Recvmsg, "sock6_getpeername": objs.Sock6Getpeername,
		},
	}
	if d.Migrated, err = d.migrate(); err != nil {
		d.Close()
		return nil, fmt.Errorf("carry the pinned state over to this version's maps: %w", err)
	}
	for name, prog := range map[string]*ebpf.Program{"from_pod": d.FromPod, "to_pod": d.ToPod} {
		if err := replacePin(prog, filepath.Join(progsDir(cfg.PinRoot), name)); err != nil {
			d.Close()
			return nil, err
		}
	}
	return d, nil
}

func configureSpec(spec *ebpf.CollectionSpec, cfg Config) error {
	eventRate := cfg.EventRate
	if cfg.EventsOff {
		eventRate = 0
	}
	var eventInterval uint64
	if eventRate > 0 {
		eventInterval = uint64(time.Second) / uint64(eventRate)
	}
	legacySize, err := configureLegacyMaglev(spec, cfg)
	if err != nil {
		return err
	}
	consts := map[string]any{
		"maglev_size":             legacySize,
		"ct_timeout_syn_ns":       uint64(cfg.CTTimeoutSYN.Nanoseconds()),
		"ct_timeout_tcp_ns":       uint64(cfg.CTTimeoutTCP.Nanoseconds()),
		"ct_timeout_close_ns":     uint64(cfg.CTTimeoutClose.Nanoseconds()),
		"ct_timeout_other_ns":     uint64(cfg.CTTimeoutOther.Nanoseconds()),
		"ct_timeout_unreplied_ns": uint64(cfg.CTTimeoutUnreplied.Nanoseconds()),
		"host_netns_cookie":       cfg.HostNetnsCookie,
		"event_rate":              eventRate,
		"event_burst":             cfg.EventBurst,
		"event_interval_ns":       eventInterval,
		"hairpin_addr4":           Addr(HairpinAddr4),
		"hairpin_addr6":           Addr(HairpinAddr6),
		"dsr_enabled":             boolU32(cfg.DSR),
		"dsr_port":                uint32(cfg.DSRPort),
		"dsr_max_inner":           cfg.DSRMaxInner,
		"masq_port_min":           uint32(cfg.MasqPortMin),
		"masq_port_max":           uint32(cfg.MasqPortMax),
	}
	for name, v := range consts {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set datapath constant %s: %w", name, err)
		}
	}
	sizes := map[string]uint32{
		datapathMapSluiceServicesV1:        cfg.MaxServices,
		datapathMapSluiceBackendsV2:        cfg.MaxBackends,
		datapathMapSluiceMaglevV1:          cfg.MaxServices,
		datapathMapSluiceCtTcpV1:           cfg.MaxConntrackTCP,
		datapathMapSluiceCtOtherV1:         cfg.MaxConntrackOther,
		datapathMapSluiceAffinityV2:        cfg.MaxAffinity,
		datapathMapSluiceEndpointsV1:       cfg.MaxEndpoints,
		datapathMapSluicePolicyEndpointsV1: cfg.MaxEndpoints,
		datapathMapSluiceSockNetnsV1:       cfg.MaxEndpoints,
		datapathMapSluiceLbRangesV1:        cfg.MaxServices,
		datapathMapSluiceFrontendAddrsV1:   cfg.MaxServices, // every address has a frontend
		datapathMapSluiceTunnelV1:          maxTunnelEndpoints,
		datapathMapSluiceNodesV1:           maxTunnelEndpoints,
		datapathMapSluiceIpcacheV1:         cfg.MaxIPCache,
		datapathMapSluicePolicyCidrsV1:     cfg.MaxPolicyCIDRs,
		datapathMapSluicePolicyV1:          cfg.MaxPolicyRules,
	}
	for name, n := range sizes {
		spec.Maps[name].MaxEntries = n
	}
	// A class above the largest size a table may have holds no table.
	for _, size := range MaglevSizes {
		n := cfg.MaxServices
		if size > cfg.MaglevSize {
			n = 1
		}
		spec.Maps[maglevMapName(size)].MaxEntries = n
	}
	return nil
}

func boolU32(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

func maglevMapName(size uint32) string { return fmt.Sprintf("sluice_maglev_%d_v1", size) }

// maglevMapNames are the size classes' map names, class 1 first.
func maglevMapNames() []string {
	var out []string
	for _, size := range MaglevSizes {
		out = append(out, maglevMapName(size))
	}
	return out
}

// configureLegacyMaglev sizes the earlier releases' single-size Maglev map
// (sluice_maglev_v1) as it is pinned, so that this datapath serves the
// services it holds until the first sync moves them to the size classes;
// without one pinned, it is made with room for nothing and not pinned. It
// returns the slot count of its tables (the maglev_size constant).
func configureLegacyMaglev(spec *ebpf.CollectionSpec, cfg Config) (uint32, error) {
	ms := spec.Maps[datapathMapSluiceMaglevV1]
	pinned, err := ebpf.LoadPinnedMap(filepath.Join(mapsDir(cfg.PinRoot), datapathMapSluiceMaglevV1), nil)
	if errors.Is(err, os.ErrNotExist) {
		ms.Pinning, ms.MaxEntries, ms.ValueSize = ebpf.PinNone, 1, 4
		return 1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("open the pinned Maglev map of an earlier version, %s: %w", datapathMapSluiceMaglevV1, err)
	}
	defer pinned.Close()
	ms.MaxEntries, ms.ValueSize = pinned.MaxEntries(), pinned.ValueSize()
	return pinned.ValueSize() / 4, nil
}

// replacePin pins prog at path, atomically replacing an older pin so that a
// concurrent reader (the CNI plugin) always finds a program.
func replacePin(prog *ebpf.Program, path string) error {
	tmp := path + "_new" // bpffs reserves dots in names
	_ = os.Remove(tmp)
	if err := prog.Pin(tmp); err != nil {
		return fmt.Errorf("pin program at %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("replace program pin %s: %w", path, err)
	}
	return nil
}

// OpenPinned opens a datapath that an agent pinned under root, without
// loading or changing anything. The CNI plugin uses it on every call.
func OpenPinned(root string) (*Datapath, error) {
	d := &Datapath{root: root}
	var err error
	open := func(name string) *ebpf.Map {
		if err != nil {
			return nil
		}
		var m *ebpf.Map
		path := filepath.Join(mapsDir(root), name)
		if m, err = ebpf.LoadPinnedMap(path, nil); err != nil {
			err = fmt.Errorf("open pinned map %s (has the agent loaded the datapath?): %w", path, err)
		}
		return m
	}
	d.Services = open(datapathMapSluiceServicesV1)
	d.Backends = open(datapathMapSluiceBackendsV2)
	// The Maglev maps are optional: a node still pinned by a release
	// before size classes has only sluice_maglev_v1 (and the agent sizes
	// conntrack from what is pinned before it loads this version).
	for c, name := range append([]string{datapathMapSluiceMaglevV1}, maglevMapNames()...) {
		if err == nil {
			d.MaglevMaps[c], _ = ebpf.LoadPinnedMap(filepath.Join(mapsDir(root), name), nil)
		}
	}
	d.ConntrackTCP = open(datapathMapSluiceCtTcpV1)
	d.ConntrackOther = open(datapathMapSluiceCtOtherV1)
	d.Affinity = open(datapathMapSluiceAffinityV2)
	d.Endpoints = open(datapathMapSluiceEndpointsV1)
	d.Drops = open(datapathMapSluiceDropsV2)
	d.Counters = open(datapathMapSluiceCountersV1)
	d.Events = open(datapathMapSluiceEventsV3)
	d.Frags = open(datapathMapSluiceFragsV1)
	d.EndpointSlots = open(datapathMapSluiceEndpointSlotsV1)
	d.NodeCIDRs = open(datapathMapSluiceNodeCidrsV1)
	d.SockRevnat = open(datapathMapSluiceSockRevnatV1)
	if err == nil { // optional, as the Maglev maps: pinned since socket LB served pods
		d.SockNetns, _ = ebpf.LoadPinnedMap(filepath.Join(mapsDir(root), datapathMapSluiceSockNetnsV1), nil)
		d.LBRanges, _ = ebpf.LoadPinnedMap(filepath.Join(mapsDir(root), datapathMapSluiceLbRangesV1), nil)
		d.FrontendAddrs, _ = ebpf.LoadPinnedMap(filepath.Join(mapsDir(root), datapathMapSluiceFrontendAddrsV1), nil)
		d.Tunnel, _ = ebpf.LoadPinnedMap(filepath.Join(mapsDir(root), datapathMapSluiceTunnelV1), nil)
	}
	d.IPCache = open(datapathMapSluiceIpcacheV1)
	d.PolicyCIDRs = open(datapathMapSluicePolicyCidrsV1)
	d.PolicyEndpoints = open(datapathMapSluicePolicyEndpointsV1)
	d.Policy = open(datapathMapSluicePolicyV1)
	d.PolicyState = open(datapathMapSluicePolicyStateV1)
	for _, p := range []struct {
		name string
		dst  **ebpf.Program
	}{{"from_pod", &d.FromPod}, {"to_pod", &d.ToPod}} {
		if err != nil {
			break
		}
		path := filepath.Join(progsDir(root), p.name)
		if *p.dst, err = ebpf.LoadPinnedProgram(path, nil); err != nil {
			err = fmt.Errorf("open pinned program %s (has the agent loaded the datapath?): %w", path, err)
		}
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// PinRoot is the bpffs directory this datapath is pinned under.
func (d *Datapath) PinRoot() string { return d.root }

// Close releases this process's handles; pinned objects stay in the kernel.
func (d *Datapath) Close() error {
	var errs []error
	for _, p := range []*ebpf.Program{d.FromPod, d.ToPod, d.FromNetdev, d.ToNetdev, d.ToTunnel, d.XDPNetdev} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	for _, p := range d.sockProgs {
		errs = append(errs, p.Close())
	}
	if d.legacy != nil {
		d.legacy.close()
	}
	for _, m := range d.MaglevMaps {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	for _, m := range []*ebpf.Map{d.Services, d.Backends, d.ConntrackTCP, d.ConntrackOther, d.Affinity,
		d.Endpoints, d.Drops, d.Counters, d.Events,
		d.SockRevnat, d.SockNetns, d.LBRanges, d.FrontendAddrs, d.Tunnel, d.Nodes, d.NodeAddrs, d.Frags, d.EndpointSlots, d.NodeCIDRs, d.IPCache, d.PolicyCIDRs, d.PolicyEndpoints, d.Policy, d.PolicyState} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// Remove unpins everything under root: maps, programs and links (which
// detaches them). It is the uninstall path and the tests' cleanup; a
// missing root is not an error.
func Remove(root string) error {
	if err := os.RemoveAll(root); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove datapath pins under %s: %w", root, err)
	}
	return nil
}
