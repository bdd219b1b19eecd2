package nodestate

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.json")
	if _, err := Read(path); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing file: %v", err)
	}
	if err := Write(path, State{Ready: false}); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(path); !errors.Is(err, ErrNotReady) {
		t.Errorf("not ready: %v", err)
	}
	if err := Write(path, State{Ready: true, PodCIDRs: []string{"10.244.0.0/24"}}); err != nil {
		t.Fatal(err)
	}
	s, err := Read(path)
	if err != nil || len(s.PodCIDRs) != 1 {
		t.Errorf("ready: %+v %v", s, err)
	}
	if err := os.WriteFile(path, []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(path); err == nil || !strings.Contains(err.Error(), "not valid JSON") {
		t.Errorf("corrupt file: %v", err)
	}
}
