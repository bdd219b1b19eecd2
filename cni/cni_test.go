package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/bpf/bpftest"
	"github.com/sluice-net/sluice/internal/endpointapi"
	"github.com/sluice-net/sluice/internal/nodestate"
	"github.com/sluice-net/sluice/internal/testutil/netnstest"
	"github.com/sluice-net/sluice/manifests"
)

var binDir string

// TestMain builds the plugin binary once: the tests run it exactly as a
// container runtime does, through libcni.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-cni-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "sluice-cni"), ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build sluice-cni: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const (
	podCIDR4 = "10.244.1.0/24"
	podCIDR6 = "fd00:10:244:1::/64"
)

// node is one simulated node: its own network namespace, a datapath pinned
// under its own bpffs root (as the agent leaves it), the agent's state file
// and the shipped conflist pointed at all of these.
type node struct {
	t         testing.TB
	ns        *netnstest.NS
	dp        *bpf.Datapath
	dir       string
	stateFile string
	list      *libcni.NetworkConfigList
	raw       []byte
	cni       *libcni.CNIConfig
	agent     *standInAgent // nil with nodeOpts.noAgent
	podMTU    int
}

type nodeOpts struct {
	podCIDRs   []string // in the config, overriding the state file
	notReady   bool     // no state file
	attachMode string
	noAgent    bool // nothing answers on the agent's endpoint API socket
	podMTU     int  // the agent's published pod MTU (its uplinks'), 0: none
}

// standInAgent answers the agent's endpoint API for the plugin under test,
// records what the plugin asked and, as the agent does, enters the pod for
// socket LB; the agent's own side is tested in agent/ against a real API
// server.
type standInAgent struct {
	dp      *bpf.Datapath
	mu      sync.Mutex
	ensured []endpointapi.Endpoint
	refuse  error // when set, EnsureEndpoint fails with it
}

func (a *standInAgent) EnsureEndpoint(_ context.Context, ep endpointapi.Endpoint) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refuse != nil {
		return a.refuse
	}
	a.ensured = append(a.ensured, ep)
	return a.dp.ServePodSockets(ep.NetnsCookie, bpf.PodSockets{Addrs: ep.Addrs, On: true})
}

func (a *standInAgent) ForgetEndpoint(endpointapi.Endpoint) {}

func (a *standInAgent) Ready() (bool, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refuse != nil {
		return false, a.refuse.Error()
	}
	return true, ""
}

func (a *standInAgent) asked() []endpointapi.Endpoint {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.ensured)
}

func newNode(t testing.TB, o nodeOpts) *node {
	t.Helper()
	n := &node{t: t, dp: bpftest.Load(t, bpf.Config{}), ns: netnstest.New(t, "sl-node"), dir: t.TempDir(), podMTU: o.podMTU}
	root := n.dp.PinRoot()
	n.stateFile = filepath.Join(n.dir, "node.json")
	if !o.notReady {
		n.setReady(true)
	}
	n.ns.Sysctl(t, "net.ipv4.ip_forward=1")
	n.ns.Sysctl(t, "net.ipv6.conf.all.forwarding=1")
	// The node's own addresses, as a real node's uplink would have.
	n.ns.IP(t, "link", "set", "lo", "up")
	n.ns.IP(t, "addr", "add", "10.99.0.1/32", "dev", "lo")
	n.ns.IP(t, "addr", "add", "fd00:99::1/128", "dev", "lo")

	shipped, err := manifests.ConfigData("10-sluice.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var list map[string]any
	if err := json.Unmarshal([]byte(shipped), &list); err != nil {
		t.Fatal(err)
	}
	plugin := list["plugins"].([]any)[0].(map[string]any)
	plugin["bpfRoot"] = root
	plugin["nodeStateFile"] = n.stateFile
	plugin["ipamDir"] = filepath.Join(n.dir, "ipam")
	plugin["logFile"] = filepath.Join(n.dir, "cni.log")
	if o.podCIDRs != nil {
		plugin["podCIDRs"] = o.podCIDRs
	}
	if o.attachMode != "" {
		plugin["attachMode"] = o.attachMode
	}
	plugin["agentSocket"] = filepath.Join(n.dir, "agent.sock")
	if !o.noAgent {
		n.agent = &standInAgent{dp: n.dp}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- endpointapi.Serve(ctx, slog.New(slog.DiscardHandler), plugin["agentSocket"].(string), n.agent)
		}()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("stand-in agent: %v", err)
			}
		})
		waitForSocket(t, plugin["agentSocket"].(string))
	}
	n.raw, _ = json.Marshal(list)
	if n.list, err = libcni.ConfListFromBytes(n.raw); err != nil {
		t.Fatal(err)
	}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(n.dir, "cache"), nil)
	return n
}

func (n *node) setReady(ready bool) {
	n.t.Helper()
	if err := nodestate.Write(n.stateFile, nodestate.State{Ready: ready, PodCIDRs: []string{podCIDR4, podCIDR6}, PodMTU: n.podMTU}); err != nil {
		n.t.Fatal(err)
	}
}

// waitForSocket waits until something listens on the unix socket path.
func waitForSocket(t testing.TB, path string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s: %v", path, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rt is the runtime's view of a pod: its sandbox and, as the kubelet
// passes them, its namespace and name (here the container ID).
func rt(id string, pod *netnstest.NS) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: pod.Path(), IfName: "eth0",
		Args: [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", id}}}
}

// in runs fn in the node's namespace, where the runtime runs the plugin.
func (n *node) in(fn func()) { n.ns.Do(n.t, fn) }

func (n *node) add(id string, pod *netnstest.NS) (*current.Result, error) {
	var res types.Result
	var err error
	n.in(func() { res, err = n.cni.AddNetworkList(context.Background(), n.list, rt(id, pod)) })
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

func (n *node) mustAdd(id string, pod *netnstest.NS) *current.Result {
	n.t.Helper()
	r, err := n.add(id, pod)
	if err != nil {
		n.t.Fatalf("ADD %s: %v", id, err)
	}
	return r
}

func (n *node) del(id string, pod *netnstest.NS) (err error) {
	n.in(func() { err = n.cni.DelNetworkList(context.Background(), n.list, rt(id, pod)) })
	return err
}

func (n *node) check(id string, pod *netnstest.NS) (err error) {
	n.in(func() { err = n.cni.CheckNetworkList(context.Background(), n.list, rt(id, pod)) })
	return err
}

func podAddrs(r *current.Result) (v4, v6 netip.Addr) {
	for _, ipc := range r.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		if a.Unmap().Is4() {
			v4 = a.Unmap()
		} else {
			v6 = a
		}
	}
	return v4, v6
}

// TestTwoPodsTalk: two pods get addresses from the node's CIDRs, reach each
// other over TCP and UDP on both families, the node reaches both, and the
// programs are attached to both host veths.
func TestTwoPodsTalk(t *testing.T) {
	n := newNode(t, nodeOpts{})
	podA, podB := netnstest.New(t, "sl-pod"), netnstest.New(t, "sl-pod")
	ra := n.mustAdd("pod-a", podA)
	rb := n.mustAdd("pod-b", podB)

	a4, a6 := podAddrs(ra)
	b4, b6 := podAddrs(rb)
	for _, a := range []netip.Addr{a4, b4} {
		if !netip.MustParsePrefix(podCIDR4).Contains(a) {
			t.Errorf("IPv4 %v not from %s", a, podCIDR4)
		}
	}
	for _, a := range []netip.Addr{a6, b6} {
		if !netip.MustParsePrefix(podCIDR6).Contains(a) {
			t.Errorf("IPv6 %v not from %s", a, podCIDR6)
		}
	}
	if a4 == b4 || a6 == b6 {
		t.Fatalf("pods share an address: %v %v / %v %v", a4, b4, a6, b6)
	}
	if len(ra.Interfaces) != 2 || ra.Interfaces[1].Sandbox != podA.Path() || ra.Interfaces[1].Mtu != 1500 {
		t.Errorf("interfaces in result: %+v", ra.Interfaces)
	}

	n.in(func() {
		for _, r := range []*current.Result{ra, rb} {
			host := r.Interfaces[0].Name
			a, err := n.dp.Attached(host)
			if err != nil || !a.FromPodIngress || !a.ToPodEgress {
				t.Errorf("programs on %s: %+v, %v", host, a, err)
			}
		}
	})
	for _, a := range []netip.Addr{a4, a6, b4, b6} {
		var v bpf.EndpointValue
		if err := n.dp.Endpoints.Lookup(bpf.EndpointKey{Addr: bpf.Addr(a)}, &v); err != nil {
			t.Errorf("no endpoint entry for %v: %v", a, err)
		}
	}
	if err := n.check("pod-a", podA); err != nil {
		t.Errorf("CHECK of a healthy pod: %v", err)
	}

	podB.ServeWhoAmI(t, 7777)
	for _, dst := range []netip.Addr{b4, b6} {
		to := netip.AddrPortFrom(dst, 7777)
		for _, network := range []string{"tcp", "udp"} {
			if got := podA.WhoAmI(t, network, to); got != addrOf(a4, a6, dst) {
				t.Errorf("pod A -> %v over %s: %q", to, network, got)
			}
		}
		// The node itself reaches the pod (kubelet probes do this).
		nodeAddr := addrOf(netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("fd00:99::1"), dst)
		if got := n.ns.WhoAmI(t, "tcp", to); got != nodeAddr {
			t.Errorf("node -> %v over TCP: %q", to, got)
		}
	}
}

func addrOf(v4, v6, like netip.Addr) string {
	if like.Is4() {
		return v4.String()
	}
	return v6.String()
}

// TestCheckNamesWhatIsMissing: CHECK fails, naming the missing piece.
func TestCheckNamesWhatIsMissing(t *testing.T) {
	n := newNode(t, nodeOpts{})
	pod := netnstest.New(t, "sl-pod")
	r := n.mustAdd("pod-c", pod)
	a4, _ := podAddrs(r)
	host := r.Interfaces[0].Name

	if err := n.dp.Endpoints.Delete(bpf.EndpointKey{Addr: bpf.Addr(a4)}); err != nil {
		t.Fatal(err)
	}
	n.in(func() {
		if err := bpf.DetachPod(n.dp.PinRoot(), host); err != nil {
			t.Fatal(err)
		}
	})
	pod.IP(t, "addr", "del", a4.String()+"/32", "dev", "eth0")
	err := n.check("pod-c", pod)
	for _, want := range []string{
		"endpoint entry for " + a4.String() + " is missing",
		"from_pod is not attached to " + host + " ingress",
		"to_pod is not attached to " + host + " egress",
		"address " + a4.String() + " is missing on pod interface eth0",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CHECK error %v; want it to say %q", err, want)
		}
	}
}

// TestDelIsIdempotent: DEL succeeds twice, for unknown containers and for a
// pod whose namespace is already gone, and leaves nothing behind.
func TestDelIsIdempotent(t *testing.T) {
	n := newNode(t, nodeOpts{})
	pod := netnstest.New(t, "sl-pod")
	r := n.mustAdd("pod-d", pod)
	for i := range 2 {
		if err := n.del("pod-d", pod); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if err := n.del("never-added", pod); err != nil {
		t.Errorf("DEL of an unknown container: %v", err)
	}
	gone := &netnstest.NS{Name: "sl-missing-netns"}
	if err := n.del("pod-e", gone); err != nil {
		t.Errorf("DEL with a missing netns: %v", err)
	}
	n.assertClean(t)
	_ = r
}

// assertClean checks that the node holds no pod state: no host veths, no
// endpoint entries, no address allocations, no link pins.
func (n *node) assertClean(t *testing.T) {
	t.Helper()
	n.in(func() {
		out, _ := exec.Command("ip", "-o", "link", "show", "type", "veth").CombinedOutput()
		if strings.Contains(string(out), " sl") {
			t.Errorf("host veths left behind:\n%s", out)
		}
	})
	var k bpf.EndpointKey
	var v bpf.EndpointValue
	left := 0
	it := n.dp.Endpoints.Iterate()
	for it.Next(&k, &v) {
		left++
	}
	if left != 0 {
		t.Errorf("%d endpoint entries left behind", left)
	}
	if sockets, err := n.dp.PodSocketEntries(); err != nil || len(sockets) != 0 {
		t.Errorf("socket LB entries left behind: %v (%v)", sockets, err)
	}
	ipam, _ := os.ReadDir(filepath.Join(n.dir, "ipam", "sluice"))
	for _, e := range ipam {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			t.Errorf("address allocation left behind: %s", e.Name())
		}
	}
	pins, _ := os.ReadDir(filepath.Join(n.dp.PinRoot(), "links"))
	if len(pins) != 0 {
		t.Errorf("%d link pins left behind", len(pins))
	}
}

// TestStatus: STATUS fails with code 50 until the agent signals a ready
// datapath.
func TestStatus(t *testing.T) {
	n := newNode(t, nodeOpts{notReady: true})
	var err error
	n.in(func() { err = n.cni.GetStatusNetworkList(context.Background(), n.list) })
	var terr *types.Error
	if err == nil || !asTypesError(err, &terr) || terr.Code != 50 || !strings.Contains(terr.Msg, "datapath not ready") {
		t.Fatalf("STATUS before the agent is ready: %v, want code 50 'datapath not ready'", err)
	}
	n.setReady(true)
	n.in(func() { err = n.cni.GetStatusNetworkList(context.Background(), n.list) })
	if err != nil {
		t.Errorf("STATUS once ready: %v", err)
	}
	n.agent.mu.Lock()
	n.agent.refuse = errors.New("informer caches not synced")
	n.agent.mu.Unlock()
	n.in(func() { err = n.cni.GetStatusNetworkList(context.Background(), n.list) })
	if err == nil || !asTypesError(err, &terr) || terr.Code != 50 || !strings.Contains(terr.Msg, "cannot program NetworkPolicy") {
		t.Errorf("STATUS while the agent cannot enforce: %v, want code 50 saying so", err)
	}
}

// TestAddWaitsForPolicy: ADD returns only after the agent has programmed
// the pod's policy, and has asked for exactly this pod, its addresses and
// its network namespace.
func TestAddWaitsForPolicy(t *testing.T) {
	n := newNode(t, nodeOpts{})
	pod := netnstest.New(t, "sl-pod")
	r := n.mustAdd("web-1", pod)
	v4, v6 := podAddrs(r)
	asked := n.agent.asked()
	var cookie uint64
	pod.Do(t, func() {
		var err error
		if cookie, err = bpf.NetnsCookie(); err != nil {
			t.Fatal(err)
		}
	})
	if len(asked) != 1 || asked[0].Namespace != "default" || asked[0].Name != "web-1" || asked[0].ContainerID != "web-1" ||
		!slices.Contains(asked[0].Addrs, v4) || !slices.Contains(asked[0].Addrs, v6) || asked[0].NetnsCookie != cookie {
		t.Fatalf("the agent was asked for %+v, want default/web-1 with %v and %v in netns %#x", asked, v4, v6, cookie)
	}
	if err := n.del("web-1", pod); err != nil {
		t.Fatal(err)
	}
	n.assertClean(t)
}

// TestAddFailsWithoutPolicy: with the agent absent, or refusing, ADD fails
// with "try again later" (code 11) saying why, and leaves nothing behind:
// a pod that started anyway would run unprotected.
func TestAddFailsWithoutPolicy(t *testing.T) {
	for _, c := range []struct {
		name string
		opts nodeOpts
		msg  string
	}{
		{"agent absent", nodeOpts{noAgent: true}, "is sluice-agent running on this node?"},
		{"agent refuses", nodeOpts{}, "pod default/web-2 not in the informer cache"},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := newNode(t, c.opts)
			if n.agent != nil {
				n.agent.refuse = errors.New("pod default/web-2 not in the informer cache")
			}
			pod := netnstest.New(t, "sl-pod")
			_, err := n.add("web-2", pod)
			var terr *types.Error
			if err == nil || !asTypesError(err, &terr) || terr.Code != 11 || !strings.Contains(terr.Msg, "NetworkPolicy of pod default/web-2 not programmed") || !strings.Contains(terr.Msg, c.msg) {
				t.Fatalf("ADD: %v, want code 11 saying the policy is not programmed and %q", err, c.msg)
			}
			pod.Do(t, func() {
				if _, err := net.InterfaceByName("eth0"); err == nil {
					t.Error("failed ADD left eth0 in the pod")
				}
			})
			n.assertClean(t)
		})
	}
}

func asTypesError(err error, out **types.Error) bool {
	return errors.As(err, out)
}

// invoke runs the plugin as a runtime would, returning stdout and exit code.
func (n *node) invoke(t *testing.T, env []string, stdin []byte) (stdout string, code int) {
	t.Helper()
	n.in(func() {
		cmd := exec.Command(filepath.Join(binDir, "sluice-cni"))
		cmd.Env = append(env, "CNI_PATH="+binDir)
		cmd.Stdin = bytes.NewReader(stdin)
		var out bytes.Buffer
		cmd.Stdout = &out
		err := cmd.Run()
		stdout = out.String()
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	})
	return stdout, code
}

func pluginConf(t *testing.T, n *node, mutate func(map[string]any)) []byte {
	t.Helper()
	var list map[string]any
	_ = json.Unmarshal(n.raw, &list)
	conf := list["plugins"].([]any)[0].(map[string]any)
	conf["cniVersion"] = list["cniVersion"]
	conf["name"] = list["name"]
	if mutate != nil {
		mutate(conf)
	}
	b, _ := json.Marshal(conf)
	return b
}

// TestErrors: every bad input gets a spec-form error with the right code
// and a message naming the problem, on stdout, and nothing else there.
func TestErrors(t *testing.T) {
	n := newNode(t, nodeOpts{})
	pod := netnstest.New(t, "sl-pod")
	addEnv := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=err-1", "CNI_NETNS=" + pod.Path(), "CNI_IFNAME=eth0"}
	cases := []struct {
		name  string
		env   []string
		stdin []byte
		code  int
		msg   string
	}{
		{"bad JSON", addEnv, []byte(`{"cniVersion": "1.1.0", "name": `), 6, "unmarshal"},
		{"unsupported cniVersion", addEnv, pluginConf(t, n, func(c map[string]any) { c["cniVersion"] = "9.9.9" }), 1, "9.9.9"},
		{"missing CNI_NETNS", []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=err-1", "CNI_IFNAME=eth0"}, pluginConf(t, n, nil), 4, "CNI_NETNS"},
		{"mtu of the wrong type", addEnv, pluginConf(t, n, func(c map[string]any) { c["mtu"] = "big" }), 7, "mtu"},
		{"mtu out of range", addEnv, pluginConf(t, n, func(c map[string]any) { c["mtu"] = 100 }), 7, "mtu: 100 is outside"},
		{"bad pod CIDR", addEnv, pluginConf(t, n, func(c map[string]any) { c["podCIDRs"] = []string{"10.0.0.1/24"} }), 7, "podCIDRs[0]: 10.0.0.1/24 has host bits set"},
		{"unknown attach mode", addEnv, pluginConf(t, n, func(c map[string]any) { c["attachMode"] = "xdp" }), 7, "attachMode"},
		{"datapath not ready", addEnv, pluginConf(t, n, func(c map[string]any) { c["nodeStateFile"] = "/nonexistent/node.json" }), 11, "datapath not ready"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, code := n.invoke(t, c.env, c.stdin)
			if code == 0 {
				t.Fatalf("succeeded: %s", out)
			}
			var e types.Error
			if err := json.Unmarshal([]byte(out), &e); err != nil {
				t.Fatalf("stdout is not a CNI error: %q", out)
			}
			if int(e.Code) != c.code || !strings.Contains(e.Msg+" "+e.Details, c.msg) {
				t.Errorf("got code %d %q, want code %d mentioning %q", e.Code, e.Msg, c.code, c.msg)
			}
		})
	}
	n.assertClean(t)
}

// TestPodMTU: the shipped configuration sets no MTU, so a pod gets the
// one the agent publishes (its uplinks'), or 1500 when it publishes none;
// an mtu in the configuration wins.
func TestPodMTU(t *testing.T) {
	for _, c := range []struct {
		name           string
		published, set int
		want           int
	}{
		{"the agent's", 1450, 0, 1450},
		{"none published", 0, 0, 1500},
		{"the configuration's", 1450, 1400, 1400},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := newNode(t, nodeOpts{podMTU: c.published})
			if c.set != 0 {
				n.setMTU(c.set)
			}
			pod := netnstest.New(t, "sl-pod")
			res := n.mustAdd("mtu", pod)
			for _, i := range res.Interfaces {
				if i.Sandbox != "" && i.Mtu != c.want {
					t.Errorf("result: %s has MTU %d, want %d", i.Name, i.Mtu, c.want)
				}
			}
			var got int
			pod.Do(t, func() {
				l, err := net.InterfaceByName("eth0")
				if err != nil {
					t.Fatal(err)
				}
				got = l.MTU
			})
			if got != c.want {
				t.Errorf("the pod's eth0 has MTU %d, want %d", got, c.want)
			}
		})
	}
}

// TestPodMTUOutOfRange: a node state publishing an MTU no interface can
// have fails ADD, naming the file and what to set, and leaves nothing
// behind.
func TestPodMTUOutOfRange(t *testing.T) {
	n := newNode(t, nodeOpts{podMTU: 100})
	_, err := n.add("mtu", netnstest.New(t, "sl-pod"))
	if err == nil || !strings.Contains(err.Error(), "podMTU 100 in "+n.stateFile+" is outside 576..65535") {
		t.Fatalf("ADD with podMTU 100: %v, want the MTU refused", err)
	}
	n.assertClean(t)
}

// setMTU puts mtu into the node's CNI configuration.
func (n *node) setMTU(mtu int) {
	n.t.Helper()
	var list map[string]any
	if err := json.Unmarshal(n.raw, &list); err != nil {
		n.t.Fatal(err)
	}
	list["plugins"].([]any)[0].(map[string]any)["mtu"] = mtu
	var err error
	n.raw, _ = json.Marshal(list)
	if n.list, err = libcni.ConfListFromBytes(n.raw); err != nil {
		n.t.Fatal(err)
	}
}

// TestPoolExhausted: a full CIDR fails ADD with a clear error and leaves no
// half-wired pod behind.
func TestPoolExhausted(t *testing.T) {
	// A /30 holds one pod: network, gateway and broadcast are reserved.
	n := newNode(t, nodeOpts{podCIDRs: []string{"10.244.9.0/30"}})
	first := netnstest.New(t, "sl-pod")
	n.mustAdd("pod-1", first)
	second := netnstest.New(t, "sl-pod")
	_, err := n.add("pod-2", second)
	var terr *types.Error
	if err == nil || !asTypesError(err, &terr) || terr.Code != 100 || !strings.Contains(terr.Msg, "address pool exhausted") || !strings.Contains(terr.Msg, "10.244.9.0/30") {
		t.Fatalf("second ADD: %v, want code 100 naming the exhausted CIDR", err)
	}
	second.Do(t, func() {
		if _, err := net.InterfaceByName("eth0"); err == nil {
			t.Error("failed ADD left eth0 in the pod")
		}
	})
	if err := n.del("pod-1", first); err != nil {
		t.Fatal(err)
	}
	n.assertClean(t)
}

// TestGC: GC releases everything not in the valid attachments.
func TestGC(t *testing.T) {
	n := newNode(t, nodeOpts{})
	keep := netnstest.New(t, "sl-pod")
	n.mustAdd("keep", keep)
	for i := range 3 {
		n.mustAdd(fmt.Sprintf("stale-%d", i), netnstest.New(t, "sl-pod"))
	}
	var err error
	n.in(func() {
		err = n.cni.GCNetworkList(context.Background(), n.list, &libcni.GCArgs{
			ValidAttachments: []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}},
		})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if err := n.check("keep", keep); err != nil {
		t.Errorf("the valid pod broke: %v", err)
	}
	if sockets, err := n.dp.PodSocketEntries(); err != nil || len(sockets) != 1 {
		t.Errorf("socket LB entries after GC: %v (%v), want the valid pod's only", sockets, err)
	}
	if err := n.del("keep", keep); err != nil {
		t.Fatal(err)
	}
	n.assertClean(t)
}

// TestParallelAdds: concurrent ADDs get distinct addresses.
func TestParallelAdds(t *testing.T) {
	n := newNode(t, nodeOpts{})
	const pods = 20
	nss := make([]*netnstest.NS, pods)
	for i := range nss {
		nss[i] = netnstest.New(t, "sl-pod")
	}
	results := make([]*current.Result, pods)
	errs := make([]error, pods)
	var wg sync.WaitGroup
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = n.add(fmt.Sprintf("par-%d", i), nss[i])
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i, r := range results {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v", i, errs[i])
		}
		a4, a6 := podAddrs(r)
		seen[a4]++
		seen[a6]++
	}
	if len(seen) != 2*pods {
		t.Errorf("%d pods got %d distinct addresses, want %d", pods, len(seen), 2*pods)
	}
	for i := range pods {
		if err := n.del(fmt.Sprintf("par-%d", i), nss[i]); err != nil {
			t.Fatal(err)
		}
	}
	n.assertClean(t)
}

// TestChurn: many ADD/DEL cycles leak nothing.
func TestChurn(t *testing.T) {
	cycles := 1000
	if testing.Short() {
		cycles = 50
	}
	n := newNode(t, nodeOpts{})
	pod := netnstest.New(t, "sl-pod")
	for i := range cycles {
		id := fmt.Sprintf("churn-%d", i)
		if _, err := n.add(id, pod); err != nil {
			t.Fatalf("cycle %d ADD: %v", i, err)
		}
		if err := n.del(id, pod); err != nil {
			t.Fatalf("cycle %d DEL: %v", i, err)
		}
	}
	n.assertClean(t)
}

// TestLegacyAttach: with attachMode legacy the pod is wired through clsact
// filters and CHECK still recognises them.
func TestLegacyAttach(t *testing.T) {
	n := newNode(t, nodeOpts{attachMode: "legacy"})
	pod := netnstest.New(t, "sl-pod")
	r := n.mustAdd("legacy", pod)
	n.in(func() {
		out, _ := exec.Command("tc", "filter", "show", "dev", r.Interfaces[0].Name, "ingress").CombinedOutput()
		if !strings.Contains(string(out), "sluice_ingress") || !strings.Contains(string(out), "direct-action") {
			t.Errorf("no direct-action sluice filter on ingress:\n%s", out)
		}
	})
	if err := n.check("legacy", pod); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := n.del("legacy", pod); err != nil {
		t.Fatal(err)
	}
	n.assertClean(t)
}

// BenchmarkAddDel measures ADD and DEL latency as a runtime sees it:
// libcni exec of the binary through completion, with tcx and with legacy
// tc attachment.
//
//	go test -run '^$' -bench AddDel -benchtime 200x ./cni/
func BenchmarkAddDel(b *testing.B) {
	for _, mode := range []string{"tcx", "legacy"} {
		b.Run("attach="+mode, func(b *testing.B) {
			n := newNode(b, nodeOpts{attachMode: mode})
			pod := netnstest.New(b, "sl-pod")
			var adds, dels []time.Duration
			b.ResetTimer()
			for i := range b.N {
				id := fmt.Sprintf("bench-%d", i)
				start := time.Now()
				if _, err := n.add(id, pod); err != nil {
					b.Fatal(err)
				}
				mid := time.Now()
				if err := n.del(id, pod); err != nil {
					b.Fatal(err)
				}
				adds = append(adds, mid.Sub(start))
				dels = append(dels, time.Since(mid))
			}
			b.StopTimer()
			report := func(name string, ds []time.Duration) {
				slices.Sort(ds)
				b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, name+"-p50-ms")
				b.ReportMetric(float64(ds[len(ds)*99/100].Microseconds())/1000, name+"-p99-ms")
			}
			report("add", adds)
			report("del", dels)
		})
	}
}

// TestOlderSpecVersions: runtimes speaking CNI 0.4.0 or 1.0.0 get a result
// in their version, and DNS settings from the config come back in it.
func TestOlderSpecVersions(t *testing.T) {
	for _, v := range []string{"0.4.0", "1.0.0"} {
		t.Run(v, func(t *testing.T) {
			n := newNode(t, nodeOpts{})
			var list map[string]any
			_ = json.Unmarshal(n.raw, &list)
			list["cniVersion"] = v
			list["plugins"].([]any)[0].(map[string]any)["dns"] = map[string]any{"nameservers": []string{"10.96.0.10"}, "search": []string{"svc.cluster.local"}}
			raw, _ := json.Marshal(list)
			var err error
			if n.list, err = libcni.ConfListFromBytes(raw); err != nil {
				t.Fatal(err)
			}
			pod := netnstest.New(t, "sl-pod")
			var res types.Result
			n.in(func() { res, err = n.cni.AddNetworkList(context.Background(), n.list, rt("old-"+v, pod)) })
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if res.Version() != v {
				t.Errorf("result version %s, want %s", res.Version(), v)
			}
			cur, err := current.NewResultFromResult(res)
			if err != nil {
				t.Fatal(err)
			}
			if len(cur.IPs) != 2 || len(cur.DNS.Nameservers) != 1 || cur.DNS.Nameservers[0] != "10.96.0.10" {
				t.Errorf("result: IPs %v, DNS %+v", cur.IPs, cur.DNS)
			}
			if err := n.check("old-"+v, pod); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			if err := n.del("old-"+v, pod); err != nil {
				t.Fatal(err)
			}
			n.assertClean(t)
		})
	}
}
