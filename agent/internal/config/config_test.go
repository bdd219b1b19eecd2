package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
		{[]string{"--config", unknown}, `unknown field "maglevSize"`},
		{[]string{"--config", badDur}, `"soon" is not a duration`},
	} {
		_, err := Load(c.args)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want %q", c.args, err, c.want)
		}
	}
}
