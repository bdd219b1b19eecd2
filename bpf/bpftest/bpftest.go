// Package bpftest loads a throwaway datapath for tests outside package
// bpf: pinned under a fresh bpffs root that is removed when the test ends.
package bpftest

import (
	"testing"

	"github.com/sluice-net/sluice/bpf"
	"github.com/sluice-net/sluice/internal/testutil/bpffs"
)

// Load loads a datapath under a fresh root (cfg.PinRoot is set) with a
// small Maglev table unless cfg names one. It skips where BPF cannot load.
func Load(t testing.TB, cfg bpf.Config) *bpf.Datapath {
	t.Helper()
	bpffs.Require(t)
	cfg.PinRoot = bpffs.Root(t)
	if cfg.MaglevSize == 0 {
		cfg.MaglevSize = 251
	}
	dp, err := bpf.Load(cfg)
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}
