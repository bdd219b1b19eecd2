package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluice-net/sluice/agent/internal/masq"
	"github.com/sluice-net/sluice/bpf"
)

func TestFileThenFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, []byte("nodeName: from-file\nk8sAPIServer: https://10.0.0.1:6443\nsyncMinInterval: 250ms\nmaglevTableSize: 1021\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load([]string{"--config", file, "--nodeName", "from-flag"})
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "from-flag" || c.K8sAPIServer != "https://10.0.0.1:6443" || c.SyncMinInterval.Duration != 250*time.Millisecond || c.MaglevTableSize != 1021 {
		t.Errorf("got %+v", c)
	}
	if c.BPFRoot != Default().BPFRoot {
		t.Errorf("default lost: bpfRoot %q", c.BPFRoot)
	}
}

func TestErrorsNameTheSetting(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "unknown.yaml")
	_ = os.WriteFile(unknown, []byte("nodeName: a\nmaglevSize: 3\n"), 0o644)
	badDur := filepath.Join(dir, "dur.yaml")
	_ = os.WriteFile(badDur, []byte("nodeName: a\nsyncMinInterval: soon\n"), 0o644)
	t.Setenv("NODE_NAME", "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "nodeName: missing"},
		{[]string{"--nodeName", "a", "--nodePortAddresses", "10.0.0.0/8,nope"}, `nodePortAddresses[1]: "nope" is not a CIDR`},
		{[]string{"--nodeName", "a", "--k8sServiceHost", "10.0.0.1"}, "k8sServiceHost and k8sServicePort"},
		{[]string{"--nodeName", "a", "--syncMinInterval", "2h"}, "syncMinInterval/syncMaxInterval"},
		{[]string{"--nodeName", "a", "--logFormat", "xml"}, `logFormat: "xml"`},
		{[]string{"--nodeName", "a", "--routingMode", "geneve"}, `routingMode: "geneve" is not native, vxlan or none`},
		{[]string{"--nodeName", "a", "--routingMode", "vxlan", "--nativeRouting=false"}, `routingMode: "vxlan" conflicts with nativeRouting: false`},
		{[]string{"--nodeName", "a", "--acceleration", "driver"}, `acceleration: "driver" is not native, generic or off`},
		{[]string{"--nodeName", "a", "--loadBalancerMode", "nat"}, `loadBalancerMode: "nat" is not snat or dsr`},
		{[]string{"--nodeName", "a", "--loadBalancerMode", "dsr"}, `loadBalancerMode: dsr needs acceleration native or generic`},
		{[]string{"--nodeName", "a", "--loadBalancerMode", "dsr", "--acceleration", "generic", "--routingMode", "none"}, `loadBalancerMode: dsr needs routingMode native or vxlan`},
		{[]string{"--config", unknown}, `unknown field "maglevSize"`},
		{[]string{"--config", badDur}, `"soon" is not a duration`},
		{[]string{"--nodeName", "a", "--maxServices", "-1"}, `"-1" is not a number`},
		{[]string{"--nodeName", "a", "--maxBackends", "5000000000"}, `"5000000000" is not a number`},
	} {
		_, err := Load(c.args)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want %q", c.args, err, c.want)
		}
	}
}

// TestRoutingMode: routingMode wins; the older nativeRouting: false still
// means no routes.
func TestRoutingMode(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, RoutingNative},
		{[]string{"--nativeRouting=false"}, RoutingNone},
		{[]string{"--routingMode", "vxlan"}, RoutingVXLAN},
		{[]string{"--routingMode", "none"}, RoutingNone},
	} {
		cfg, err := Load(append([]string{"--nodeName", "a"}, c.args...))
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if got := cfg.Routing(); got != c.want {
			t.Errorf("%v: routing %q, want %q", c.args, got, c.want)
		}
	}
}

// TestValidate: one case per rule, each wrong value named with what was
// expected; every setting of the datapath reaches Config.
func TestValidate(t *testing.T) {
	base := func() Config {
		c := Default()
		c.NodeName = "n"
		return c
	}
	if err := base().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, c := range []struct {
		name string
		edit func(*Config)
		want string // "" is valid
	}{
		{"maglev not prime", func(c *Config) { c.MaglevTableSize = 1000 }, "maglevTableSize: 1000; want a prime from 251 to 131071"},
		{"maglev too small", func(c *Config) { c.MaglevTableSize = 13 }, "maglevTableSize: 13; want a prime"},
		{"maglev too large", func(c *Config) { c.MaglevTableSize = 131101 }, "maglevTableSize: 131101; want a prime"},
		{"maglev smallest", func(c *Config) { c.MaglevTableSize = 251 }, ""},
		{"capacity zero", func(c *Config) { c.MaxServices = 0 }, "maxServices: 0 is outside 16..16777216"},
		{"capacity too small", func(c *Config) { c.MaxEndpoints = 15 }, "maxEndpoints: 15 is outside 16..16777216"},
		{"capacity too large", func(c *Config) { c.MaxPolicyRules = 1<<24 + 1 }, "maxPolicyRules: 16777217 is outside 16..16777216"},
		{"capacity bounds", func(c *Config) { c.MaxAffinity, c.MaxIPCache = 16, 1<<24 }, ""},
		{"policy CIDRs", func(c *Config) { c.MaxPolicyCIDRs = 1 }, "maxPolicyCIDRs: 1 is outside"},
		{"backends", func(c *Config) { c.MaxBackends = 2 }, "maxBackends: 2 is outside"},
		{"conntrack auto", func(c *Config) { c.MaxConntrackTCP, c.MaxConntrackOther = 0, 0 }, ""},
		{"conntrack too small", func(c *Config) { c.MaxConntrackOther = 8 }, "maxConntrackOther: 8 is outside 16..16777216 (or 0: sized to the node's memory)"},
		{"conntrack too large", func(c *Config) { c.MaxConntrackTCP = 1 << 25 }, "maxConntrackTCP: 33554432 is outside"},
		{"gc interval zero", func(c *Config) { c.CTGCInterval.Duration = 0 }, "conntrackGCInterval: 0s; want a positive duration"},
		{"gc interval negative", func(c *Config) { c.CTGCInterval.Duration = -time.Second }, "conntrackGCInterval: -1s; want a positive duration"},
		{"timeout zero", func(c *Config) { c.CTTimeoutTCP.Duration = 0 }, "conntrackTimeoutTCP: 0s; want a positive duration"},
		{"timeout under a second", func(c *Config) { c.CTTimeoutUnreplied.Duration = time.Millisecond }, "conntrackTimeoutUnreplied: 1ms; want at least 1s"},
		{"SYN after TCP", func(c *Config) { c.CTTimeoutSYN.Duration = 7 * time.Hour }, "conntrackTimeoutSYN: 7h0m0s is longer than conntrackTimeoutTCP (6h0m0s)"},
		{"close after TCP", func(c *Config) { c.CTTimeoutTCP.Duration = 5 * time.Second }, "conntrackTimeoutSYN: 30s is longer than conntrackTimeoutTCP (5s)"},
		{"close alone after TCP", func(c *Config) { c.CTTimeoutClose.Duration = 7 * time.Hour }, "conntrackTimeoutClose: 7h0m0s is longer than conntrackTimeoutTCP"},
		{"unreplied after other", func(c *Config) { c.CTTimeoutOther.Duration = 5 * time.Second }, "conntrackTimeoutUnreplied: 10s is longer than conntrackTimeoutOther (5s)"},
		{"equal timeouts", func(c *Config) { c.CTTimeoutUnreplied = c.CTTimeoutOther }, ""},
		{"sync negative", func(c *Config) { c.SyncMinInterval.Duration = -1 }, "syncMinInterval/syncMaxInterval"},
		{"node ports not a range", func(c *Config) { c.NodePortRange = "30000:32767" }, `nodePortRange: "30000:32767" is not a port range such as 30000-32767`},
		{"node ports reversed", func(c *Config) { c.NodePortRange = "32767-30000" }, `nodePortRange: "32767-30000" is not a port range`},
		{"node ports leave no room", func(c *Config) { c.NodePortRange = "1500-65535" }, "nodePortRange: NodePort range 1500-65535 leaves fewer than 1024 ports"},
		{"node ports high", func(c *Config) { c.NodePortRange = "40000-42767" }, ""},
		{"observer socket relative", func(c *Config) { c.ObserverSocket = "run/obs.sock" }, `observerSocket: "run/obs.sock"; want an absolute path`},
		{"observer off", func(c *Config) { c.ObserverSocket, c.ObserverAddr, c.ObserverServiceAccount = "", "", "" }, ""},
		{"observer addr without port", func(c *Config) { c.ObserverAddr = "10.0.0.1" }, `observerAddr: "10.0.0.1"; want a listen address such as :4245`},
		{"observer addr", func(c *Config) { c.ObserverAddr = "127.0.0.1:14245" }, ""},
		{"observer account", func(c *Config) { c.ObserverServiceAccount = "Not_A_Name" }, `observerServiceAccount: "Not_A_Name"; want a service account name`},
		{"observer account empty", func(c *Config) { c.ObserverServiceAccount = "" }, `observerServiceAccount: ""`},
		{"flow buffer zero", func(c *Config) { c.FlowBufferSize = 0 }, "flowBufferSize: 0 is outside 1..1048576"},
		{"flow buffer huge", func(c *Config) { c.FlowBufferSize = 1<<20 + 1 }, "flowBufferSize: 1048577 is outside"},
		{"flow events off", func(c *Config) { c.FlowEventRate, c.FlowEventBurst = 0, 0 }, ""},
		{"flow burst zero", func(c *Config) { c.FlowEventBurst = 0 }, "flowEventBurst: 0; want at least 1 while flowEventRate (1000) is not 0"},
	} {
		cfg := base()
		c.edit(&cfg)
		err := cfg.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v, want valid", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}

// TestDatapathKeys: every datapath capacity and timeout is a file key and
// a flag, and a flag overrides the file.
func TestDatapathKeys(t *testing.T) {
	file := filepath.Join(t.TempDir(), "agent.yaml")
	yaml := `nodeName: n
maxServices: 100
maxBackends: 200
maxConntrackTCP: 300
maxConntrackOther: 400
maxAffinity: 500
maxEndpoints: 600
maxIPCache: 700
maxPolicyCIDRs: 800
maxPolicyRules: 900
conntrackTimeoutSYN: 11s
conntrackTimeoutTCP: 2h
conntrackTimeoutClose: 12s
conntrackTimeoutOther: 90s
conntrackTimeoutUnreplied: 13s
conntrackGCInterval: 2m
`
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load([]string{"--config", file, "--maxPolicyRules", "901", "--conntrackTimeoutUnreplied", "14s"})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		MaxServices: 100, MaxBackends: 200, MaxConntrackTCP: 300, MaxConntrackOther: 400, MaxAffinity: 500,
		MaxEndpoints: 600, MaxIPCache: 700, MaxPolicyCIDRs: 800, MaxPolicyRules: 901,
		CTTimeoutSYN: Duration{11 * time.Second}, CTTimeoutTCP: Duration{2 * time.Hour}, CTTimeoutClose: Duration{12 * time.Second},
		CTTimeoutOther: Duration{90 * time.Second}, CTTimeoutUnreplied: Duration{14 * time.Second}, CTGCInterval: Duration{2 * time.Minute},
	}
	got := Config{
		MaxServices: c.MaxServices, MaxBackends: c.MaxBackends, MaxConntrackTCP: c.MaxConntrackTCP, MaxConntrackOther: c.MaxConntrackOther,
		MaxAffinity: c.MaxAffinity, MaxEndpoints: c.MaxEndpoints, MaxIPCache: c.MaxIPCache, MaxPolicyCIDRs: c.MaxPolicyCIDRs,
		MaxPolicyRules: c.MaxPolicyRules, CTTimeoutSYN: c.CTTimeoutSYN, CTTimeoutTCP: c.CTTimeoutTCP, CTTimeoutClose: c.CTTimeoutClose,
		CTTimeoutOther: c.CTTimeoutOther, CTTimeoutUnreplied: c.CTTimeoutUnreplied, CTGCInterval: c.CTGCInterval,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	// The datapath's own defaults hold where nothing is set, except
	// conntrack sizes: 0, sized to the node's memory at load.
	d, dp := Default(), bpf.DefaultConfig()
	if d.MaxAffinity != dp.MaxAffinity || d.MaxPolicyRules != dp.MaxPolicyRules || d.CTTimeoutUnreplied.Duration != dp.CTTimeoutUnreplied ||
		d.MaxConntrackTCP != 0 || d.MaxConntrackOther != 0 {
		t.Errorf("defaults %+v", d)
	}
}

func TestMasqueradePorts(t *testing.T) {
	c := Default()
	if p, err := c.MasqueradePorts(); err != nil || p != (masq.PortRange{Min: 32768, Max: 65535}) {
		t.Errorf("default: %v, %v", p, err)
	}
	c, err := Load([]string{"--nodeName", "n", "--nodePortRange", "40000-42767"})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := c.MasqueradePorts(); err != nil || p != (masq.PortRange{Min: 1024, Max: 39999}) {
		t.Errorf("40000-42767: %v, %v", p, err)
	}
}

// TestCleanupCommand: `sluice-agent cleanup` takes the agent's flags and
// config file, and needs no node name and no API server settings.
func TestCleanupCommand(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	c, err := Load([]string{"cleanup", "--bpfRoot", "/sys/fs/bpf/x", "--cniConfFile", "/etc/cni/net.d/x.conflist"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Command != "cleanup" || c.BPFRoot != "/sys/fs/bpf/x" || c.CNIConfFile != "/etc/cni/net.d/x.conflist" || c.NodeStateFile != Default().NodeStateFile {
		t.Errorf("got %+v", c)
	}
	if c, err := Load([]string{"--nodeName", "n"}); err != nil || c.Command != "" {
		t.Errorf("agent: %q, %v", c.Command, err)
	}
	if _, err := Load([]string{"cleanup", "--maglevTableSize", "1000"}); err == nil {
		t.Error("cleanup with a wrong setting: no error")
	}
	// The shipped config before the install fills in the API server's
	// host: the agent refuses it, cleanup does not need it.
	if _, err := Load([]string{"cleanup", "--k8sServicePort", "6443"}); err != nil {
		t.Errorf("cleanup with half the API settings: %v", err)
	}
	if _, err := Load([]string{"--nodeName", "n", "--k8sServicePort", "6443"}); err == nil {
		t.Error("agent with half the API settings: no error")
	}
}

// TestObserverKeys: the observer and flow event settings are file keys
// and flags with the documented defaults; 0 turns flow events off; the
// namespace comes from $POD_NAMESPACE.
func TestObserverKeys(t *testing.T) {
	d, dp := Default(), bpf.DefaultConfig()
	if d.ObserverSocket != "/run/sluice/observer.sock" || d.ObserverAddr != ":4245" || d.ObserverServiceAccount != "sluice-observer" ||
		d.FlowBufferSize != 4096 || d.FlowEventRate != dp.EventRate || d.FlowEventBurst != dp.EventBurst || d.Namespace != "sluice-system" {
		t.Errorf("defaults %+v", d)
	}
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, []byte("nodeName: n\nobserverSocket: \"\"\nobserverAddr: :14245\nobserverServiceAccount: watcher\nflowBufferSize: 100\nflowEventRate: 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("POD_NAMESPACE", "kube-system")
	c, err := Load([]string{"--config", file, "--flowEventBurst", "7", "--flowBufferSize", "200"})
	if err != nil {
		t.Fatal(err)
	}
	if c.ObserverSocket != "" || c.ObserverAddr != ":14245" || c.ObserverServiceAccount != "watcher" || c.FlowBufferSize != 200 ||
		c.FlowEventRate != 0 || c.FlowEventBurst != 7 || c.Namespace != "kube-system" {
		t.Errorf("loaded %+v", c)
	}
	if _, err := Load([]string{"--nodeName", "n", "--flowBufferSize", "lots"}); err == nil || !strings.Contains(err.Error(), `"lots" is not a number`) {
		t.Errorf("flowBufferSize lots: %v", err)
	}
}
