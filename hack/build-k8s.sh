#!/usr/bin/env bash
# Builds the Kubernetes pieces the local cluster, the e2e suite and the
# benchmarks need -- etcd, kube-apiserver, kube-controller-manager,
# kube-proxy, kubectl and the upstream agnhost test binary -- from Go modules
# pinned in hack/tools/*, into a cache keyed by those pins.
# Nothing prebuilt is downloaded. A cold build takes about 10 minutes on 2
# cores; later runs reuse the cache. Prints the bin directory on the last
# line.
#
#   hack/build-k8s.sh         what the local cluster needs
#   hack/build-k8s.sh kind    also kubelet, kubeadm, kube-scheduler, CoreDNS
#                             and containerd, for the kind node image
#   hack/build-k8s.sh conformance
#                             also the upstream e2e test binary (e2e.test)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
key="$(cat "$0" "$here"/tools/*/go.mod "$here"/tools/*/go.sum | sha256sum | cut -c1-12)"
bin="${SLUICE_CACHE:-/var/cache/sluice}/k8s-$key/bin"
mkdir -p "$bin"

# The version the binaries report (kubelet to its Node, kubeadm's skew
# checks), as the upstream release build stamps it.
k8s_version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/tools/k8s/go.mod")"
minor="$(echo "$k8s_version" | cut -d. -f2)"
k8s_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done

build() { # name module-dir package [ldflags [tags]]
	local name=$1 dir=$2 pkg=$3 ldflags=${4:-} tags=${5:-}
	if [ -x "$bin/$name" ]; then
		echo "build-k8s: $name: cached" >&2
		return
	fi
	echo "build-k8s: building $name ..." >&2
	local start=$SECONDS
	(cd "$here/tools/$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg")
	mv "$bin/$name.tmp" "$bin/$name"
	echo "build-k8s: $name built in $((SECONDS - start))s" >&2
}

build etcd etcd go.etcd.io/etcd/server/v3
for cmd in kube-apiserver kube-controller-manager kube-proxy kubectl; do
	build "$cmd" k8s "k8s.io/kubernetes/cmd/$cmd" "$k8s_ldflags"
done
build agnhost k8s k8s.io/kubernetes/test/images/agnhost
if [ "${1:-}" = kind ]; then
	for cmd in kube-scheduler kubeadm kubelet; do
		build "$cmd" k8s "k8s.io/kubernetes/cmd/$cmd" "$k8s_ldflags"
	done
	build coredns coredns github.com/coredns/coredns
	ctrd_version="$(awk '$1 == "require" && $2 == "github.com/containerd/containerd/v2" {print $3}' "$here/tools/containerd/go.mod")"
	for cmd in containerd containerd-shim-runc-v2 ctr; do
		build "$cmd" containerd "github.com/containerd/containerd/v2/cmd/$cmd" \
			"-X github.com/containerd/containerd/v2/version.Version=$ctrd_version" "no_aufs no_zfs no_btrfs no_devmapper urfave_cli_no_docs"
	done
fi
if [ "${1:-}" = conformance ] && [ ! -x "$bin/e2e.test" ]; then
	echo "build-k8s: building e2e.test ..." >&2
	start=$SECONDS
	(cd "$here/tools/k8s" && CGO_ENABLED=0 GOFLAGS=-mod=mod go test -c -trimpath -ldflags "$k8s_ldflags" -o "$bin/e2e.test.tmp" k8s.io/kubernetes/test/e2e)
	mv "$bin/e2e.test.tmp" "$bin/e2e.test"
	echo "build-k8s: e2e.test built in $((SECONDS - start))s" >&2
fi
echo "$bin"
