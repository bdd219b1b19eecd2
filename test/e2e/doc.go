// Package e2e holds Sluice's end-to-end tests. They build only with the e2e
// tag and run against a live cluster of at least two nodes, the local one
// (go run ./hack/localcluster up) or kind, through two variables:
//
//	SLUICE_E2E_KUBECONFIG  admin kubeconfig of the cluster
//	SLUICE_E2E_DRIVER      executable that reaches into the nodes:
//	                         DRIVER exec NAMESPACE/POD -- CMD [ARGS...]
//	                         DRIVER outside -- CMD [ARGS...]  (a host on the node network, outside every node)
//	                         DRIVER restart-agent NODE  (returns once the new agent is ready)
//
// go test runs in this directory, so give both as absolute paths:
//
//	SLUICE_E2E_KUBECONFIG=... SLUICE_E2E_DRIVER=... go test -tags e2e -count=1 -v ./test/e2e/
//
// Without SLUICE_E2E_KUBECONFIG every test skips.
package e2e
