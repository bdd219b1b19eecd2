package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sluice-net/sluice/internal/observeapi"
)

var t0 = time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC)

func flowAt(node string, sec int) observeapi.Flow {
	return observeapi.Flow{Time: t0.Add(time.Duration(sec) * time.Second), Node: node}
}

func names(flows []observeapi.Flow) string {
	var s []string
	for _, fl := range flows {
		s = append(s, fmt.Sprintf("%s%d", fl.Node, fl.Time.Sub(t0)/time.Second))
	}
	return strings.Join(s, " ")
}

// runMerge merges in the background, collecting what it emits.
func runMerge(t *testing.T, n int, wait time.Duration) (chan<- mergeEvent, func() []observeapi.Flow, <-chan error) {
	t.Helper()
	events := make(chan mergeEvent)
	out := make(chan observeapi.Flow, 100)
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		done <- mergeFlows(ctx, events, n, wait, func(fl observeapi.Flow) error { out <- fl; return nil })
	}()
	got := func() []observeapi.Flow {
		var fs []observeapi.Flow
		for {
			select {
			case fl := <-out:
				fs = append(fs, fl)
			default:
				return fs
			}
		}
	}
	return events, got, done
}

// TestMergeEndedStreams: without --follow every stream ends; the merge is
// exact whatever order the flows arrive in across streams.
func TestMergeEndedStreams(t *testing.T) {
	events, got, done := runMerge(t, 3, -1)
	send := func(src int, fl observeapi.Flow) { events <- mergeEvent{src: src, flow: fl, at: time.Now()} }
	for i := range 3 {
		events <- mergeEvent{src: i, open: true}
	}
	// Node c sends everything first, then a, then b: each in its own order.
	for _, s := range []int{2, 5, 9} {
		send(2, flowAt("c", s))
	}
	for _, s := range []int{1, 4, 4, 10} {
		send(0, flowAt("a", s))
	}
	events <- mergeEvent{src: 2, end: true}
	for _, s := range []int{3, 6} {
		send(1, flowAt("b", s))
	}
	events <- mergeEvent{src: 0, end: true}
	events <- mergeEvent{src: 1, end: true}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if g, want := names(got()), "a1 c2 b3 a4 a4 c5 b6 c9 a10"; g != want {
		t.Errorf("merged %q, want %q", g, want)
	}
}

// TestMergeFollowedStreams: with --follow a flow is printed at once when
// every stream has a later one pending, and otherwise after waiting at
// most wait for a quiet stream, but never before every stream is open.
func TestMergeFollowedStreams(t *testing.T) {
	const wait = 150 * time.Millisecond
	events, got, done := runMerge(t, 2, wait)
	send := func(src int, fl observeapi.Flow) { events <- mergeEvent{src: src, flow: fl, at: time.Now()} }
	events <- mergeEvent{src: 0, open: true}
	send(0, flowAt("a", 5))
	time.Sleep(2 * wait)
	if g := names(got()); g != "" {
		t.Fatalf("emitted %q before stream b opened", g)
	}
	events <- mergeEvent{src: 1, open: true}
	send(1, flowAt("b", 3)) // b's buffered flows, older than a's
	send(1, flowAt("b", 7))
	time.Sleep(20 * time.Millisecond)
	if g, want := names(got()), "b3 a5"; g != want {
		t.Errorf("with both streams pending: %q, want %q", g, want)
	}
	// b7 waits for a; a stays quiet: b7 goes after wait.
	start := time.Now()
	deadline := start.Add(5 * wait)
	var g string
	for g == "" && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		g = names(got())
	}
	if g != "b7" || time.Since(start) < wait/2 {
		t.Errorf("quiet stream a: %q after %v, want b7 after about %v", g, time.Since(start), wait)
	}
	events <- mergeEvent{src: 0, end: true}
	send(1, flowAt("b", 8)) // the only live stream: at once
	time.Sleep(20 * time.Millisecond)
	if g := names(got()); g != "b8" {
		t.Errorf("only b live: %q, want b8 at once", g)
	}
	events <- mergeEvent{src: 1, end: true}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestMergeFailedStream: a stream that fails before opening holds no one.
func TestMergeFailedStream(t *testing.T) {
	events, got, done := runMerge(t, 2, time.Hour)
	events <- mergeEvent{src: 0, open: true}
	events <- mergeEvent{src: 0, flow: flowAt("a", 1), at: time.Now()}
	events <- mergeEvent{src: 1, end: true}
	events <- mergeEvent{src: 0, end: true}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if g := names(got()); g != "a1" {
		t.Errorf("got %q", g)
	}
}

func TestParseSince(t *testing.T) {
	now := t0
	for in, want := range map[string]time.Time{
		"5m":                   now.Add(-5 * time.Minute),
		"1h30m":                now.Add(-90 * time.Minute),
		"2026-11-30T10:00:00Z": time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC),
	} {
		got, err := parseSince(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("--since %s: %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"-5m", "yesterday", "5"} {
		if _, err := parseSince(in, now); err == nil || !strings.Contains(err.Error(), "--since") {
			t.Errorf("--since %s: %v, want an error naming --since", in, err)
		}
	}
}

func TestRemoteMode(t *testing.T) {
	for _, tc := range []struct {
		asked, socketFlag, socketExists, kubeconfig bool
		remote                                      bool
	}{
		{asked: true, socketExists: true, remote: true},
		{socketExists: true, kubeconfig: true, remote: false},
		{socketFlag: true, kubeconfig: true, remote: false},
		{kubeconfig: true, remote: true},
		{remote: false},
	} {
		if got := remoteMode(tc.asked, tc.socketFlag, tc.socketExists, tc.kubeconfig); got != tc.remote {
			t.Errorf("%+v: remote %v", tc, got)
		}
	}
}

func TestProxyURL(t *testing.T) {
	for _, tc := range []struct{ host, want string }{
		{"https://10.0.0.1:6443", "https://10.0.0.1:6443/api/v1/namespaces/sluice-system/pods/https:sluice-agent-x:4245/proxy/v1/flows?follow=true&verdict=dropped"},
		{"https://rancher.example/k8s/clusters/c-1/", "https://rancher.example/k8s/clusters/c-1/api/v1/namespaces/sluice-system/pods/https:sluice-agent-x:4245/proxy/v1/flows?follow=true&verdict=dropped"},
	} {
		base, err := url.Parse(tc.host)
		if err != nil {
			t.Fatal(err)
		}
		q := observeapi.FlowFilter{Verdict: observeapi.VerdictDropped, Follow: true}.Query()
		if got := proxyURL(base, "sluice-system", "sluice-agent-x", 4245, observeapi.PathFlows, q); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.host, got, tc.want)
		}
	}
}
