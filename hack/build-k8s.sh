#!/usr/bin/env bash
# Builds the Kubernetes pieces the local cluster, the e2e suite and the
# benchmarks need -- etcd, kube-apiserver, kube-controller-manager,
# kube-proxy, kubectl and the upstream agnhost test binary -- from Go modules
# pinned in hack/tools/{k8s,etcd}, into a cache keyed by those pins. Nothing
# prebuilt is downloaded. A cold build takes about 10 minutes on 2 cores;
# later runs reuse the cache. Prints the bin directory on the last line.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
key="$(cat "$here"/tools/k8s/go.mod "$here"/tools/k8s/go.sum "$here"/tools/etcd/go.mod "$here"/tools/etcd/go.sum | sha256sum | cut -c1-12)"
bin="${SLUICE_CACHE:-/var/cache/sluice}/k8s-$key/bin"
mkdir -p "$bin"

build() { # name module-dir package
	local name=$1 dir=$2 pkg=$3
	if [ -x "$bin/$name" ]; then
		echo "build-k8s: $name: cached" >&2
		return
	fi
	echo "build-k8s: building $name ..." >&2
	local start=$SECONDS
	(cd "$here/tools/$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$bin/$name.tmp" "$pkg")
	mv "$bin/$name.tmp" "$bin/$name"
	echo "build-k8s: $name built in $((SECONDS - start))s" >&2
}

build etcd etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s k8s.io/kubernetes/cmd/kube-controller-manager
build kube-proxy k8s k8s.io/kubernetes/cmd/kube-proxy
build kubectl k8s k8s.io/kubernetes/cmd/kubectl
build agnhost k8s k8s.io/kubernetes/test/images/agnhost
echo "$bin"
