package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluice-net/sluice/internal/observeapi"
)

// table writes aligned columns; in remote mode each row starts with the
// agent's node.
type table struct {
	tw     *tabwriter.Writer
	remote bool
}

func newTable(w io.Writer, remote bool, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 2, ' ', 0), remote: remote}
	if remote {
		headers = append([]string{"NODE"}, headers...)
	}
	fmt.Fprintln(t.tw, strings.Join(headers, "\t"))
	return t
}

func (t *table) row(node string, cells ...string) {
	if t.remote {
		cells = append([]string{node}, cells...)
	}
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// writeJSON prints answers: the only agent's as it is, several agents'
// as an object by node.
func writeJSON[T any](w io.Writer, remote bool, res []result[T]) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if !remote {
		if len(res) == 0 {
			return nil
		}
		return enc.Encode(res[0].val)
	}
	byNode := map[string]T{}
	for _, r := range res {
		byNode[r.agent.Node] = r.val
	}
	return enc.Encode(byNode)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ago is a duration before now, rounded for reading: "3s", "5m10s", "2h".
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return roundDuration(now.Sub(t)) + " ago"
}

func roundDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return strings.TrimSuffix(d.Round(time.Second).String(), "0s")
	default:
		return strings.TrimSuffix(strings.TrimSuffix(d.Round(time.Minute).String(), "0s"), "0m")
	}
}

// bytesIEC formats a byte count in B, KiB, MiB or GiB.
func bytesIEC(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	v, suffix := float64(n)/unit, "KiB"
	for _, s := range []string{"MiB", "GiB"} {
		if v < unit {
			break
		}
		v, suffix = v/unit, s
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " " + suffix
}

func percent(n, of int) string {
	if of <= 0 {
		return "-"
	}
	return strconv.FormatFloat(100*float64(n)/float64(of), 'f', 1, 64) + "%"
}

// hostPort formats an address and port; no port: the address alone.
func hostPort(ip string, port uint16) string {
	if port == 0 {
		return ip
	}
	return net.JoinHostPort(ip, strconv.Itoa(int(port)))
}

// addr names an address: its pod, its node, or ADDRESS:PORT.
func addr(a observeapi.Addr) string {
	switch {
	case a.Pod != "":
		return a.Pod
	case a.Node != "":
		return "node:" + a.Node
	case a.IP == "":
		return "?"
	default:
		return hostPort(a.IP, a.Port)
	}
}

// addrPort names an address with its port: POD:PORT, node:NAME:PORT or
// ADDRESS:PORT.
func addrPort(a observeapi.Addr) string {
	name := addr(a)
	if a.Pod == "" && a.Node == "" || a.Port == 0 {
		return name
	}
	return name + ":" + strconv.Itoa(int(a.Port))
}

func labelString(l map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

// peer describes a policy peer in one cell.
func peer(p observeapi.Peer) string {
	var s string
	switch p.Kind {
	case "pods":
		s = "pods"
		if p.Namespace != "" {
			s += " in " + p.Namespace
		}
		if len(p.Labels) > 0 {
			s += " {" + labelString(p.Labels) + "}"
		}
	case "cidr":
		s = "cidr " + strings.Join(p.CIDRs, ",")
	default:
		s = p.Kind
	}
	if p.Identity != 0 {
		s += fmt.Sprintf(" (identity %d)", p.Identity)
	}
	return s
}

// flowTimeLayout is hubble observe's.
const flowTimeLayout = "Jan _2 15:04:05.000"

// flowCells are the columns of one flow's line.
func flowCells(fl observeapi.Flow, remote bool) []string {
	dst := addr(fl.Dst)
	if fl.Service != "" {
		dst = "Service " + fl.Service
		if fl.Backend != nil {
			dst += " -> " + addr(*fl.Backend)
		}
	}
	proto := strings.ToUpper(fl.Proto)
	if fl.Dst.Port != 0 {
		proto += "/" + strconv.Itoa(int(fl.Dst.Port))
	}
	reason := fl.Reason
	if fl.Verdict != observeapi.VerdictDropped && fl.Direction != "" {
		reason = fl.Direction + " allowed"
	}
	policy := strings.Join(fl.Policies, ",")
	if fl.Suppressed > 0 {
		policy = orDash(policy) + fmt.Sprintf("  (+%d suppressed before)", fl.Suppressed)
	}
	cells := []string{fl.Time.Local().Format(flowTimeLayout)}
	if remote {
		cells = append(cells, orDash(fl.Node))
	}
	return append(cells, addr(fl.Src), "->", dst, proto, strings.ToUpper(fl.Verdict), orDash(reason), orDash(policy))
}

// flowHeader names flowCells' columns.
func flowHeader(remote bool) []string {
	h := []string{"TIME"}
	if remote {
		h = append(h, "NODE")
	}
	return append(h, "SOURCE", "", "DESTINATION", "PROTO", "VERDICT", "REASON", "POLICY")
}

// flowPrinter prints flows one a line as they come, in columns that
// widen as wider cells show up (a stream cannot be aligned in advance).
type flowPrinter struct {
	w      io.Writer
	remote bool
	json   bool
	widths []int
	header bool
}

// fit widens the columns to fit fl (so a known set of flows is aligned
// from the first line).
func (p *flowPrinter) fit(cells []string) {
	if len(p.widths) < len(cells) {
		p.widths = append(p.widths, make([]int, len(cells)-len(p.widths))...)
	}
	for i, c := range cells {
		p.widths[i] = max(p.widths[i], len([]rune(c)))
	}
}

func (p *flowPrinter) print(fl observeapi.Flow) error {
	if p.json {
		b, err := json.Marshal(fl)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "%s\n", b)
		return err
	}
	if !p.header {
		p.header = true
		if err := p.line(flowHeader(p.remote)); err != nil {
			return err
		}
	}
	return p.line(flowCells(fl, p.remote))
}

func (p *flowPrinter) line(cells []string) error {
	p.fit(cells)
	var b strings.Builder
	for i, c := range cells {
		if i > 0 {
			b.WriteString("  ")
		}
		b.WriteString(c)
		if i < len(cells)-1 {
			b.WriteString(strings.Repeat(" ", p.widths[i]-len([]rune(c))))
		}
	}
	b.WriteByte('\n')
	_, err := io.WriteString(p.w, b.String())
	return err
}
