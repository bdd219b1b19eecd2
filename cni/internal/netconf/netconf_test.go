package netconf

import (
	"errors"
	"strings"
	"testing"
)

func TestParseDefaults(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"sluice","type":"sluice-cni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.MTU != 0 || c.BPFRoot != DefaultBPFRoot || c.NodeStateFile != DefaultNodeStateFile ||
		c.IPAMDir != DefaultIPAMDir || c.LogFile != DefaultLogFile || c.AttachMode != "auto" {
		t.Errorf("defaults not applied: %+v", c)
	}
}

func TestParseNamesTheBadField(t *testing.T) {
	for _, c := range []struct {
		conf, field, problem string
	}{
		{`{"name":"n","mtu":"x"}`, "mtu", "want a JSON int"},
		{`{"name":"n","mtu":70000}`, "mtu", "outside 576..65535"},
		{`{"mtu":1500}`, "name", "missing"},
		{`{"name":"n","attachMode":"xdp"}`, "attachMode", `"xdp" is not one of`},
		{`{"name":"n","podCIDRs":["nope"]}`, "podCIDRs[0]", "not a CIDR"},
		{`{"name":"n","podCIDRs":["10.0.0.1/24"]}`, "podCIDRs[0]", "host bits set; want 10.0.0.0/24"},
		{`{"name":"n","podCIDRs":["10.0.0.0/31"]}`, "podCIDRs[0]", "too small"},
		{`{"name":"n","podCIDRs":["10.0.0.0/24","10.1.0.0/24"]}`, "podCIDRs[1]", "same family"},
	} {
		_, err := Parse([]byte(c.conf))
		var ce *Error
		if !errors.As(err, &ce) || ce.Field != c.field || !strings.Contains(ce.Problem, c.problem) {
			t.Errorf("%s: got %v, want field %q: %q", c.conf, err, c.field, c.problem)
		}
	}
	if _, err := Parse([]byte(`{"name":`)); err == nil || !strings.Contains(err.Error(), "decode network config") {
		t.Errorf("truncated JSON: %v", err)
	}
}
