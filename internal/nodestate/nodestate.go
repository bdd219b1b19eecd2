// Package nodestate is the contract between the agent and the CNI plugin:
// a small JSON file in which the agent publishes that the node's datapath
// is programmed, the node's pod CIDRs for IPAM and the MTU pods get.
package nodestate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// DefaultPath is where the agent publishes the state unless configured.
const DefaultPath = "/run/sluice/node.json"

// State is what the agent publishes for the CNI plugin.
type State struct {
	// Ready is true once the datapath is loaded and programmed.
	Ready bool `json:"ready"`
	// PodCIDRs are the node's Node.spec.podCIDRs.
	PodCIDRs []string `json:"podCIDRs"`
	// PodMTU is the MTU pods get unless the CNI configuration sets one:
	// the smallest MTU of the node's uplinks, less any encapsulation
	// (none with native routing). 0: not known (no uplink).
	PodMTU int `json:"podMTU,omitempty"`
}

// ErrNotReady means the agent has not (yet) signalled a ready datapath.
var ErrNotReady = errors.New("datapath not ready")

// Read reads the agent's state file. It wraps ErrNotReady when the
// file is missing or says the datapath is not ready.
func Read(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist; the Sluice agent writes it once the node's datapath is programmed", ErrNotReady, path)
	}
	if err != nil {
		return nil, fmt.Errorf("read node state %s: %w", path, err)
	}
	s := &State{}
	if err := json.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("node state %s is not valid JSON: %w", path, err)
	}
	if !s.Ready {
		return nil, fmt.Errorf("%w: %s says the agent has not finished programming the datapath", ErrNotReady, path)
	}
	return s, nil
}

// Write writes the state file atomically (the agent's side).
func Write(path string, s State) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create node state directory: %w", err)
	}
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write node state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace node state %s: %w", path, err)
	}
	return nil
}
