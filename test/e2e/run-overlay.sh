#!/usr/bin/env bash
# Runs the e2e tests of pod, Service, NodePort and policy traffic on a
# local cluster in routingMode vxlan whose nodes sit on two subnets the
# underlay routes between (it knows no pod CIDR): only the overlay carries
# pods' traffic between nodes. The cluster is brought up for the run and
# removed afterwards, pass or fail. An agent restart is among the tests.
# Extra arguments go to `go test`.
exec "$(dirname "$0")/run-fresh.sh" --overlay SLUICE_E2E_OVERLAY \
	'TestOverlayNetwork|TestPodToPod|TestPodToOutsideMasqueraded|TestClusterIPFromEveryNode|TestSessionAffinity|TestServiceWithoutEndpointsRejects|TestHairpin|TestHostNetworkToClusterIP|TestNodePortFromOutside|TestNodePortFromInside|TestLargeUDPThroughNodePort|TestLoadBalancerSourceRanges|TestHostPort|TestNetworkPolicy$|TestNetworkPolicyEgress|TestAgentRestartKeepsConnections' "$@"
