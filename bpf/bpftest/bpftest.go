// Package bpftest loads a throwaway datapath for tests outside package
// bpf: pinned under a fresh bpffs root that is removed when the test ends.
package bpftest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sluice-net/sluice/bpf"
)

// Require skips the test unless it can load BPF programs and pin to bpffs.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to load BPF programs and create namespaces (run the tests as root)")
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Skip("needs bpffs at /sys/fs/bpf (hack/install-deps.sh mounts it)")
	}
}

// Root returns a fresh pin root, removed (maps, programs, links) after the
// test.
func Root(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	root := filepath.Join("/sys/fs/bpf", "sluice-test-"+hex.EncodeToString(b))
	t.Cleanup(func() {
		if err := bpf.Remove(root); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return root
}

// Load loads a datapath under a fresh root (cfg.PinRoot is set) with a
// small Maglev table unless cfg names one.
func Load(t testing.TB, cfg bpf.Config) *bpf.Datapath {
	t.Helper()
	Require(t)
	cfg.PinRoot = Root(t)
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
