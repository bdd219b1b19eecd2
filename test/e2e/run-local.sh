#!/usr/bin/env bash
# Runs the e2e suite against the local cluster: a running one is reused
# and left up; otherwise a fresh one is brought up and removed afterwards,
# pass or fail. Extra arguments go to `go test` (e.g. -run TestHairpin).
set -euo pipefail
cd "$(dirname "$0")/../.."

lc() { go run ./hack/localcluster "$@"; }
state=/run/sluice-localcluster/state.json
if [ -e "$state" ]; then
	echo "e2e: using the local cluster that is already up" >&2
else
	trap 'lc down' EXIT
	lc up
fi
export SLUICE_E2E_KUBECONFIG=/run/sluice-localcluster/admin.kubeconfig
export SLUICE_E2E_DRIVER=/run/sluice-localcluster/bin/localcluster
go test -tags e2e -count=1 -v -timeout 20m ./test/e2e/ "$@"
