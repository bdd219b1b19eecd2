// Package e2e holds Sluice's end-to-end tests. They build only with the e2e
// tag and run against a live cluster of at least two nodes, the local one
// (go run ./hack/localcluster up) or kind, through two variables:
//
//	SLUICE_E2E_KUBECONFIG  admin kubeconfig of the cluster
//	SLUICE_E2E_DRIVER      executable that reaches into the nodes:
//	                         DRIVER exec NAMESPACE/POD -- CMD [ARGS...]
//	                         DRIVER outside -- CMD [ARGS...]  (a host on the node network, outside every node)
//	                         DRIVER restart-agent NODE  (returns once the new agent is ready)
//	                         DRIVER sluice NODE ARGS...  (the sluice CLI on NODE, asking its agent;
//	                                                      exits with the CLI's code)
//	                       and, for the faults only the local cluster injects:
//	                         DRIVER restart-agent --no-wait NODE  (returns once the new agent runs)
//	                         DRIVER stop-apiserver | start-apiserver  (start returns once it is ready)
//	                         DRIVER agent-ready NODE  (exit 0 if the agent answers /readyz; no API server needed)
//	                         DRIVER programs NAMESPACE/POD|NODE  (BPF programs on the pod's veth or the
//	                                                              node's uplink: lines "HOOK ID NAME")
//	                         DRIVER flood [--flows N] [--first-port P] NAMESPACE/POD|outside HOST:PORT
//	                                                              (N new TCP flows, one per source port)
//	                         DRIVER conntrack NODE  (the TCP conntrack map: "tcp entries=N capacity=M")
//	                       A driver that cannot do a command on its cluster exits 3 and
//	                       says why on stderr; the tests that need it skip.
//
// go test runs in this directory, so give both as absolute paths:
//
//	SLUICE_E2E_KUBECONFIG=... SLUICE_E2E_DRIVER=... go test -tags e2e -count=1 -v ./test/e2e/
//
// Without SLUICE_E2E_KUBECONFIG every test skips.
package e2e
