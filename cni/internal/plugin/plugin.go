// Package plugin implements the Sluice CNI commands (ADD, DEL, CHECK, GC,
// STATUS) on top of netconf, ipam, netsetup and the pinned datapath.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/cni/internal/ipam"
	"github.com/sluice-net/sluice/cni/internal/netconf"
	"github.com/sluice-net/sluice/cni/internal/netsetup"
	"github.com/sluice-net/sluice/internal/endpointapi"
	"github.com/sluice-net/sluice/internal/nodestate"
)

// How long ADD waits for the agent to program a pod's policy, and DEL and
// STATUS for its answer. A runtime retries an ADD that fails with "try
// again later".
const (
	policyTimeout = 10 * time.Second
	agentTimeout  = 2 * time.Second
)

// k8sArgs are the CNI_ARGS a Kubernetes runtime passes.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE types.UnmarshallableString // field names are the CNI_ARGS keys
	K8S_POD_NAME      types.UnmarshallableString
}

// podEndpoint names the pod being wired, for the agent.
func podEndpoint(args *skel.CmdArgs, addrs []netip.Addr) (endpointapi.Endpoint, error) {
	var k k8sArgs
	if err := types.LoadArgs(args.Args, &k); err != nil {
		return endpointapi.Endpoint{}, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_ARGS: %v", err), "")
	}
	return endpointapi.Endpoint{Namespace: string(k.K8S_POD_NAMESPACE), Name: string(k.K8S_POD_NAME),
		ContainerID: args.ContainerID, Addrs: addrs}, nil
}

// Error codes beyond the spec's, in its plugin-specific range (100+).
const ErrAddressPoolExhausted uint = 100

// Funcs wires the commands for skel.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: Add, Del: Del, Check: Check, GC: GC, Status: Status}
}

// load parses the configuration and opens the log. Every command starts here.
func load(args *skel.CmdArgs, cmd string) (*netconf.Config, *slog.Logger, func(), error) {
	conf, err := netconf.Parse(args.StdinData)
	if err != nil {
		var ce *netconf.Error
		if errors.As(err, &ce) {
			return nil, nil, nil, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
		}
		return nil, nil, nil, types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	var out io.Writer = os.Stderr // never stdout: it carries the result
	closeLog := func() {}
	if err := os.MkdirAll(filepath.Dir(conf.LogFile), 0o755); err == nil {
		if f, err := os.OpenFile(conf.LogFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			out, closeLog = f, func() { f.Close() }
		}
	}
	log := slog.New(slog.NewJSONHandler(out, nil)).With("cmd", cmd, "network", conf.Name,
		"containerID", args.ContainerID, "ifName", args.IfName)
	return conf, log, closeLog, nil
}

// openPool opens the network's address store; failing that is an I/O error.
func openPool(conf *netconf.Config) (*ipam.Pool, error) {
	pool, err := ipam.Open(conf.IPAMDir, conf.Name)
	if err != nil {
		return nil, types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	return pool, nil
}

// loadWithPool is load plus the network's address store, for the commands
// that start from the allocations (DEL, GC); done releases both.
func loadWithPool(args *skel.CmdArgs, cmd string) (*netconf.Config, *slog.Logger, *ipam.Pool, func(), error) {
	conf, log, closeLog, err := load(args, cmd)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	pool, err := openPool(conf)
	if err != nil {
		closeLog()
		return nil, nil, nil, nil, err
	}
	return conf, log, pool, func() { pool.Close(); closeLog() }, nil
}

func attachMode(s string) bpf.AttachMode {
	switch s {
	case "tcx":
		return bpf.AttachTCX
	case "legacy":
		return bpf.AttachLegacy
	}
	return bpf.AttachAuto
}

// podMTU returns the configured MTU, else the one the agent published
// (its uplinks' MTU), else netconf.DefaultMTU.
func podMTU(conf *netconf.Config) (int, error) {
	if conf.MTU != 0 {
		return conf.MTU, nil
	}
	state, err := nodestate.Read(conf.NodeStateFile)
	if err != nil {
		return 0, err
	}
	switch {
	case state.PodMTU == 0:
		return netconf.DefaultMTU, nil
	case state.PodMTU < netconf.MinMTU || state.PodMTU > netconf.MaxMTU:
		return 0, fmt.Errorf("podMTU %d in %s is outside %d..%d: set mtu in the CNI configuration, or the uplinks' MTU",
			state.PodMTU, conf.NodeStateFile, netconf.MinMTU, netconf.MaxMTU)
	}
	return state.PodMTU, nil
}

// podCIDRs returns the configured CIDRs, else the ones the agent published.
func podCIDRs(conf *netconf.Config) ([]netip.Prefix, error) {
	if len(conf.PodCIDRs) > 0 {
		return netconf.ParseCIDRs("podCIDRs", conf.PodCIDRs)
	}
	state, err := nodestate.Read(conf.NodeStateFile)
	if err != nil {
		return nil, err
	}
	cidrs, err := netconf.ParseCIDRs("podCIDRs in "+conf.NodeStateFile, state.PodCIDRs)
	if err != nil {
		return nil, err
	}
	if len(cidrs) == 0 {
		return nil, fmt.Errorf("%w: %s lists no pod CIDRs (is Node.spec.podCIDRs set?)", nodestate.ErrNotReady, conf.NodeStateFile)
	}
	return cidrs, nil
}

func notReady(err error) error {
	return types.NewError(types.ErrTryAgainLater, err.Error(), "")
}

// Add wires a pod: addresses, veth, routes, programs, endpoint entries. A
// failure part way undoes everything done so far.
func Add(args *skel.CmdArgs) (err error) {
	start := time.Now()
	conf, log, closeLog, err := load(args, "ADD")
	if err != nil {
		return err
	}
	defer closeLog()
	defer func() {
		if err != nil {
			log.Error("ADD failed", "err", err)
		} else {
			log.Info("pod wired", "netns", args.Netns, "took", time.Since(start))
		}
	}()

	cidrs, err := podCIDRs(conf)
	if err != nil {
		return notReady(err)
	}
	dp, err := bpf.OpenPinned(conf.BPFRoot)
	if err != nil {
		return notReady(fmt.Errorf("%w: %v", nodestate.ErrNotReady, err))
	}
	defer dp.Close()

	pool, err := openPool(conf)
	if err != nil {
		return err
	}
	defer pool.Close()
	addrs, err := pool.Allocate(args.ContainerID, args.IfName, cidrs)
	if err != nil {
		if errors.Is(err, ipam.ErrExhausted) {
			return types.NewError(ErrAddressPoolExhausted, err.Error(), "")
		}
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	hostVeth := netsetup.HostVethName(args.ContainerID, args.IfName)
	defer func() {
		if err != nil {
			undo(log, conf, pool, dp, args, hostVeth, addrs)
		}
	}()

	mtu, err := podMTU(conf)
	if err != nil {
		return err
	}
	pod := netsetup.Pod{NetNS: args.Netns, IfName: args.IfName, HostVeth: hostVeth, MTU: mtu, Addrs: addrs}
	wired, err := netsetup.Setup(pod)
	if err != nil {
		return err
	}
	if err := dp.AttachPod(hostVeth, attachMode(conf.AttachMode)); err != nil {
		return fmt.Errorf("attach datapath to %s: %w", hostVeth, err)
	}
	var v bpf.EndpointValue
	copy(v.Mac[:], wired.PodMAC)
	copy(v.HostMac[:], wired.HostMAC)
	if err := dp.RecordEndpoint(uint32(wired.HostIndex), addrs, v); err != nil {
		return fmt.Errorf("record the pod in the datapath: %w", err)
	}
	// The pod's first packet must meet its policy: the agent programs it
	// now, from its caches and the pod's labels, before the pod can run.
	ep, err := podEndpoint(args, addrs)
	if err != nil {
		return err
	}
	ep.NetnsCookie = wired.NetnsCookie
	ctx, cancel := context.WithTimeout(context.Background(), policyTimeout)
	defer cancel()
	if err := endpointapi.NewClient(conf.AgentSocket).Ensure(ctx, ep); err != nil {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("NetworkPolicy of pod %s/%s not programmed, so the pod may not start yet: %v", ep.Namespace, ep.Name, err), "")
	}
	return types.PrintResult(result(conf, args, pod, wired), conf.CNIVersion)
}

func result(conf *netconf.Config, args *skel.CmdArgs, pod netsetup.Pod, w *netsetup.Wired) *current.Result {
	r := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: pod.HostVeth, Mac: w.HostMAC.String()},
			{Name: pod.IfName, Mac: w.PodMAC.String(), Sandbox: args.Netns, Mtu: pod.MTU},
		},
		DNS: conf.DNS,
	}
	for _, a := range pod.Addrs {
		gw := netsetup.GatewayV4
		if a.Is6() {
			gw = netsetup.GatewayV6
		}
		r.IPs = append(r.IPs, &current.IPConfig{
			Interface: current.Int(1),
			Address:   net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())},
			Gateway:   gw.AsSlice(),
		})
		def := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if a.Is6() {
			def = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		r.Routes = append(r.Routes, &types.Route{Dst: *def, GW: gw.AsSlice()})
	}
	return r
}

// undo removes everything an attachment may have: used by a failed ADD
// and by DEL. Each step tolerates what is already gone.
func undo(log *slog.Logger, conf *netconf.Config, pool *ipam.Pool, dp *bpf.Datapath, args *skel.CmdArgs, hostVeth string, addrs []netip.Addr) []error {
	var errs []error
	if dp != nil {
		// The entries name the veth whose source-check slot is freed.
		var ifindex uint32
		for _, a := range addrs {
			var v bpf.EndpointValue
			if dp.Endpoints.Lookup(bpf.EndpointKey{Addr: bpf.Addr(a)}, &v) == nil {
				ifindex = v.Ifindex
			}
		}
		if err := dp.ForgetEndpoint(ifindex, addrs); err != nil {
			errs = append(errs, err)
		}
		if err := dp.ForgetPodSockets(addrs); err != nil {
			errs = append(errs, err)
		}
	}
	// Deleting the veth detaches its programs with it; unpinning the dead
	// links afterwards is then cheap, where detaching first would wait for
	// an RCU grace period per hook.
	if err := netsetup.Teardown(hostVeth); err != nil {
		errs = append(errs, err)
	}
	if err := bpf.DetachPod(conf.BPFRoot, hostVeth); err != nil {
		errs = append(errs, err)
	}
	if _, err := pool.Release(args.ContainerID, args.IfName); err != nil {
		errs = append(errs, err)
	}
	for _, e := range errs {
		log.Warn("cleanup step failed", "err", e)
	}
	return errs
}

// Del releases the attachment. It succeeds for unknown containers, missing
// namespaces and repeated calls.
func Del(args *skel.CmdArgs) (err error) {
	conf, log, pool, done, err := loadWithPool(args, "DEL")
	if err != nil {
		return err
	}
	defer done()
	addrs := pool.Addresses(args.ContainerID, args.IfName)
	// Without a datapath (agent gone, node torn down) there is no endpoint
	// entry to remove; the rest of the cleanup still runs.
	dp, dpErr := bpf.OpenPinned(conf.BPFRoot)
	if dpErr == nil {
		defer dp.Close()
	}
	if errs := undo(log, conf, pool, dp, args, netsetup.HostVethName(args.ContainerID, args.IfName), addrs); len(errs) > 0 {
		return errors.Join(errs...)
	}
	// Best effort: the agent forgets a pod the API never showed running.
	if ep, err := podEndpoint(args, addrs); err == nil && ep.Namespace != "" {
		ctx, cancel := context.WithTimeout(context.Background(), agentTimeout)
		if err := endpointapi.NewClient(conf.AgentSocket).Forget(ctx, ep); err != nil {
			log.Debug("agent not told of the pod's removal", "err", err)
		}
		cancel()
	}
	log.Info("pod released", "addresses", addrs)
	return nil
}

// Check verifies that the attachment is wired as ADD left it.
func Check(args *skel.CmdArgs) error {
	conf, log, closeLog, err := load(args, "CHECK")
	if err != nil {
		return err
	}
	defer closeLog()
	if conf.RawPrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid network config: prevResult: missing; CHECK needs the result of ADD", "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
	}
	var addrs []netip.Addr
	for _, ipc := range prev.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			addrs = append(addrs, a.Unmap())
		}
	}
	hostVeth := netsetup.HostVethName(args.ContainerID, args.IfName)
	var problems []error
	if err := netsetup.Check(netsetup.Pod{NetNS: args.Netns, IfName: args.IfName, HostVeth: hostVeth, Addrs: addrs}); err != nil {
		problems = append(problems, err)
	}
	dp, err := bpf.OpenPinned(conf.BPFRoot)
	if err != nil {
		problems = append(problems, err)
	} else {
		defer dp.Close()
		problems = append(problems, checkDatapath(dp, hostVeth, addrs)...)
	}
	if err := errors.Join(problems...); err != nil {
		log.Warn("CHECK failed", "err", err)
		return err
	}
	return nil
}

func checkDatapath(dp *bpf.Datapath, hostVeth string, addrs []netip.Addr) []error {
	var problems []error
	if a, err := dp.Attached(hostVeth); err == nil {
		if !a.FromPodIngress {
			problems = append(problems, fmt.Errorf("from_pod is not attached to %s ingress", hostVeth))
		}
		if !a.ToPodEgress {
			problems = append(problems, fmt.Errorf("to_pod is not attached to %s egress", hostVeth))
		}
	}
	for _, a := range addrs {
		var v bpf.EndpointValue
		if err := dp.Endpoints.Lookup(bpf.EndpointKey{Addr: bpf.Addr(a)}, &v); err != nil {
			problems = append(problems, fmt.Errorf("endpoint entry for %s is missing", a))
			continue
		}
		if l, err := net.InterfaceByName(hostVeth); err == nil && int(v.Ifindex) != l.Index {
			problems = append(problems, fmt.Errorf("endpoint entry for %s points at ifindex %d, want %d (%s)", a, v.Ifindex, l.Index, hostVeth))
		}
	}
	return problems
}

// GC releases every allocation, endpoint entry, host veth and link pin that
// no valid attachment accounts for.
func GC(args *skel.CmdArgs) error {
	conf, log, pool, done, err := loadWithPool(args, "GC")
	if err != nil {
		return err
	}
	defer done()
	if err := pool.GC(conf.ValidAttachments); err != nil {
		return err
	}
	valid := map[string]bool{}
	for _, a := range conf.ValidAttachments {
		valid[netsetup.HostVethName(a.ContainerID, a.IfName)] = true
	}
	var errs []error
	veths, err := netsetup.HostVeths()
	if err != nil {
		errs = append(errs, err)
	}
	removed := 0
	for _, v := range veths {
		if valid[v] {
			continue
		}
		errs = append(errs, netsetup.Teardown(v), bpf.DetachPod(conf.BPFRoot, v))
		removed++
	}
	if dp, err := bpf.OpenPinned(conf.BPFRoot); err == nil {
		defer dp.Close()
		stale, err := staleEndpoints(dp, pool)
		errs = append(errs, err)
		for _, k := range stale {
			errs = append(errs, dp.Endpoints.Delete(k))
		}
		sockets, err := staleSocketEntries(dp, pool)
		errs = append(errs, err, dp.ForgetPodSockets(sockets))
		log.Info("garbage collected", "hostVeths", removed, "endpoints", len(stale), "socketLBPods", len(sockets))
	}
	errs = append(errs, bpf.PruneLinkPins(conf.BPFRoot, func(ifname string) bool { return valid[ifname] }))
	return errors.Join(errs...)
}

// staleEndpoints are endpoint entries whose address is no longer allocated.
func staleEndpoints(dp *bpf.Datapath, pool *ipam.Pool) ([]bpf.EndpointKey, error) {
	allocated, err := pool.Allocated()
	if err != nil {
		return nil, err
	}
	var stale []bpf.EndpointKey
	var k bpf.EndpointKey
	var v bpf.EndpointValue
	it := dp.Endpoints.Iterate()
	for it.Next(&k, &v) {
		if !allocated[bpf.AddrFrom(k.Addr)] {
			stale = append(stale, k)
		}
	}
	return stale, it.Err()
}

// staleSocketEntries are the addresses of socket LB entries no longer
// allocated.
func staleSocketEntries(dp *bpf.Datapath, pool *ipam.Pool) ([]netip.Addr, error) {
	allocated, err := pool.Allocated()
	if err != nil {
		return nil, err
	}
	entries, err := dp.PodSocketEntries()
	if err != nil {
		return nil, err
	}
	var stale []netip.Addr
	for _, e := range entries {
		for _, a := range e.Addrs {
			if !allocated[a] {
				stale = append(stale, a)
			}
		}
	}
	return stale, nil
}

// Status succeeds once the agent has signalled a programmed datapath and
// answers that it can enforce policy: pods started without it would run
// unprotected.
func Status(args *skel.CmdArgs) error {
	conf, _, closeLog, err := load(args, "STATUS")
	if err != nil {
		return err
	}
	defer closeLog()
	if _, err := nodestate.Read(conf.NodeStateFile); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	dp, err := bpf.OpenPinned(conf.BPFRoot)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("datapath not ready: %v", err), "")
	}
	dp.Close()
	ctx, cancel := context.WithTimeout(context.Background(), agentTimeout)
	defer cancel()
	if err := endpointapi.NewClient(conf.AgentSocket).Ready(ctx); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("the agent cannot program NetworkPolicy for new pods: %v", err), "")
	}
	return nil
}
