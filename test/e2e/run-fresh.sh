#!/usr/bin/env bash
# run-fresh.sh UP_FLAG ENV TESTS [go test args...]: brings up a local
# cluster with `localcluster up UP_FLAG`, runs the e2e tests matching TESTS
# against it with ENV=1 set (the tests that need that layout check it), and
# removes the cluster afterwards, pass or fail. Used by run-overlay.sh,
# run-dsr.sh and run-xdp.sh; refused while another local cluster is up.
set -euo pipefail
cd "$(dirname "$0")/../.."

up_flag=$1 env_var=$2 tests=$3
shift 3
lc() { go run ./hack/localcluster "$@"; }
if [ -e /run/sluice-localcluster/state.json ]; then
	echo "$(basename "$0") $up_flag: a local cluster is already up; take it down first (go run ./hack/localcluster down)" >&2
	exit 1
fi
trap 'lc down' EXIT
lc up "$up_flag"
export SLUICE_E2E_KUBECONFIG=/run/sluice-localcluster/admin.kubeconfig
export SLUICE_E2E_DRIVER=/run/sluice-localcluster/bin/localcluster
export "$env_var=1"
go test -tags e2e -count=1 -v -timeout 20m ./test/e2e/ -run "$tests" "$@"
