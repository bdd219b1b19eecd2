// Command sluice-cni is the Sluice CNI plugin (spec 1.1; also 0.4.0 and
// 1.0.0). Container runtimes run it for every pod; see docs/reference.md.
package main

import (
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/sluice-net/sluice/cni/internal/plugin"
)

func init() {
	// Namespace switches are per OS thread: keep main on one.
	runtime.LockOSThread()
}

func main() {
	skel.PluginMainFuncs(plugin.Funcs(), version.PluginSupports("0.4.0", "1.0.0", "1.1.0"),
		"sluice-cni: Sluice tc eBPF pod networking")
}
