package bpf

import (
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// BenchmarkXDPNetdev measures xdp_netdev's own run time per packet
// (kernel.bpf_stats_enabled) on node A of the DSR test's cluster, for a
// UDP flood over 64 flows from the client to a NodePort whose backend is
// the pod behind node B: under the XDP masquerade (snat) and under
// direct server return. The packet-rate benchmark (agent) measures what
// the whole node spends; this one splits out the program.
//
//	go test -run '^$' -bench XDPNetdev ./bpf/
func BenchmarkXDPNetdev(b *testing.B) {
	for _, m := range []struct {
		name string
		cfg  Config
	}{
		{"masquerade", Config{MasqPortMin: 61000, MasqPortMax: 65535}},
		{"dsr", Config{DSR: true}},
	} {
		b.Run(m.name, func(b *testing.B) {
			var c *dsrCluster
			if m.cfg.DSR {
				c = newDSRCluster(b, m.cfg)
			} else {
				c = newMasqClusterPorts(b, m.cfg.MasqPortMin, m.cfg.MasqPortMax)
			}
			var sink net.PacketConn
			var err error
			c.pod.Do(b, func() { sink, err = net.ListenPacket("udp4", "0.0.0.0:9100") })
			if err != nil {
				b.Fatal(err)
			}
			defer sink.Close()
			go func() {
				buf := make([]byte, 2048)
				for {
					if _, _, err := sink.ReadFrom(buf); err != nil {
						return
					}
				}
			}()
			c.addService(b, dsrA4, 30100, 9100, 17)
			var flows []net.Conn
			c.client.Do(b, func() {
				for i := 0; i < 64; i++ {
					conn, err := net.Dial("udp4", "192.168.50.10:30100")
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { conn.Close() })
					flows = append(flows, conn)
				}
			})
			msg := make([]byte, 18) // 60-byte frames
			for _, f := range flows {
				_, _ = f.Write(msg) // the flows exist before the measurement
			}
			stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
			if err != nil {
				b.Fatal(err)
			}
			defer stats.Close()
			before, err := c.dpA.XDPNetdev.Stats()
			if err != nil {
				b.Fatal(err)
			}
			sent := 0
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for j := 0; j < 1000; j++ {
					if _, err := flows[j%len(flows)].Write(msg); err == nil {
						sent++
					}
				}
			}
			b.StopTimer()
			after, err := c.dpA.XDPNetdev.Stats()
			if err != nil {
				b.Fatal(err)
			}
			runs := after.RunCount - before.RunCount
			if runs < uint64(sent) {
				b.Fatalf("xdp_netdev ran %d times for %d packets", runs, sent)
			}
			counter := CounterMasqForward
			if m.cfg.DSR {
				counter = CounterDSRSent
			}
			if n := c.counters(b, c.dpA)[counter]; n < uint64(sent) {
				b.Fatalf("XDP sent %d of %d packets on", n, sent)
			}
			b.ReportMetric(float64(after.Runtime-before.Runtime)/float64(runs), "xdp-ns/pkt")
		})
	}
}
