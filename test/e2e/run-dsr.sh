#!/usr/bin/env bash
# Runs the e2e tests of traffic from outside, pods and policy on a local
# cluster whose agents run XDP (acceleration native) with direct server
# return (loadBalancerMode dsr): flows from outside to a backend on another
# node are sent on by XDP and answered by the backend's node. The cluster
# is brought up for the run and removed afterwards, pass or fail. Agent
# restarts are among the tests. Extra arguments go to `go test`.
exec "$(dirname "$0")/run-fresh.sh" --dsr SLUICE_E2E_DSR \
	'TestDirectServerReturn|TestPodToPod|TestClusterIPFromEveryNode|TestNodePortFromOutside|TestNodePortFromInside|TestLargeUDPThroughNodePort|TestLoadBalancerSourceRanges|TestUnservedFrontendPortsDropped|TestHostPort|TestNetworkPolicy$|TestAgentRestartKeepsConnections' "$@"
