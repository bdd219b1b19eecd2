package observeapi

import (
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestFlowFilterQueryRoundTrip(t *testing.T) {
	want := FlowFilter{
		Pod: "demo/client", Namespace: "demo", Service: "demo/web", Verdict: VerdictDropped,
		Since: time.Date(2026, 12, 1, 5, 0, 0, 123, time.UTC), Follow: true, Last: 20,
	}
	got, err := ParseFlowFilter(want.Query())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip: got %+v, want %+v", got, want)
	}
	if q := (FlowFilter{}).Query(); len(q) != 0 {
		t.Errorf("empty filter encodes as %q, want no parameters", q.Encode())
	}
}

func TestParseFlowFilterNamesTheBadParameter(t *testing.T) {
	for _, tc := range []struct{ query, want string }{
		{"verdict=denied", `verdict "denied"`},
		{"pod=client", `pod "client": want NAMESPACE/NAME`},
		{"service=a/b/c", `service "a/b/c"`},
		{"since=yesterday", `since "yesterday"`},
		{"follow=maybe", `follow "maybe"`},
		{"last=-1", `last "-1"`},
	} {
		q, _ := url.ParseQuery(tc.query)
		_, err := ParseFlowFilter(q)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.query, err, tc.want)
		}
	}
}

func TestFlowFilterMatch(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC)
	translated := Flow{
		Time: t0, Verdict: VerdictTranslated,
		Src: Addr{IP: "10.244.1.5", Pod: "demo/client"}, Dst: Addr{IP: "10.96.0.10"},
		Service: "demo/web:http", Backend: &Addr{IP: "10.244.2.7", Pod: "demo/web-1"},
	}
	dropped := Flow{
		Time: t0.Add(time.Second), Verdict: VerdictDropped,
		Src: Addr{IP: "10.244.1.6", Pod: "other/intruder"}, Dst: Addr{IP: "10.244.2.7", Pod: "demo/web-1"},
	}
	for _, tc := range []struct {
		name   string
		f      FlowFilter
		wantTr bool
		wantDr bool
	}{
		{"everything", FlowFilter{}, true, true},
		{"verdict", FlowFilter{Verdict: VerdictDropped}, false, true},
		{"source pod", FlowFilter{Pod: "demo/client"}, true, false},
		{"backend pod counts as a side", FlowFilter{Pod: "demo/web-1"}, true, true},
		{"namespace of either side", FlowFilter{Namespace: "other"}, false, true},
		{"namespace is not a prefix match of names", FlowFilter{Namespace: "dem"}, false, false},
		{"service with or without port", FlowFilter{Service: "demo/web"}, true, false},
		{"other service", FlowFilter{Service: "demo/we"}, false, false},
		{"since", FlowFilter{Since: t0.Add(time.Millisecond)}, false, true},
	} {
		if got := tc.f.Match(translated); got != tc.wantTr {
			t.Errorf("%s: Match(translated) = %v, want %v", tc.name, got, tc.wantTr)
		}
		if got := tc.f.Match(dropped); got != tc.wantDr {
			t.Errorf("%s: Match(dropped) = %v, want %v", tc.name, got, tc.wantDr)
		}
	}
}

func TestDecodeFlowsReportsABadLine(t *testing.T) {
	in := `{"verdict":"dropped","node":"n1"}` + "\n\n" + `{"verdict":"translated","node":"n2"}` + "\n" + "not json\n"
	var nodes []string
	err := DecodeFlows(strings.NewReader(in), func(f Flow) error {
		nodes = append(nodes, f.Node)
		return nil
	})
	if !reflect.DeepEqual(nodes, []string{"n1", "n2"}) {
		t.Errorf("decoded nodes %v, want [n1 n2]", nodes)
	}
	if err == nil || !strings.Contains(err.Error(), `not json`) {
		t.Errorf("error %v, want one quoting the bad line", err)
	}
}
