package main_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/sluice-net/sluice/internal/testutil/bpffs"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
	"github.com/sluice-net/sluice/manifests"
)

// The packet-rate topology: a client outside the cluster, the node under
// test, and the backends' node, each a network namespace of its own:
//
//	client eth0 192.168.90.2 -- 192.168.90.1 eth0  node-a  eth1 192.168.91.1 -- 192.168.91.2 eth0 node-b
//
// node-b holds pod CIDR 10.244.1.0/24 with the Service's one backend; an
// XDP program there counts and drops whatever arrives (it answers ARP), so
// the figure is what node-a forwarded, whatever form it took (Geneve under
// direct server return, masqueraded under SNAT).
const (
	prNodePort  = 30080
	prFlows     = 256 // source ports, each one established flow
	prFrameLen  = 60  // the smallest Ethernet frame (without FCS)
	prBatch     = 64  // frames per sendmmsg
	prRepeats   = 5
	prWarmup    = time.Second
	prDuration  = 4 * time.Second
	prIdleProbe = 2 * time.Second
)

var (
	prClient  = netip.MustParseAddr("192.168.90.2")
	prNodeA   = netip.MustParseAddr("192.168.90.1")
	prNodeB   = netip.MustParseAddr("192.168.91.2")
	prBackend = netip.MustParseAddr("10.244.1.10")
)

// A prMode is one way node-a serves the NodePort.
type prMode struct {
	name  string
	start func(*packetRate, *testing.B) (stop func())
}

// BenchmarkPacketRate floods a NodePort from outside with small UDP
// packets, from one CPU, and measures how many packets node-a forwards to
// the backend's node per second of CPU: Sluice in XDP (direct server
// return; native, and generic), Sluice's XDP masquerade (SNAT), Sluice in tc alone (SNAT),
// and kube-proxy in nftables mode, one after the other in one run, all
// fed by one kube-apiserver. The baseline is the same flood dropped by
// XDP as it reaches node-a: what sending and delivering a packet costs
// before any forwarding. Everything stays in the namespaces it creates.
//
//	SLUICE_K8S_BIN=$(hack/build-k8s.sh | tail -1) go test -run '^$' -bench PacketRate -benchtime 1x ./agent/ | go run ./hack/bench/packetrate
//
// Per mode it reports forwarded packets per second (<mode>-pps), the busy
// time of CPU 0 per forwarded packet, less its idle load (<mode>-ns/pkt:
// CPU 0 runs the flood and all the kernel does for it, everything else is
// pinned to CPU 1), and the share of it spent past the baseline
// (<mode>-fwd-ns/pkt), each the median of prRepeats floods.
func BenchmarkPacketRate(b *testing.B) {
	bpffs.Require(b)
	if runtime.NumCPU() < 2 {
		b.Skip("needs two CPUs: one floods, the other runs the control plane")
	}
	// Everything but the flood runs on CPU 1, so that CPU 0 does the
	// flood's work alone and its busy time is the figure.
	pinToCPU1(b, os.Getpid())
	pr := newPacketRate(b)
	modes := []prMode{
		{"baseline", (*packetRate).startBaseline},
		{"xdp-dsr", sluiceMode("native", "dsr")},
		{"xdp-generic-dsr", sluiceMode("generic", "dsr")},
		{"xdp-snat", sluiceMode("native", "snat")},
		{"tc-snat", sluiceMode("off", "snat")},
		{"nftables", (*packetRate).startKubeProxy},
	}
	var baseline float64
	for _, m := range modes {
		stop := m.start(pr, b)
		pr.waitForwarding(b, m.name)
		idle := pr.idleLoad(b)
		var pps, nsPerPkt, sentPPS []float64
		for range prRepeats {
			r := pr.flood(b, idle)
			pps, nsPerPkt, sentPPS = append(pps, r.pps), append(nsPerPkt, r.nsPerPkt), append(sentPPS, r.sentPPS)
		}
		stop()
		p, ns := prMedian(pps), prMedian(nsPerPkt)
		b.Logf("%-15s forwarded %6.3f Mpps (sent %6.3f), %6.0f ns of CPU per packet (runs: %v)",
			m.name, p/1e6, prMedian(sentPPS)/1e6, ns, prRound(nsPerPkt))
		b.ReportMetric(p, m.name+"-pps")
		b.ReportMetric(ns, m.name+"-ns/pkt")
		if m.name == "baseline" {
			baseline = ns
			continue
		}
		b.ReportMetric(ns-baseline, m.name+"-fwd-ns/pkt")
	}
}

type packetRate struct {
	client, nodeA, nodeB *netnstest.NS
	cp                   *controlPlane
	k8sBin, agentBin     string
	token                string
	sink                 *ebpf.Map // per-CPU count of frames that reached node-b
	sender               *floodSender
}

func newPacketRate(b *testing.B) *packetRate {
	pr := &packetRate{k8sBin: k8sBin(b)}
	pr.client = netnstest.New(b, "sl-pr-client")
	pr.nodeA = netnstest.New(b, "sl-pr-node-a")
	pr.nodeB = netnstest.New(b, "sl-pr-node-b")
	pr.nodeA.IP(b, "link", "set", "lo", "up")
	for _, l := range []struct {
		dev  string
		peer *netnstest.NS
	}{{"eth0", pr.client}, {"eth1", pr.nodeB}} {
		pr.nodeA.IP(b, "link", "add", l.dev, "type", "veth", "peer", "name", "eth0", "netns", l.peer.Name)
		pr.nodeA.IP(b, "link", "set", l.dev, "up")
		l.peer.IP(b, "link", "set", "eth0", "up")
	}
	pr.client.IP(b, "addr", "add", "192.168.90.2/24", "dev", "eth0")
	pr.nodeA.IP(b, "addr", "add", "192.168.90.1/24", "dev", "eth0")
	pr.nodeA.IP(b, "addr", "add", "192.168.91.1/24", "dev", "eth1")
	pr.nodeB.IP(b, "addr", "add", "192.168.91.2/24", "dev", "eth0")
	pr.nodeA.Sysctl(b, "net.ipv4.ip_forward=1")
	pr.nodeA.Sysctl(b, "net.ipv4.conf.all.rp_filter=0")

	pr.sink = prCounter(b)
	pr.attachCounter(b, pr.nodeB, "eth0")

	// The control plane runs in node-a, reachable on its loopback only.
	pr.cp = startControlPlane(b, pr.nodeA)
	for _, name := range []string{"etcd", "kube-apiserver"} {
		pinToCPU1(b, pidOf(b, filepath.Join(pr.k8sBin, name)))
	}
	pr.token = applyRBAC(b, pr.cp)
	pr.agentBin = filepath.Join(b.TempDir(), "sluice-agent")
	if out, err := exec.Command("go", "build", "-o", pr.agentBin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build agent: %v\n%s", err, out)
	}
	ctx := context.Background()
	for _, n := range []struct{ name, addr, cidr string }{
		{"node-a", prNodeA.String(), "10.244.0.0/24"}, {"node-b", prNodeB.String(), "10.244.1.0/24"},
	} {
		node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}, Spec: v1.NodeSpec{PodCIDR: n.cidr, PodCIDRs: []string{n.cidr}},
			Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: n.addr}}}}
		if _, err := pr.cp.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "flood"},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort, Ports: []v1.ServicePort{{Name: "udp", Port: 80,
			Protocol: v1.ProtocolUDP, TargetPort: intstr.FromInt32(8080), NodePort: prNodePort}}}}
	if _, err := pr.cp.client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	name, port, proto := "udp", int32(8080), v1.ProtocolUDP
	slice := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "flood-1", Labels: map[string]string{discovery.LabelServiceName: "flood"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
		Endpoints: []discovery.Endpoint{{Addresses: []string{prBackend.String()}, NodeName: ptr.To("node-b"),
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}}},
	}
	if _, err := pr.cp.client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	pr.sender = newFloodSender(b, pr.client, pr.nodeA)
	return pr
}

// startBaseline drops the flood with XDP as it reaches node-a, counting it.
func (pr *packetRate) startBaseline(b *testing.B) func() {
	detach := pr.attachCounter(b, pr.nodeA, "eth0")
	return detach
}

// sluiceMode runs the agent on node-a with the given acceleration and
// loadBalancerMode, and removes Sluice from the node afterwards
// (`sluice-agent cleanup`), as an operator switching modes would.
func sluiceMode(acceleration, lbMode string) func(*packetRate, *testing.B) func() {
	return func(pr *packetRate, b *testing.B) func() {
		dir := b.TempDir()
		kubeconfig := filepath.Join(dir, "agent.kubeconfig")
		writeKubeconfig(b, kubeconfig, pr.token)
		config := filepath.Join(dir, "agent.yaml")
		shipped, err := manifests.ConfigData("agent.yaml")
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(config, []byte(shipped), 0o600); err != nil {
			b.Fatal(err)
		}
		root := bpffs.Root(b)
		paths := []string{"--kubeconfig", kubeconfig, "--bpfRoot", root, "--nodeStateFile", filepath.Join(dir, "node.json"),
			"--endpointSocket", filepath.Join(dir, "agent.sock"), "--cniConfFile", filepath.Join(dir, "10-sluice.conflist")}
		agent := startProcess(b, pr.nodeA, dir, "sluice-agent", append([]string{"taskset", "-c", "1", pr.agentBin, "--config", config,
			"--nodeName", "node-a", "--maglevTableSize", "251",
			"--metricsAddr", "127.0.0.1:9962", "--healthAddr", "127.0.0.1:9963", "--logFormat", "text",
			"--proxyHealthAddr", "", "--observerSocket", "", "--observerAddr", "",
			"--socketLBCgroup", "", "--acceleration", acceleration, "--loadBalancerMode", lbMode}, paths...)...)
		metric := func(name string) (float64, bool) { return pr.agentMetric(b, name) }
		first := pr.sinkCount(b)
		if acceleration != "off" {
			eventually(b, "the agent reporting XDP on eth0 in mode "+acceleration, func() bool {
				v, ok := metric(`sluice_xdp_mode{device="eth0",mode="` + acceleration + `"}`)
				return ok && v == 1
			})
		}
		if acceleration != "off" {
			// A flow that begins before XDP knows node-b (its pod CIDR, a
			// resolved neighbour) stays on the tc path, as it should: let
			// the dsr controller sync and the managed entry resolve first.
			eventually(b, "the agent's dsr controller synced", func() bool {
				log, _ := os.ReadFile(filepath.Join(dir, "sluice-agent.log"))
				return strings.Contains(string(log), "nodes XDP sends flows on to updated")
			})
			eventually(b, "node-b's neighbour entry resolved", func() bool {
				out, _ := exec.Command("ip", "-n", pr.nodeA.Name, "neigh", "show", prNodeB.String()).CombinedOutput()
				return strings.Contains(string(out), "lladdr")
			})
		}
		return func() {
			// The figure is XDP's only if XDP sent the packets on.
			sent := map[string]string{"dsr": `sluice_dsr_packets_total{direction="sent"}`,
				"snat": `sluice_xdp_masquerade_packets_total{direction="forward"}`}[lbMode]
			if acceleration != "off" {
				fwd := float64(pr.sinkCount(b) - first)
				if v, _ := metric(sent); v < 0.99*fwd {
					b.Fatalf("%s/%s: node-b received %.0f packets, XDP sent on %.0f (%s)", acceleration, lbMode, fwd, v, sent)
				}
			}
			agent.stop()
			cmd := exec.Command(pr.agentBin, append([]string{"cleanup", "--config", config}, paths...)...)
			var out []byte
			pr.nodeA.Do(b, func() { out, err = cmd.CombinedOutput() })
			if err != nil {
				b.Fatalf("sluice-agent cleanup: %v\n%s", err, out)
			}
		}
	}
}

// startKubeProxy runs kube-proxy in nftables mode on node-a, with the
// route to node-b's pod CIDR a CNI plugin would add.
func (pr *packetRate) startKubeProxy(b *testing.B) func() {
	dir := b.TempDir()
	pr.nodeA.IP(b, "route", "replace", "10.244.1.0/24", "via", prNodeB.String())
	p := startProcess(b, pr.nodeA, dir, "kube-proxy", "taskset", "-c", "1", filepath.Join(pr.k8sBin, "kube-proxy"),
		"--kubeconfig", pr.cp.kubeconfig, "--hostname-override", "node-a", "--proxy-mode", "nftables",
		"--cluster-cidr", "10.244.0.0/16", "--conntrack-max-per-core", "0",
		"--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256")
	return func() {
		p.stop()
		pr.nodeA.IP(b, "route", "del", "10.244.1.0/24")
	}
}

// agentMetric reads one sample of the agent's /metrics on node-a.
func (pr *packetRate) agentMetric(b *testing.B, sample string) (float64, bool) {
	resp, err := pr.nodeA.HTTPClient(b).Get("http://127.0.0.1:9962/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}

// waitForwarding sends short bursts until they reach node-b (or, for the
// baseline, node-a's counter): the mode has programmed the NodePort.
func (pr *packetRate) waitForwarding(b *testing.B, mode string) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		before := pr.sinkCount(b)
		pr.sender.run(b, 100*time.Millisecond)
		time.Sleep(100 * time.Millisecond)
		if pr.sinkCount(b) > before {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: no packet reached the backend's node within 60s", mode)
		}
	}
}

// idleLoad is what CPU 0 does with nothing flooding (kernel threads,
// processes not pinned away), in CPU nanoseconds per second.
func (pr *packetRate) idleLoad(b *testing.B) float64 {
	before := busyCPU0(b)
	time.Sleep(prIdleProbe)
	return float64(busyCPU0(b)-before) / prIdleProbe.Seconds()
}

type floodResult struct{ pps, sentPPS, nsPerPkt float64 }

// flood runs one measured flood after a warm-up.
func (pr *packetRate) flood(b *testing.B, idle float64) floodResult {
	pr.sender.run(b, prWarmup)
	count0, cpu0, start := pr.sinkCount(b), busyCPU0(b), time.Now()
	sent := pr.sender.run(b, prDuration)
	time.Sleep(50 * time.Millisecond) // what is still in flight
	secs := time.Since(start).Seconds()
	fwd := float64(pr.sinkCount(b) - count0)
	cpu := float64(busyCPU0(b)-cpu0) - idle*secs
	if fwd == 0 {
		b.Fatalf("no packet of the flood reached the backend's node")
	}
	return floodResult{pps: fwd / prDuration.Seconds(), sentPPS: float64(sent) / prDuration.Seconds(), nsPerPkt: cpu / fwd}
}

// busyCPU0 is the time CPU 0 spent on anything but idling, in
// nanoseconds (/proc/stat counts in USER_HZ, 100 per second).
func busyCPU0(b *testing.B) uint64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "cpu0 ") {
			line = l
		}
	}
	f := strings.Fields(line) // cpu0 user nice system idle iowait irq softirq steal ...
	if len(f) < 9 {
		b.Fatalf("/proc/stat has no cpu0 line")
	}
	var ticks uint64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i > 7 { // guest time is already in user
			break
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			b.Fatalf("/proc/stat: %q", line)
		}
		ticks += n
	}
	return ticks * uint64(time.Second/100)
}

// pinToCPU1 moves every thread of a process to CPU 1; threads it starts
// later inherit that.
func pinToCPU1(b *testing.B, pid int) {
	if out, err := exec.Command("taskset", "-a", "-cp", "1", strconv.Itoa(pid)).CombinedOutput(); err != nil {
		b.Fatalf("taskset %d: %v\n%s", pid, err, out)
	}
}

// pidOf finds the process running exe.
func pidOf(b *testing.B, exe string) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && target == exe {
			return pid
		}
	}
	b.Fatalf("no process runs %s", exe)
	return 0
}

func prMedian(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func prRound(v []float64) []int {
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x + 0.5)
	}
	return out
}

// prCounter is the per-CPU count of frames the counting program dropped.
func prCounter(b *testing.B) *ebpf.Map {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "pr_count", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m
}

func (pr *packetRate) sinkCount(b *testing.B) uint64 {
	var per []uint64
	if err := pr.sink.Lookup(uint32(0), &per); err != nil {
		b.Fatal(err)
	}
	var n uint64
	for _, c := range per {
		n += c
	}
	return n
}

// attachCounter attaches, on dev in ns, an XDP program that passes ARP
// (so that the namespace answers for its address) and counts and drops
// every other frame.
func (pr *packetRate) attachCounter(b *testing.B, ns *netnstest.NS, dev string) (detach func()) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "pr_sink", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // data
			asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // data_end
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 14),
			asm.JGT.Reg(asm.R4, asm.R3, "count"),
			asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
			asm.JEq.Imm(asm.R5, int32(prHtons(unix.ETH_P_ARP)), "pass"),
			asm.StoreImm(asm.R10, -4, 0, asm.Word).WithSymbol("count"),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, pr.sink.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "drop"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 1).WithSymbol("drop"), // XDP_DROP
			asm.Return(),
			asm.Mov.Imm(asm.R0, 2).WithSymbol("pass"), // XDP_PASS
			asm.Return(),
		}})
	if err != nil {
		b.Fatalf("load the counting XDP program: %v", err)
	}
	defer prog.Close()
	var l link.Link
	ns.Do(b, func() {
		iface, ierr := net.InterfaceByName(dev)
		if ierr != nil {
			err = ierr
			return
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index, Flags: link.XDPDriverMode})
	})
	if err != nil {
		b.Fatalf("attach the counting XDP program to %s in %s: %v", dev, ns.Name, err)
	}
	var once sync.Once
	detach = func() { once.Do(func() { l.Close() }) }
	b.Cleanup(detach)
	return detach
}

func prHtons(v uint16) uint16 { return v<<8 | v>>8 }

// A floodSender sends the same prFlows UDP frames, round robin, from the
// client's eth0 through an AF_PACKET socket (past the qdisc), on one
// thread pinned to CPU 0: the flood and everything the kernel does for it
// on the way (veth delivery runs on the sending CPU) share that CPU.
type floodSender struct {
	fd   int
	msgs []prMmsghdr
	iovs []unix.Iovec
	buf  []byte
}

// prMmsghdr is struct mmsghdr.
type prMmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

func newFloodSender(b *testing.B, client, nodeA *netnstest.NS) *floodSender {
	var dstMAC, srcMAC net.HardwareAddr
	nodeA.Do(b, func() { dstMAC = prMAC(b, "eth0") })
	s := &floodSender{}
	var err error
	client.Do(b, func() {
		srcMAC = prMAC(b, "eth0")
		iface, ierr := net.InterfaceByName("eth0")
		if ierr != nil {
			err = ierr
			return
		}
		if s.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0); err != nil {
			return
		}
		if err = unix.SetsockoptInt(s.fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return
		}
		err = unix.Bind(s.fd, &unix.SockaddrLinklayer{Protocol: prHtons(unix.ETH_P_IP), Ifindex: iface.Index})
	})
	if err != nil {
		b.Fatalf("AF_PACKET socket in the client namespace: %v", err)
	}
	b.Cleanup(func() { unix.Close(s.fd) })
	s.buf = make([]byte, prFlows*prFrameLen)
	for i := range prFlows {
		prFrame(s.buf[i*prFrameLen:(i+1)*prFrameLen], dstMAC, srcMAC, uint16(10000+i))
	}
	s.iovs = make([]unix.Iovec, prFlows)
	for i := range s.iovs {
		s.iovs[i].Base = &s.buf[i*prFrameLen]
		s.iovs[i].SetLen(prFrameLen)
	}
	s.msgs = make([]prMmsghdr, prFlows)
	for i := range s.msgs {
		s.msgs[i].hdr.Iov = &s.iovs[i]
		s.msgs[i].hdr.SetIovlen(1)
	}
	return s
}

func prMAC(b *testing.B, dev string) net.HardwareAddr {
	iface, err := net.InterfaceByName(dev)
	if err != nil {
		b.Fatal(err)
	}
	return iface.HardwareAddr
}

// prFrame writes an Ethernet, IPv4 and UDP frame from the client to the
// NodePort, with the given source port (no UDP checksum, as IPv4 allows).
func prFrame(f []byte, dst, src net.HardwareAddr, sport uint16) {
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(len(f)-14))
	c, n := prClient.As4(), prNodeA.As4()
	copy(ip[12:16], c[:])
	copy(ip[16:20], n[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := f[34:42]
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], prNodePort)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(f)-34))
}

// run floods for d and returns how many frames the socket took.
func (s *floodSender) run(b *testing.B, d time.Duration) uint64 {
	var sent atomic.Uint64
	var failure error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // this thread is pinned below: Go retires it
		var cpu0 unix.CPUSet
		cpu0.Set(0)
		if err := unix.SchedSetaffinity(0, &cpu0); err != nil {
			failure = fmt.Errorf("pin the sender to CPU 0: %w", err)
			return
		}
		end := time.Now().Add(d)
		for next := 0; ; next = (next + prBatch) % prFlows {
			if next == 0 && !time.Now().Before(end) {
				return
			}
			n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd),
				uintptr(unsafe.Pointer(&s.msgs[next])), prBatch, 0, 0, 0)
			switch errno {
			case 0:
				sent.Add(uint64(n))
			case unix.ENOBUFS, unix.EAGAIN, unix.EINTR:
			default:
				failure = fmt.Errorf("sendmmsg: %w", errno)
				return
			}
		}
	}()
	<-done
	runtime.KeepAlive(s)
	if failure != nil {
		b.Fatal(failure)
	}
	return sent.Load()
}

// A process started in a namespace, stopped by its PID.
type prProcess struct {
	cmd  *exec.Cmd
	once sync.Once
}

func startProcess(b *testing.B, ns *netnstest.NS, dir, name string, argv ...string) *prProcess {
	p := &prProcess{cmd: start(b, ns, dir, name, argv...)}
	return p
}

func (p *prProcess) stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(unix.SIGTERM)
		done := make(chan struct{})
		go func() { _, _ = p.cmd.Process.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-done
		}
	})
}
