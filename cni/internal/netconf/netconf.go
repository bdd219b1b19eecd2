// Package netconf parses and validates the Sluice CNI configuration and
// reads the node state the agent publishes.
package netconf

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/sluice-net/sluice/internal/endpointapi"
	"github.com/sluice-net/sluice/internal/nodestate"
)

// Defaults for fields the configuration leaves out.
const (
	DefaultMTU           = 1500
	MinMTU, MaxMTU       = 576, 65535
	DefaultBPFRoot       = "/sys/fs/bpf/sluice"
	DefaultNodeStateFile = nodestate.DefaultPath
	DefaultIPAMDir       = "/var/lib/sluice/ipam"
	DefaultLogFile       = "/var/log/sluice/cni.log"
	DefaultAgentSocket   = endpointapi.DefaultSocket
)

// Config is the plugin's entry in the network configuration list.
type Config struct {
	types.PluginConf

	// MTU of the pod interface and its host-side peer; 0 takes the one
	// the agent publishes in the node state (derived from the uplinks),
	// else DefaultMTU.
	MTU int `json:"mtu,omitempty"`
	// BPFRoot is the bpffs directory the agent pinned the datapath under.
	BPFRoot string `json:"bpfRoot,omitempty"`
	// NodeStateFile is where the agent publishes readiness and the node's
	// pod CIDRs.
	NodeStateFile string `json:"nodeStateFile,omitempty"`
	// IPAMDir holds the address allocations, one directory per network.
	IPAMDir string `json:"ipamDir,omitempty"`
	// PodCIDRs, when set, override the CIDRs from the node state file.
	PodCIDRs []string `json:"podCIDRs,omitempty"`
	// LogFile receives the plugin's log; stdout carries only the result.
	LogFile string `json:"logFile,omitempty"`
	// AttachMode is "auto" (tcx, else legacy tc), "tcx" or "legacy".
	AttachMode string `json:"attachMode,omitempty"`
	// AgentSocket is the agent's endpoint API: ADD returns only once the
	// agent has programmed the new pod's NetworkPolicy there.
	AgentSocket string `json:"agentSocket,omitempty"`
}

// Error is a configuration error naming the field at fault.
type Error struct {
	Field, Problem string
}

func (e *Error) Error() string {
	return fmt.Sprintf("invalid network config: %s: %s", e.Field, e.Problem)
}

// Parse decodes and validates the plugin configuration, filling defaults.
func Parse(data []byte) (*Config, error) {
	c := &Config{}
	if err := json.Unmarshal(data, c); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, &Error{Field: te.Field, Problem: fmt.Sprintf("want a JSON %s, got %s", te.Type, te.Value)}
		}
		return nil, fmt.Errorf("decode network config: %w", err)
	}
	if c.MTU != 0 && (c.MTU < MinMTU || c.MTU > MaxMTU) {
		return nil, &Error{Field: "mtu", Problem: fmt.Sprintf("%d is outside %d..%d", c.MTU, MinMTU, MaxMTU)}
	}
	if c.Name == "" {
		return nil, &Error{Field: "name", Problem: "missing; the network needs a name"}
	}
	setDefault(&c.BPFRoot, DefaultBPFRoot)
	setDefault(&c.NodeStateFile, DefaultNodeStateFile)
	setDefault(&c.IPAMDir, DefaultIPAMDir)
	setDefault(&c.LogFile, DefaultLogFile)
	setDefault(&c.AttachMode, "auto")
	setDefault(&c.AgentSocket, DefaultAgentSocket)
	switch c.AttachMode {
	case "auto", "tcx", "legacy":
	default:
		return nil, &Error{Field: "attachMode", Problem: fmt.Sprintf("%q is not one of auto, tcx, legacy", c.AttachMode)}
	}
	if _, err := ParseCIDRs("podCIDRs", c.PodCIDRs); err != nil {
		return nil, err
	}
	return c, nil
}

func setDefault(s *string, def string) {
	if *s == "" {
		*s = def
	}
}

// ParseCIDRs parses pod CIDRs: at most one per family, each a network
// address with room for pods.
func ParseCIDRs(field string, cidrs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	seen := map[bool]bool{}
	for i, s := range cidrs {
		f := fmt.Sprintf("%s[%d]", field, i)
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, &Error{Field: f, Problem: fmt.Sprintf("%q is not a CIDR such as 10.244.1.0/24", s)}
		}
		if p != p.Masked() {
			return nil, &Error{Field: f, Problem: fmt.Sprintf("%s has host bits set; want %s", p, p.Masked())}
		}
		if bits := p.Addr().BitLen() - p.Bits(); bits < 2 {
			return nil, &Error{Field: f, Problem: fmt.Sprintf("%s is too small for pods", p)}
		}
		if seen[p.Addr().Is4()] {
			return nil, &Error{Field: f, Problem: "a second CIDR of the same family; want at most one IPv4 and one IPv6"}
		}
		seen[p.Addr().Is4()] = true
		out = append(out, p)
	}
	return out, nil
}
