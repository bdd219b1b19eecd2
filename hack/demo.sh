#!/usr/bin/env bash
# The demo: a local cluster with Sluice in place of kube-proxy, a sample
# app behind a Service, probes that show it working from both nodes, a
# NetworkPolicy that lets one client in and keeps the other out, and
# `sluice observe` showing the dropped and the allowed flows.
# Run as root from the repository (make demo); remove with make demo-down.
set -euo pipefail
cd "$(dirname "$0")/.."

lc() { go run ./hack/localcluster "$@"; }
if [ ! -e /run/sluice-localcluster/state.json ]; then
	lc up
fi
export KUBECONFIG=/run/sluice-localcluster/admin.kubeconfig
kubectl="$(./hack/build-k8s.sh 2>/dev/null | tail -n 1)/kubectl"
driver=/run/sluice-localcluster/bin/localcluster
image=registry.k8s.io/e2e-test-images/agnhost:2.53

echo "==> deploying the sample app: Deployment web (3 x agnhost netexec), Service web, a client pod per node"
"$kubectl" apply -f - <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: $image
          args: [netexec, --http-port=8080, --udp-port=8081]
          readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: 8080, protocol: TCP}
    - {name: udp, port: 81, targetPort: 8081, protocol: UDP}
YAML
nodes=$("$kubectl" get nodes -o jsonpath='{.items[*].metadata.name}')
first_node=${nodes%% *}
for n in $nodes; do
	"$kubectl" apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: client-$n
  namespace: demo
  labels: {role: $([ "$n" = "$first_node" ] && echo frontend || echo other)}
spec:
  nodeName: $n
  containers:
    - name: client
      image: $image
      args: [netexec, --http-port=8080]
      readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
YAML
done
"$kubectl" -n demo wait --for=condition=Ready pod --all --timeout=120s >/dev/null
"$kubectl" -n demo rollout status deployment/web --timeout=120s >/dev/null
"$kubectl" -n demo get pods -o wide
vip=$("$kubectl" -n demo get service web -o jsonpath='{.spec.clusterIP}')
echo
echo "==> probing ClusterIP $vip from a pod on every node (the agent programs it within a second or two)"
sleep 2
status=0
for n in $nodes; do
	for proto in http udp; do
		port=80
		[ "$proto" = udp ] && port=81
		answers=()
		for _ in 1 2 3 4 5 6; do
			out=$("$driver" exec "demo/client-$n" -- curl -s --max-time 5 \
				"http://127.0.0.1:8080/dial?request=hostname&protocol=$proto&host=$vip&port=$port&tries=1" || true)
			answers+=("$(sed -n 's/.*"responses":\["\([^"]*\)".*/\1/p' <<<"$out")")
		done
		printf '    %-14s %s %s:%s -> %s\n' "client-$n" "$proto" "$vip" "$port" "${answers[*]}"
		for a in "${answers[@]}"; do [ -n "$a" ] || status=1; done
	done
done
echo
if [ "$status" = 0 ]; then
	echo "==> every probe was answered by a web pod: Sluice load-balances the ClusterIP on both nodes, no kube-proxy."
else
	echo "==> some probes got no answer (empty above); agent logs: /run/sluice-localcluster/logs" >&2
fi

echo
echo "==> NetworkPolicy: web accepts only pods labelled role=frontend, on port 8080"
"$kubectl" apply -f - <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-frontend, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {role: frontend}}}]
      ports: [{port: 8080}]
YAML
"$kubectl" -n demo get pods -L role -l role
sleep 2
since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for n in $nodes; do
	role=$("$kubectl" -n demo get pod "client-$n" -o jsonpath='{.metadata.labels.role}')
	want=denied
	[ "$role" = frontend ] && want=allowed
	got=denied
	if "$driver" exec "demo/client-$n" -- /agnhost connect "$vip:80" --timeout=2s 2>/dev/null; then got=allowed; fi
	printf '    %-14s (role=%s) -> %s:80: %s (expected %s)\n' "client-$n" "$role" "$vip" "$got" "$want"
	[ "$got" = "$want" ] || status=1
done
if [ "$status" = 0 ]; then
	echo "==> the policy lets the frontend in and keeps the other client out, across nodes."
fi

echo
echo "==> sluice observe: those connections as the datapath saw them, asked from outside the cluster"
echo "    (every node's agent through the API server, merged by time)"
sluice=/run/sluice-localcluster/bin/sluice
# The agents name a flow the moment they read it; one second is slack.
sleep 1
# observe CLIENT VERDICT: the client's flows since the policy went in,
# printed; status 1 unless one has VERDICT.
observe() {
	local observed
	echo "    \$ sluice --kubeconfig \$KUBECONFIG observe --since $since --pod demo/$1"
	if ! observed=$("$sluice" --kubeconfig "$KUBECONFIG" observe --since "$since" --pod "demo/$1"); then
		status=1
	fi
	while IFS= read -r line; do printf '    %s\n' "$line"; done <<<"$observed"
	if ! grep -q " $2 " <<<"$observed"; then
		echo "==> no $2 flow of $1 in sluice observe" >&2
		status=1
	fi
}
observe "client-$first_node" FORWARDED
echo
observe "client-${nodes##* }" DROPPED
if [ "$status" = 0 ]; then
	echo "==> both connections were TRANSLATED to a web pod by the client's node; the frontend's was FORWARDED"
	echo "    by the rule that allows it, the other client's SYNs DROPPED by the policy isolating the web pod."
fi

cat <<TXT

Try it yourself:
  export KUBECONFIG=$KUBECONFIG
  $kubectl get pods -A -o wide
  go run ./hack/localcluster exec demo/client-node-1 -- curl -s http://$vip/hostname
  go run ./hack/localcluster exec demo/client-node-1 -- /agnhost connect $vip:80 --timeout=3s
  go run ./hack/localcluster status
  $sluice --kubeconfig \$KUBECONFIG observe --follow -n demo      # every node, merged
  go run ./hack/localcluster sluice node-1 observe --verdict dropped   # one node's agent, on the node
  go run ./hack/localcluster sluice node-1 service list
  go run ./hack/localcluster sluice node-1 policy get demo/<web pod>
  $kubectl -n demo delete networkpolicy web-from-frontend   # and client-node-2 gets in again
Tear down: make demo-down
TXT
exit "$status"
