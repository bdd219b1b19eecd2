//go:build tools

// Package tools keeps containerd's commands in this module's graph so `go
// mod tidy` keeps their dependencies; hack/build-k8s.sh builds them for the
// kind node image (Debian's containerd 1.6 speaks CNI only up to 1.0.0).
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
