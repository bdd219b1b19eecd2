//go:build e2e

package e2e_test

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-net/sluice/internal/testutil/icmpecho"
)

// pingHelperEnv, set in its environment, makes this test binary send one
// ICMP echo request to the address it names and exit 0 once the reply
// arrives, 1 without one. The local cluster's pods run the host's programs
// and Debian hosts may have no ping; agnhost has none either.
const pingHelperEnv = "SLUICE_E2E_PING"

// pingTimeout is how long one ping waits for its reply: the pods' network
// answers in microseconds, a policy drop never.
const pingTimeout = 2 * time.Second

func TestMain(m *testing.M) {
	if dst := os.Getenv(pingHelperEnv); dst != "" {
		if err := echoOnce(dst, pingTimeout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// echoOnce sends one ICMP (or ICMPv6) echo request to dst from a raw
// socket and waits until timeout for the echo reply.
func echoOnce(dst string, timeout time.Duration) error {
	addr, err := netip.ParseAddr(dst)
	if err != nil {
		return fmt.Errorf("ping: %q is not an IP address", dst)
	}
	replied, err := icmpecho.Echo(netip.Addr{}, addr.Unmap(), uint16(os.Getpid()), timeout)
	if err != nil {
		return fmt.Errorf("ping %s: %w", dst, err)
	}
	if !replied {
		return fmt.Errorf("ping %s: TIMEOUT: no echo reply within %v", dst, timeout)
	}
	return nil
}

// pingArgv is the command a pod pings with, chosen once: the pod's own
// ping where it has one (agnhost's image on a real node has busybox's),
// otherwise this test binary as pingHelperEnv describes (the local
// cluster, whose pods run the host's programs).
var pingArgv struct {
	once sync.Once
	argv func(dst string) []string
	err  error
}

// ping has pod send one ICMP echo request to dst; nil means the reply came
// back.
func (f *testNS) ping(pod, dst string) error {
	pingArgv.once.Do(func() {
		// Loopback answers whatever the policy: only the tool is tested.
		if _, err := f.exec(pod, "ping", "-c", "1", "-W", "2", "127.0.0.1"); err == nil {
			pingArgv.argv = func(dst string) []string { return []string{"ping", "-c", "1", "-W", "2", dst} }
			return
		}
		self, err := os.Executable()
		if err != nil {
			pingArgv.err = err
			return
		}
		argv := func(dst string) []string { return []string{"env", pingHelperEnv + "=" + dst, self} }
		if _, err := f.exec(pod, argv("127.0.0.1")...); err != nil {
			pingArgv.err = fmt.Errorf("no way to ping from a pod: no ping in it, and this test binary cannot be run in it: %w", err)
			return
		}
		pingArgv.argv = argv
	})
	if pingArgv.err != nil {
		f.t.Fatal(pingArgv.err)
	}
	out, err := f.exec(pod, pingArgv.argv(dst)...)
	if err != nil {
		return fmt.Errorf("%s: %w %s", pod, err, strings.TrimSpace(out))
	}
	return nil
}
