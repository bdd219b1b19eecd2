//go:build tools

// Package tools keeps CoreDNS in this module's graph so `go mod tidy`
// keeps its dependencies; hack/build-k8s.sh builds it for the kind node
// image (kubeadm deploys it as the cluster DNS).
package tools

import _ "github.com/coredns/coredns"
