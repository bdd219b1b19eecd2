package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AttachMode chooses the tc hook flavour.
type AttachMode int

const (
	// AttachAuto uses tcx where the kernel has it (>= 6.6) and falls back
	// to clsact + cls_bpf direct-action elsewhere.
	AttachAuto AttachMode = iota
	// AttachTCX insists on tcx links.
	AttachTCX
	// AttachLegacy uses a clsact qdisc with cls_bpf direct-action filters.
	AttachLegacy
)

// Legacy filters are recognised by this handle and priority, so Sluice
// replaces and deletes only its own filters on a shared clsact qdisc.
const (
	legacyHandle   = 0x51c
	legacyPriority = 1
)

type hook struct {
	name   string // pin suffix and filter name
	tcx    ebpf.AttachType
	parent uint32
}

var (
	ingressHook = hook{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS}
	egressHook  = hook{"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS}
)

// linkPin names the pin of a device's link. bpffs reserves '.', which
// interface names may contain, so it becomes ':', which they may not.
func linkPin(root, ifname string, h hook) string {
	return filepath.Join(linksDir(root), strings.ReplaceAll(ifname, ".", ":")+"_"+h.name)
}

// AttachPod attaches from_pod to the ingress and to_pod to the egress of a
// pod's host-side veth in the calling thread's network namespace. It is idempotent:
// attaching again swaps in the current programs atomically. tcx links are
// pinned under <root>/links/<ifname>_{ingress,egress} so they outlive the
// calling process (the CNI plugin exits right after ADD).
func (d *Datapath) AttachPod(ifname string, mode AttachMode) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("find interface %q to attach to: %w", ifname, err)
	}
	ifindex := l.Attrs().Index
	// Each tcx attach waits for an RCU grace period under the RTNL lock
	// (~13 ms here), so the two cannot overlap; see docs/benchmarks.md.
	if err := d.attach(ifname, ifindex, ingressHook, d.FromPod, mode); err != nil {
		return err
	}
	return d.attach(ifname, ifindex, egressHook, d.ToPod, mode)
}

// AttachDevice attaches from_netdev to the ingress and to_netdev to the
// egress of a node uplink (the interface holding the node's address), for
// NodePort, ExternalIP and LoadBalancer traffic from outside. Idempotent,
// pinned like AttachPod.
func (d *Datapath) AttachDevice(ifname string, mode AttachMode) error {
	if d.FromNetdev == nil {
		return errors.New("attach device: the datapath was opened read-only (OpenPinned)")
	}
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("find device %q to attach to: %w", ifname, err)
	}
	ifindex := l.Attrs().Index
	if err := d.attach(ifname, ifindex, ingressHook, d.FromNetdev, mode); err != nil {
		return err
	}
	return d.attach(ifname, ifindex, egressHook, d.ToNetdev, mode)
}

func (d *Datapath) attach(ifname string, ifindex int, h hook, prog *ebpf.Program, mode AttachMode) error {
	if mode != AttachLegacy {
		err := attachTCX(linkPin(d.root, ifname, h), ifindex, h, prog)
		if err == nil || mode == AttachTCX || !errors.Is(err, ebpf.ErrNotSupported) {
			return err
		}
	}
	return attachLegacy(ifindex, h, prog)
}

func attachTCX(pin string, ifindex int, h hook, prog *ebpf.Program) error {
	// Reuse a pinned link that still points at this device: updating it
	// swaps the program without a window where the hook is empty.
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := old.Info()
		if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
			err := old.Update(prog)
			old.Close()
			if err != nil {
				return fmt.Errorf("update tcx %s link on ifindex %d: %w", h.name, ifindex, err)
			}
			return nil
		}
		// The device it belonged to is gone (the name was reused).
		_ = old.Unpin()
		old.Close()
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: h.tcx})
	if err != nil {
		return fmt.Errorf("attach tcx %s on ifindex %d: %w", h.name, ifindex, err)
	}
	defer l.Close()
	_ = os.Remove(pin)
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin tcx %s link at %s: %w", h.name, pin, err)
	}
	return nil
}

func attachLegacy(ifindex int, h hook, prog *ebpf.Program) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc on ifindex %d: %w", ifindex, err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex, Parent: h.parent, Handle: legacyHandle,
			Protocol: unix.ETH_P_ALL, Priority: legacyPriority,
		},
		Fd: prog.FD(), Name: "sluice_" + h.name, DirectAction: true,
	}
	if err := netlink.FilterReplace(filter); err != nil {
		return fmt.Errorf("attach cls_bpf %s filter on ifindex %d: %w", h.name, ifindex, err)
	}
	return nil
}

// DetachPod removes Sluice's programs from a host veth: the pinned tcx
// links under root and, if the device still exists in the current network
// namespace, Sluice's legacy filters. Detaching what is not attached, or a
// device that is gone, is not an error.
func DetachPod(root, ifname string) error {
	var errs []error
	for _, h := range []hook{ingressHook, egressHook} {
		pin := linkPin(root, ifname, h)
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			errs = append(errs, l.Unpin(), l.Close())
		} else if !errors.Is(err, os.ErrNotExist) {
			// A pin we cannot open as a link is stale; remove the file.
			if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove link pin %s: %w", pin, rerr))
			}
		}
	}
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return errors.Join(errs...)
	}
	for _, h := range []hook{ingressHook, egressHook} {
		f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{
			LinkIndex: l.Attrs().Index, Parent: h.parent, Handle: legacyHandle,
			Protocol: unix.ETH_P_ALL, Priority: legacyPriority,
		}}
		if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) &&
			!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTSUP) {
			errs = append(errs, fmt.Errorf("delete %s filter on %s: %w", h.name, ifname, err))
		}
	}
	return errors.Join(errs...)
}

// Attachment reports which of Sluice's programs are attached to a device.
type Attachment struct {
	FromPodIngress bool // from_pod on ingress, by tcx or legacy filter
	ToPodEgress    bool // to_pod on egress
}

// Attached inspects the device in the current network namespace and says
// whether this datapath's programs are attached to it, by program ID.
func (d *Datapath) Attached(ifname string) (Attachment, error) {
	var a Attachment
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return a, fmt.Errorf("find interface %q: %w", ifname, err)
	}
	ifindex := l.Attrs().Index
	for _, c := range []struct {
		h    hook
		prog *ebpf.Program
		out  *bool
	}{{ingressHook, d.FromPod, &a.FromPodIngress}, {egressHook, d.ToPod, &a.ToPodEgress}} {
		info, err := c.prog.Info()
		if err != nil {
			return a, fmt.Errorf("inspect program: %w", err)
		}
		want, _ := info.ID()
		if res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: c.h.tcx}); err == nil {
			for _, p := range res.Programs {
				if p.ID == want {
					*c.out = true
				}
			}
		}
		filters, err := netlink.FilterList(l, c.h.parent)
		if err != nil {
			continue // no clsact qdisc
		}
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && ebpf.ProgramID(bf.Id) == want {
				*c.out = true
			}
		}
	}
	return a, nil
}

// PruneLinkPins unpins (detaching) every tcx link under root whose device
// keep rejects. The CNI plugin's GC uses it for devices of dead pods.
func PruneLinkPins(root string, keep func(ifname string) bool) error {
	entries, err := os.ReadDir(linksDir(root))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list link pins: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		for _, h := range []hook{ingressHook, egressHook} {
			dev, ok := strings.CutSuffix(name, "_"+h.name)
			if !ok {
				continue
			}
			dev = strings.ReplaceAll(dev, ":", ".")
			if keep(dev) {
				continue
			}
			if err := os.Remove(filepath.Join(linksDir(root), name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove link pin %s: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// ReattachStats counts what Reattach did with the links pinned under the
// datapath's root.
type ReattachStats struct {
	Updated int // links swapped to this datapath's program
	Current int // links that already ran it
	Stale   int // pins of tc links whose device is gone, removed
}

// Reattach points every link pinned under the root (the pods' veths the
// CNI plugin attached, the uplinks, the socket LB hooks) at this
// datapath's program of the same name. An upgrade's programs thereby take
// over running pods, not only new ones; a link update swaps the program
// atomically, so no packet meets an empty hook. Pins of tc links whose
// device has gone are removed. Legacy cls_bpf filters are replaced on the
// local endpoints' veths.
func (d *Datapath) Reattach() (ReattachStats, error) {
	var st ReattachStats
	byName := map[string]*ebpf.Program{"from_pod": d.FromPod, "to_pod": d.ToPod}
	if d.FromNetdev != nil {
		byName["from_netdev"], byName["to_netdev"], byName["to_tunnel"] = d.FromNetdev, d.ToNetdev, d.ToTunnel
		byName["xdp_netdev"] = d.XDPNetdev
	}
	for name, p := range d.sockProgs {
		byName[name] = p
	}
	entries, err := os.ReadDir(linksDir(d.root))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("list pinned links: %w", err)
	}
	var errs []error
	tcxDevices := map[uint32]bool{}
	for _, e := range entries {
		pin := filepath.Join(linksDir(d.root), e.Name())
		ifindex, err := reattachLink(pin, byName, &st)
		if err != nil {
			errs = append(errs, err)
		}
		tcxDevices[ifindex] = true
	}
	errs = append(errs, d.reattachLegacy(tcxDevices, &st))
	return st, errors.Join(errs...)
}

// reattachLink updates one pinned link and returns its tc device's
// ifindex (0 for other links).
func reattachLink(pin string, byName map[string]*ebpf.Program, st *ReattachStats) (uint32, error) {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return 0, fmt.Errorf("open pinned link %s: %w", pin, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return 0, fmt.Errorf("read pinned link %s: %w", pin, err)
	}
	var ifindex uint32
	if tcx := info.TCX(); tcx != nil {
		if tcx.Ifindex == 0 {
			st.Stale++
			return 0, l.Unpin()
		}
		ifindex = tcx.Ifindex
	}
	if x := info.XDP(); x != nil && x.Ifindex == 0 {
		st.Stale++
		return 0, l.Unpin()
	}
	cur, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return ifindex, fmt.Errorf("open the program of link %s: %w", pin, err)
	}
	defer cur.Close()
	pi, err := cur.Info()
	if err != nil {
		return ifindex, fmt.Errorf("read the program of link %s: %w", pin, err)
	}
	next := byName[pi.Name]
	if next == nil {
		return ifindex, fmt.Errorf("link %s runs program %q, which this datapath does not have", pin, pi.Name)
	}
	nextInfo, err := next.Info()
	if err != nil {
		return ifindex, fmt.Errorf("read program %s: %w", pi.Name, err)
	}
	if id, ok := nextInfo.ID(); ok && id == info.Program {
		st.Current++
		return ifindex, nil
	}
	if err := l.Update(next); err != nil {
		return ifindex, fmt.Errorf("swap %s into link %s: %w", pi.Name, pin, err)
	}
	st.Updated++
	return ifindex, nil
}

// reattachLegacy replaces Sluice's cls_bpf filters on local endpoints'
// veths that have no tcx link (kernels before 6.6).
func (d *Datapath) reattachLegacy(tcxDevices map[uint32]bool, st *ReattachStats) error {
	var (
		key  EndpointKey
		val  EndpointValue
		errs []error
		seen = map[uint32]bool{}
	)
	it := d.Endpoints.Iterate()
	for it.Next(&key, &val) {
		if tcxDevices[val.Ifindex] || seen[val.Ifindex] {
			continue
		}
		seen[val.Ifindex] = true
		filters, err := netlink.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: int(val.Ifindex)}}, ingressHook.parent)
		if err != nil {
			continue // the veth is gone; the CNI's DEL forgets it
		}
		if !slices.ContainsFunc(filters, func(f netlink.Filter) bool { return f.Attrs().Handle == legacyHandle }) {
			continue
		}
		for _, h := range []struct {
			hook hook
			prog *ebpf.Program
		}{{ingressHook, d.FromPod}, {egressHook, d.ToPod}} {
			if err := attachLegacy(int(val.Ifindex), h.hook, h.prog); err != nil {
				errs = append(errs, err)
				continue
			}
			st.Updated++
		}
	}
	if err := it.Err(); err != nil {
		errs = append(errs, fmt.Errorf("walk endpoints: %w", err))
	}
	return errors.Join(errs...)
}
