# Sluice: tc eBPF CNI and kube-proxy replacement.
GO      ?= go
BIN     := bin
# The agent reports it (sluice status): the checkout's commit, even where
# GOFLAGS=-buildvcs=false leaves no VCS stamp in the binary.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/sluice-net/sluice/agent/internal/observer.buildVersion=$(VERSION)
PKGS    := ./...

export CGO_ENABLED := 0

.PHONY: all build generate check-generate lint test unit e2e e2e-overlay e2e-dsr e2e-xdp demo demo-down deps bench bench-quick bench-packet-rate bench-datapath fuzz k8s kind-up kind-e2e kind-down kind-node-image kind-conformance

all: build

deps:
	./hack/install-deps.sh

## build: static binaries into bin/
build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $(BIN)/sluice-cni ./cni
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/sluice-agent ./agent
	$(GO) build -trimpath -o $(BIN)/sluice ./agent/cmd/sluice

## generate: rebuild the BPF objects and Go bindings with Debian's clang-19
generate:
	$(GO) generate ./bpf/...

## check-generate: fail if the committed BPF objects differ from a rebuild
check-generate: generate
	@git diff --exit-code --stat -- bpf/ || { echo "generated BPF files drifted: run 'make generate' and commit" >&2; exit 1; }

## lint: gofmt, go vet, staticcheck, shellcheck on the shell scripts, clang-format on the C (.clang-format)
## under hack/ and test/e2e/ (files starting with a shell shebang, or a
## "# shellcheck shell=" line for sourced libraries)
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags e2e ./test/e2e/
	$(GO) tool staticcheck $(PKGS)
	$(GO) tool staticcheck -tags e2e ./test/e2e/
	@scripts=$$(for f in $$(git ls-files hack test/e2e); do \
		head -n 1 "$$f" | grep -qE '^#!.*\b(ba)?sh\b|^# shellcheck shell=' && echo "$$f"; done); \
	echo "shellcheck -x -P SCRIPTDIR" $$scripts; shellcheck -x -P SCRIPTDIR $$scripts
	clang-format-19 --dry-run --Werror bpf/*.c bpf/lib/*.h bpf/include/*.h

## k8s: build etcd, kube-apiserver, ... from Go modules into the cache (cold: ~10 min)
k8s:
	./hack/build-k8s.sh

## unit: every Go test (root-only tests skip without root); the API server
## tests use the binaries hack/build-k8s.sh builds and caches. A failed
## build fails the target: the API server tests must not silently skip.
unit:
	@out="$$(./hack/build-k8s.sh)" || { echo "unit: hack/build-k8s.sh failed" >&2; exit 1; }; \
	bin="$$(echo "$$out" | tail -n 1)"; \
	[ -x "$$bin/kube-apiserver" ] || { echo "unit: hack/build-k8s.sh printed $$bin, which has no kube-apiserver" >&2; exit 1; }; \
	echo "SLUICE_K8S_BIN=$$bin $(GO) test -count=1 $(PKGS)"; \
	SLUICE_K8S_BIN="$$bin" $(GO) test -count=1 $(PKGS)

## e2e: the end-to-end suite on the local cluster (test/e2e; a running
## cluster is reused, otherwise one is brought up and removed)
e2e:
	./test/e2e/run-local.sh

## e2e-overlay: the Service, NodePort, pod and policy e2e tests on a local
## cluster in routingMode vxlan whose nodes are on two routed subnets
## (brought up and removed; refused while another local cluster is up)
e2e-overlay:
	./test/e2e/run-overlay.sh

## e2e-dsr: traffic from outside, pod and policy e2e tests on a local
## cluster with XDP and direct server return (brought up and removed)
e2e-dsr:
	./test/e2e/run-dsr.sh

## e2e-xdp: traffic from outside, pod e2e tests on a local cluster with
## XDP under loadBalancerMode snat (the XDP masquerade; brought up and removed)
e2e-xdp:
	./test/e2e/run-xdp.sh

## test: the README's test command, and what CI runs
test: deps check-generate lint unit e2e e2e-overlay e2e-dsr e2e-xdp

## demo: the local cluster with a sample app, probed from every node
demo: deps
	./hack/demo.sh

## demo-down: remove the local cluster
demo-down:
	$(GO) run ./hack/localcluster down

## kind-up: a kind cluster (2 nodes, no kube-proxy, no default CNI) running
## Sluice from an image built and loaded here (docs/kind.md)
kind-up: deps
	./hack/kind/up

## kind-e2e: the e2e suite against the kind cluster
kind-e2e:
	./hack/kind/e2e

## kind-conformance: upstream e2e.test, Services conformance and NetworkPolicy
## API, against the kind cluster (docs/conformance.md)
kind-conformance:
	./hack/kind/conformance

## kind-down: remove the kind cluster
kind-down:
	./hack/kind/down

## kind-node-image: build the kind node image locally (no registry needed)
kind-node-image: deps
	./hack/kind/build-node-image

## bench: Sluice side by side with kube-proxy (iptables, nftables) and the
## pod-IP limit at 100, 1,000 and 10,000 Services; regenerates the tables in
## docs/benchmarks.md and writes docs/bench/results.json
bench: deps
	$(GO) run ./hack/bench

## bench-quick: the 1,000-Service point only, printing the ratios (a few minutes)
bench-quick: deps
	$(GO) run ./hack/bench -quick

## bench-packet-rate: a small-packet flood to a NodePort from outside, forwarded
## by XDP, tc and kube-proxy nftables; regenerates that section of docs/benchmarks.md
bench-packet-rate: deps
	@bin="$$(./hack/build-k8s.sh | tail -n 1)"; \
	SLUICE_K8S_BIN="$$bin" $(GO) test -count=1 -timeout 30m -run '^$$' -bench PacketRate -benchtime 1x ./agent/ | tee bench-packet-rate.out | $(GO) run ./hack/bench/packetrate

## bench-datapath: per-packet figures of the BPF programs (BPF_PROG_TEST_RUN)
bench-datapath:
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1000000x ./bpf/ | tee bench.out

## fuzz: feed random frames through the datapath programs
FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDatapath -fuzztime $(FUZZTIME) ./bpf/
