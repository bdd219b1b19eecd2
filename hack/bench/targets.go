package main

import (
	"fmt"
	"strings"
)

// A goal is one of issue 18's targets read off a scale point: the measured
// value, the target, and whether it is met ("met", "missed", or "–" when
// the run has no figure for it).
type goal struct {
	what, value, target, verdict string
}

const notMeasured = "–"

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "missed"
}

// ratioGoal compares Sluice's figure a with another's b: a/b at least min.
func ratioGoal(what string, a, b, min float64, note string) goal {
	g := goal{what: what, target: fmt.Sprintf("≥ %.2fx", min), value: notMeasured, verdict: notMeasured}
	if a > 0 && b > 0 {
		g.value, g.verdict = fmt.Sprintf("%.2fx", a/b)+note, verdict(a/b >= min)
	}
	return g
}

// goals reads the targets off one scale point.
func goals(s ScaleResult) []goal {
	sl, ip, nf := s.Impl["sluice"], s.Impl["iptables"], s.Impl["nftables"]
	if sl == nil || ip == nil || nf == nil {
		return nil
	}
	var out []goal
	limitNote := ""
	if len(sl.PodIPConnPerSec) > 0 && sl.LimitBackends < 2 {
		limitNote = " (limit against one backend)"
	}
	out = append(out, ratioGoal("conn/s, Sluice / pod-IP limit", median(sl.ConnPerSec), median(sl.PodIPConnPerSec), 0.95, limitNote))
	out = append(out, ratioGoal("conn/s, Sluice / nftables", median(sl.ConnPerSec), median(nf.ConnPerSec), 1.2, ""))
	ipt := ratioGoal("conn/s, Sluice / iptables", median(sl.ConnPerSec), median(ip.ConnPerSec), 1.5, "")
	if ip.SyncTimedOut {
		ipt.value, ipt.verdict = "iptables not answering", notMeasured
	}
	out = append(out, ipt)
	out = append(out, ratioGoal("throughput, Sluice / pod-IP limit", median(sl.Gbps), median(sl.PodIPGbps), 0.95, ""))
	out = append(out, syncGoal("sync, iptables / Sluice", sl, ip, 5, true))
	out = append(out, syncGoal("sync, nftables / Sluice", sl, nf, 1, false))
	ch := goal{what: "change p99, Sluice", target: "≤ 50 ms", value: notMeasured, verdict: notMeasured}
	if sl.ChangesSeen > 0 || sl.ChangesMade > 0 {
		// A change not seen counts at the timeout in the p99.
		ch.value, ch.verdict = fmt.Sprintf("%.0f ms", sl.ChangeP99ms), verdict(sl.ChangeP99ms <= 50)
		if missing := sl.ChangesMade - sl.ChangesSeen; missing > 0 {
			ch.value += fmt.Sprintf(" (%d of %d not seen within %.0f s)", missing, sl.ChangesMade, sl.ChangeTimeoutMs/1000)
		}
	}
	out = append(out, ch)
	out = append(out, memoryGoal("RSS + kernel, Sluice vs iptables", sl, ip))
	out = append(out, memoryGoal("RSS + kernel, Sluice vs nftables", sl, nf))
	return out
}

// syncGoal: the other's sync time over Sluice's, at least min when
// atLeast, else more than min ("faster than").
func syncGoal(what string, sl, other *ImplResult, min float64, atLeast bool) goal {
	g := goal{what: what, value: notMeasured, verdict: notMeasured}
	if atLeast {
		g.target = fmt.Sprintf("≥ %.0fx", min)
	} else {
		g.target = fmt.Sprintf("> %.0fx", min)
	}
	if sl.SyncSeconds <= 0 || other.SyncSeconds <= 0 {
		return g
	}
	r := other.SyncSeconds / sl.SyncSeconds
	ok := r > min || (atLeast && r == min)
	switch {
	case sl.SyncTimedOut:
		g.value, ok = "Sluice not answering", false
	case other.SyncTimedOut:
		// A lower bound: met if the bound is, else not known.
		g.value = fmt.Sprintf("> %.2fx", r)
		if !ok {
			g.verdict = notMeasured
			return g
		}
	default:
		g.value = fmt.Sprintf("%.2fx", r)
	}
	g.verdict = verdict(ok)
	return g
}

// memoryGoal: Sluice's agent RSS plus its kernel memory below kube-proxy's.
func memoryGoal(what string, sl, kp *ImplResult) goal {
	g := goal{what: what, target: "Sluice below", value: notMeasured, verdict: notMeasured}
	if sl.KernelMiB == nil || kp.KernelMiB == nil || sl.RSSMiB == 0 || kp.RSSMiB == 0 {
		return g
	}
	a, b := sl.RSSMiB+*sl.KernelMiB, kp.RSSMiB+*kp.KernelMiB
	g.value = fmt.Sprintf("%.0f + %.0f = %.0f MiB vs %.0f + %.0f = %.0f MiB", sl.RSSMiB, *sl.KernelMiB, a, kp.RSSMiB, *kp.KernelMiB, b)
	g.verdict = verdict(a < b)
	return g
}

// goalTables renders the targets of every scale point as Markdown.
func goalTables(r *Results) string {
	var b strings.Builder
	b.WriteString("| Services | target | measured | goal | |\n|---:|---|---:|---:|---|\n")
	for _, s := range r.Scales {
		for _, g := range goals(s) {
			fmt.Fprintf(&b, "| %d | %s | %s | %s | %s |\n", s.Services, g.what, g.value, g.target, g.verdict)
		}
	}
	return b.String()
}
