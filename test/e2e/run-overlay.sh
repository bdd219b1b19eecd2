#!/usr/bin/env bash
# Runs the e2e tests of pod, Service, NodePort and policy traffic on a
# local cluster in routingMode vxlan whose nodes sit on two subnets the
# underlay routes between (it knows no pod CIDR): only the overlay carries
# pods' traffic between nodes. The cluster is brought up for the run and
# removed afterwards, pass or fail. An agent restart is among the tests.
# Extra arguments go to `go test`.
set -euo pipefail
cd "$(dirname "$0")/../.."

lc() { go run ./hack/localcluster "$@"; }
if [ -e /run/sluice-localcluster/state.json ]; then
	echo "e2e-overlay: a local cluster is already up; take it down first (go run ./hack/localcluster down)" >&2
	exit 1
fi
trap 'lc down' EXIT
lc up --overlay
export SLUICE_E2E_KUBECONFIG=/run/sluice-localcluster/admin.kubeconfig
export SLUICE_E2E_DRIVER=/run/sluice-localcluster/bin/localcluster
export SLUICE_E2E_OVERLAY=1
go test -tags e2e -count=1 -v -timeout 20m ./test/e2e/ \
	-run 'TestOverlayNetwork|TestPodToPod|TestPodToOutsideMasqueraded|TestClusterIPFromEveryNode|TestSessionAffinity|TestServiceWithoutEndpointsRejects|TestHairpin|TestHostNetworkToClusterIP|TestNodePortFromOutside|TestNodePortFromInside|TestLargeUDPThroughNodePort|TestLoadBalancerSourceRanges|TestHostPort|TestNetworkPolicy$|TestNetworkPolicyEgress|TestAgentRestartKeepsConnections' "$@"
