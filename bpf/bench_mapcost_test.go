package bpf

import (
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/sluice-net/sluice/internal/testutil/bpffs"
)

// BenchmarkMapInsertCost measures what inserting a new conntrack-sized
// entry (40-byte key, 48-byte value) costs in each hash map kind, the unit
// a new flow's cost is mostly made of: a service flow inserts two. Each
// run inserts under a key never used since the map was last emptied.
func BenchmarkMapInsertCost(b *testing.B) {
	bpffs.Require(b)
	kinds := []struct {
		name  string
		typ   ebpf.MapType
		flags uint32
	}{
		{"hash", ebpf.Hash, 0},
		{"lru", ebpf.LRUHash, 0},
		{"lru-percpu-lists", ebpf.LRUHash, noCommonLRU},
	}
	for _, k := range kinds {
		for _, inserts := range []int{0, 1, 2} {
			b.Run(fmt.Sprintf("%s/inserts=%d", k.name, inserts), func(b *testing.B) {
				m, err := ebpf.NewMap(&ebpf.MapSpec{Type: k.typ, KeySize: 40, ValueSize: 48, MaxEntries: 1 << 16, Flags: k.flags})
				if err != nil {
					b.Fatal(err)
				}
				defer m.Close()
				counter, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
				if err != nil {
					b.Fatal(err)
				}
				defer counter.Close()
				prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: insertProgram(m, counter, inserts)})
				if err != nil {
					b.Fatal(err)
				}
				defer prog.Close()
				pkt := build(b, flow{src: client4, dst: vip4, proto: 6, tcpFlags: "A"})
				const runs = 4096
				var total float64
				b.ResetTimer()
				for i := 0; i < b.N; i += runs {
					b.StopTimer()
					flushMap(b, m)
					b.StartTimer()
					_, per, err := prog.Benchmark(pkt, runs, nil)
					if err != nil {
						b.Fatal(err)
					}
					total += float64(per.Nanoseconds()) * runs
				}
				b.ReportMetric(total/float64((b.N+runs-1)/runs*runs), "ns/run")
			})
		}
	}
}

// noCommonLRU: an LRU list per CPU instead of one shared.
const noCommonLRU = 1 << 1

// insertProgram: a counter bumped per run makes a fresh key (40 bytes at
// fp-40), inserted n times (its byte 9 telling the inserts apart) with a
// zero 48-byte value (fp-88).
func insertProgram(m, counter *ebpf.Map, n int) asm.Instructions {
	ins := asm.Instructions{asm.Mov.Imm(asm.R5, 0)}
	for off := int16(-96); off < 0; off += 8 {
		ins = append(ins, asm.StoreMem(asm.RFP, off, asm.R5, asm.DWord))
	}
	ins = append(ins,
		asm.LoadMapPtr(asm.R1, counter.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -96),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "exit"),
		asm.LoadMem(asm.R3, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R3, 1),
		asm.StoreMem(asm.R0, 0, asm.R3, asm.DWord),
		asm.StoreMem(asm.RFP, -40, asm.R3, asm.DWord),
	)
	for i := range n {
		ins = append(ins,
			asm.StoreImm(asm.RFP, -31, int64(i), asm.Byte),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -40),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -88),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnMapUpdateElem.Call(),
		)
	}
	return append(ins, asm.Mov.Imm(asm.R0, 0).WithSymbol("exit"), asm.Return())
}
