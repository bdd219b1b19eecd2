# shellcheck shell=bash
# Shared by the hack/kind scripts: where things live, and the Docker and
# kind this machine needs. Source it; it sets -euo pipefail.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
kind_dir="$repo/hack/kind"
cache="${SLUICE_CACHE:-/var/cache/sluice}"
kind_version=v0.33.0
cluster=sluice
# shellcheck disable=SC2034 # read by the scripts that source this file
state=/run/sluice-kind # kubeconfig, rendered manifest
# shellcheck disable=SC2034 # read by the scripts that source this file
outside=sluice-kind-outside
kind_bridge=br-sluice-kind
kind_subnet6=fd00:172:31:250::/64 # the IPv6 half of the kind network

log() { echo "==> $*" >&2; }
die() {
	echo "kind: $*" >&2
	exit 1
}

# module_version TOOL MODULE: the version hack/tools/TOOL/go.mod pins.
module_version() { awk -v m="$2" '$1 == "require" && $2 == m {print $3}' "$repo/hack/tools/$1/go.mod"; }

# The Kubernetes version the node image carries: the pinned module's.
k8s_version() { module_version k8s k8s.io/kubernetes; }

# The tag of the etcd image the local node image carries (kubeadm's form).
etcd_tag() { echo "$(module_version etcd go.etcd.io/etcd/server/v3 | sed 's/^v//')-0"; }

ensure_packages() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
	fi
}

# ensure_docker installs Debian's docker.io and starts dockerd when no
# Docker engine answers. The engine it starts keeps running (kind's nodes
# live in it); `make kind-down` leaves it up too.
ensure_docker() {
	if docker info >/dev/null 2>&1; then
		return
	fi
	ensure_packages docker.io
	if ! docker info >/dev/null 2>&1; then
		log "starting dockerd (log: /var/log/sluice-dockerd.log)"
		setsid dockerd --pidfile /run/sluice-dockerd.pid >/var/log/sluice-dockerd.log 2>&1 </dev/null &
		for _ in $(seq 60); do
			docker info >/dev/null 2>&1 && return
			sleep 0.5
		done
		die "dockerd did not come up; see /var/log/sluice-dockerd.log"
	fi
}

# ensure_kind builds kind from its Go module, once.
ensure_kind() {
	local bin="$cache/kind-$kind_version/bin"
	if [ ! -x "$bin/kind" ]; then
		log "building kind $kind_version from its Go module"
		GOBIN="$bin" go install "sigs.k8s.io/kind@$kind_version"
	fi
	export PATH="$bin:$PATH"
}

# use_unprivileged_docker puts hack/kind/docker-unprivileged first in PATH
# when `docker run --privileged` cannot work on this host (its processes
# lack a capability Docker's privileged mode asks for). Elsewhere kind runs
# with Docker as it is.
use_unprivileged_docker() {
	local image=$1 err
	[[ ":$PATH:" != *":$kind_dir/docker-unprivileged:"* ]] || return 0
	if err="$(docker run --rm --privileged --entrypoint /bin/true "$image" 2>&1)"; then
		return
	fi
	log "docker run --privileged fails here ($(grep -o -m 1 'unable to apply caps[^:]*: [^:]*' <<<"$err" || echo "$err" | head -n 1)); kind's nodes run with explicit capabilities instead (hack/kind/docker-unprivileged)"
	export PATH="$kind_dir/docker-unprivileged:$PATH"
}

# ensure_network creates kind's Docker network "kind", dual-stack, so that
# the nodes reach each other and this machine, and nothing beyond it: no
# masquerade, and forwarding rules that pass frames between the nodes (pod
# traffic, pod addresses on the wire) and drop everything else crossing
# this machine to or from them. (An --internal network would do the same,
# but Docker then publishes no ports, and kind needs the API server's.)
ensure_network() {
	if ! docker network inspect kind >/dev/null 2>&1; then
		# Docker turns IPv6 forwarding on for an IPv6 network; kind-down
		# puts back what was there.
		[ -e "$state/ipv6-forwarding" ] || sysctl -n net.ipv6.conf.all.forwarding >"$state/ipv6-forwarding"
		docker network create --driver bridge --subnet 172.31.250.0/24 \
			--ipv6 --subnet "$kind_subnet6" \
			-o com.docker.network.bridge.name="$kind_bridge" \
			-o com.docker.network.bridge.enable_ip_masquerade=false kind >/dev/null
	fi
	[ "$(docker network inspect -f '{{index .Options "com.docker.network.bridge.name"}}' kind)" = "$kind_bridge" ] ||
		die "Docker network \"kind\" exists and is not this project's: remove it (docker network rm kind), make kind-up makes one without a route out of this machine"
	[ "$(docker network inspect -f '{{.EnableIPv6}}' kind)" = true ] ||
		die "Docker network \"kind\" has no IPv6 (made by an older kind-up): make kind-down, then make kind-up"
	network_rules -C 2>/dev/null || network_rules -I
}

# network_rules -I|-C|-D: the forwarding rules of the kind network, in
# evaluation order (inserted last to first). IPv4 goes in Docker's
# DOCKER-USER chain; Docker 20.10 leaves ip6tables alone (and turns on IPv6
# forwarding for an IPv6 network), so IPv6 gets the same rules in FORWARD,
# plus one for frames towards the nodes.
network_rules() {
	local op=$1
	if [ "$op" = -I ]; then
		iptables -I DOCKER-USER -i "$kind_bridge" -j DROP
		iptables -I DOCKER-USER -i "$kind_bridge" -o "$kind_bridge" -j ACCEPT
		ip6tables -I FORWARD -o "$kind_bridge" -j DROP
		ip6tables -I FORWARD -i "$kind_bridge" -j DROP
		ip6tables -I FORWARD -i "$kind_bridge" -o "$kind_bridge" -j ACCEPT
	elif [ "$op" = -C ]; then
		iptables -C DOCKER-USER -i "$kind_bridge" -o "$kind_bridge" -j ACCEPT &&
			iptables -C DOCKER-USER -i "$kind_bridge" -j DROP &&
			ip6tables -C FORWARD -i "$kind_bridge" -o "$kind_bridge" -j ACCEPT &&
			ip6tables -C FORWARD -i "$kind_bridge" -j DROP &&
			ip6tables -C FORWARD -o "$kind_bridge" -j DROP
	else
		iptables -D DOCKER-USER -i "$kind_bridge" -o "$kind_bridge" -j ACCEPT || true
		iptables -D DOCKER-USER -i "$kind_bridge" -j DROP || true
		ip6tables -D FORWARD -i "$kind_bridge" -o "$kind_bridge" -j ACCEPT || true
		ip6tables -D FORWARD -i "$kind_bridge" -j DROP || true
		ip6tables -D FORWARD -o "$kind_bridge" -j DROP || true
	fi
}

control_plane_ip() { docker inspect -f '{{(index .NetworkSettings.Networks "kind").IPAddress}}' "$cluster-control-plane"; }
