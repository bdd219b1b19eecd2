#!/usr/bin/env bash
# Installs what building and testing Sluice needs on Debian 12, and mounts
# bpffs. Idempotent: packages already present are not reinstalled.
set -euo pipefail

packages=(clang-19 llvm-19 libbpf-dev bpftool iproute2 iptables nftables iperf3 curl make git shellcheck clang-format-19 ethtool)

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: run as root (apt-get and mount need it)" >&2
	exit 1
fi

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps: installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! mountpoint -q /sys/fs/bpf; then
	echo "install-deps: mounting bpffs at /sys/fs/bpf"
	mount -t bpf bpf /sys/fs/bpf
fi

command -v go >/dev/null || { echo "install-deps: Go 1.26 is required on PATH" >&2; exit 1; }
echo "install-deps: ok"
