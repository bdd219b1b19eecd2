#!/usr/bin/env bash
# Runs the e2e tests of traffic from outside, pods and policy on a local
# cluster whose agents run XDP (acceleration native) under loadBalancerMode
# snat: flows from outside to a backend on another node are masqueraded
# and sent on by XDP, and their replies sent back by it. The cluster is
# brought up for the run and removed afterwards, pass or fail. Agent
# restarts are among the tests. Extra arguments go to `go test`.
exec "$(dirname "$0")/run-fresh.sh" --xdp SLUICE_E2E_XDP \
	'TestXDPMasquerade|TestPodToPod|TestNodePortFromOutside|TestNodePortFromInside|TestLargeUDPThroughNodePort|TestLoadBalancerSourceRanges|TestUnservedFrontendPortsDropped|TestHostPort|TestAgentRestartKeepsConnections' "$@"
