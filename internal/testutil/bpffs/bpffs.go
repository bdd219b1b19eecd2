// Package bpffs gives tests that load BPF programs what they need from the
// machine: a skip when they cannot (not root, no bpffs), and a throwaway
// pin root. It imports nothing of Sluice, so package bpf's own tests use
// it as well as everyone else's.
package bpffs

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
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

// Root returns a fresh pin root under /sys/fs/bpf, removed with all it
// holds (maps, programs, links) after the test.
func Root(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	root := filepath.Join("/sys/fs/bpf", "sluice-test-"+hex.EncodeToString(b))
	t.Cleanup(func() {
		if err := os.RemoveAll(root); err != nil {
			t.Errorf("cleanup of pin root %s: %v", root, err)
		}
	})
	return root
}
