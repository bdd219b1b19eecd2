package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-net/sluice/internal/observeapi"
)

// query asks the command's agents for path?q and prints the answers with
// table (the table's rows) or as JSON.
func query[T any](cmd *cobra.Command, g *globals, path string, q url.Values, table func(w io.Writer, remote bool, res []result[T]) error) error {
	ctx := cmd.Context()
	agents, remote, err := g.agents(ctx)
	if err != nil {
		return err
	}
	res, err := report(g, askAll[T](ctx, g, agents, path, q))
	if res == nil {
		return err
	}
	var perr error
	if g.output == "json" {
		perr = writeJSON(g.stdout, remote, res)
	} else {
		perr = table(g.stdout, remote, res)
	}
	if perr != nil {
		return perr
	}
	return err
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "The agent's version, readiness, attach mode, map fill levels and last syncs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return query(cmd, g, observeapi.PathStatus, nil, func(w io.Writer, _ bool, res []result[observeapi.Status]) error {
				for i, r := range res {
					if i > 0 {
						fmt.Fprintln(w)
					}
					if err := printStatus(w, r.val, time.Now()); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
}

func printStatus(w io.Writer, s observeapi.Status, now time.Time) error {
	kv := func(k, v string) { fmt.Fprintf(w, "%-12s %s\n", k+":", v) }
	kv("Node", orDash(s.Node))
	kv("Version", orDash(s.Version))
	ready := "yes"
	if !s.Ready {
		ready = "no"
		if s.NotReady != "" {
			ready += " (" + s.NotReady + ")"
		}
	}
	kv("Ready", ready)
	kv("Attach", orDash(s.Attach))
	kv("Uplinks", orDash(strings.Join(s.Uplinks, ", ")))
	if !s.StartedAt.IsZero() {
		kv("Started", s.StartedAt.Local().Format(time.RFC3339)+" ("+ago(s.StartedAt, now)+")")
	}
	var syncs []string
	for _, k := range slices.Sorted(maps.Keys(s.LastSync)) {
		syncs = append(syncs, k+" "+ago(s.LastSync[k], now))
	}
	kv("Last sync", orDash(strings.Join(syncs, ", ")))
	f := s.Flows
	kv("Flows", fmt.Sprintf("%d/%d buffered, %d seen, %d lost, %d suppressed", f.Buffered, f.Capacity, f.Seen, f.Lost, f.Suppressed))
	if len(s.Maps) == 0 {
		return nil
	}
	fmt.Fprintln(w, "Maps:")
	t := newTable(&indent{w: w, prefix: "  "}, false, "NAME", "ENTRIES", "CAPACITY", "FILL", "MEMORY")
	var total uint64
	for _, m := range s.Maps {
		entries, capacity := "", ""
		if m.Entries >= 0 {
			entries = strconv.Itoa(m.Entries)
		}
		if m.Capacity >= 0 {
			capacity = strconv.Itoa(m.Capacity)
		}
		t.row("", m.Name, entries, capacity, percent(m.Entries, m.Capacity), bytesIEC(m.MemoryBytes))
		total += m.MemoryBytes
	}
	t.row("", "total", "", "", "", bytesIEC(total))
	return t.flush()
}

func serviceCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "service", Short: "Services as the datapath holds them"}
	c.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "Frontends with their backends, weights, flags, affinity and Maglev table size",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return query(cmd, g, observeapi.PathServices, nil, printServices)
		},
	})
	return c
}

func printServices(w io.Writer, remote bool, res []result[[]observeapi.Service]) error {
	t := newTable(w, remote, "ID", "FRONTEND", "SERVICE", "TYPE", "FLAGS", "BACKENDS")
	for _, r := range res {
		for _, s := range r.val {
			var flags []string
			if s.Scope != "" {
				flags = append(flags, s.Scope)
			}
			if s.LocalOnly {
				flags = append(flags, "local-only")
			}
			if s.TerminatingFallback {
				flags = append(flags, "terminating-fallback")
			}
			if s.AffinitySeconds > 0 {
				flags = append(flags, fmt.Sprintf("affinity=%ds", s.AffinitySeconds))
			}
			if s.MaglevSize > 0 {
				flags = append(flags, fmt.Sprintf("maglev=%d", s.MaglevSize))
			}
			name := s.Service
			if s.Port != "" {
				name += ":" + s.Port
			}
			cells := []string{strconv.FormatUint(uint64(s.ID), 10), s.Frontend, name, s.Type, strings.Join(flags, ",")}
			if len(s.Backends) == 0 {
				t.row(r.agent.Node, append(cells, "(none)")...)
				continue
			}
			for i, b := range s.Backends {
				if i > 0 {
					cells = []string{"", "", "", "", ""}
				}
				row := append(cells, backend(b))
				if i > 0 {
					// Continuation lines: blank, not "-".
					t.rowRaw(r.agent.Node, row...)
				} else {
					t.row(r.agent.Node, row...)
				}
			}
		}
	}
	return t.flush()
}

// backend is one backend in one cell: "ID => ADDR POD (weight N, flags)".
func backend(b observeapi.Backend) string {
	s := fmt.Sprintf("%d => %s", b.ID, b.Addr)
	if b.Pod != "" {
		s += " " + b.Pod
	}
	attrs := []string{fmt.Sprintf("weight %d", b.Weight)}
	if b.Local {
		attrs = append(attrs, "local")
	}
	if b.Terminating {
		attrs = append(attrs, "terminating")
	}
	return s + " (" + strings.Join(attrs, ", ") + ")"
}

// rowRaw writes a row as it is: empty cells stay empty.
func (t *table) rowRaw(node string, cells ...string) {
	if t.remote {
		cells = append([]string{node}, cells...)
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func endpointCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "endpoint", Short: "Pods on the node as policy sees them"}
	c.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "Each pod's addresses, identity, policy ID and the policies isolating it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return query(cmd, g, observeapi.PathEndpoints, nil, printEndpoints)
		},
	})
	return c
}

func printEndpoints(w io.Writer, remote bool, res []result[[]observeapi.Endpoint]) error {
	t := newTable(w, remote, "POD", "ADDRESSES", "IDENTITY", "POLICY-ID", "INGRESS", "EGRESS")
	for _, r := range res {
		for _, e := range r.val {
			t.row(r.agent.Node, e.Pod, strings.Join(e.Addrs, ","), strconv.FormatUint(uint64(e.Identity), 10),
				policyID(e.PolicyID), isolation(e.IngressPolicies), isolation(e.EgressPolicies))
		}
	}
	return t.flush()
}

func policyID(id uint32) string {
	if id == 0 {
		return "-"
	}
	return strconv.FormatUint(uint64(id), 10)
}

// isolation: the isolating policies, or that none isolates that way.
func isolation(policies []string) string {
	if len(policies) == 0 {
		return "open"
	}
	return strings.Join(policies, ",")
}

func policyCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "NetworkPolicy as the datapath enforces it"}
	c.AddCommand(&cobra.Command{
		Use:   "get NAMESPACE/POD",
		Short: "A pod's identity, isolation and the peers and ports it admits, with the policies they come from",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pod := args[0]
			if ns, name, ok := strings.Cut(pod, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
				return fmt.Errorf("policy get %q: want NAMESPACE/POD", pod)
			}
			return policyGet(cmd.Context(), g, pod)
		},
	})
	return c
}

func policyGet(ctx context.Context, g *globals, pod string) error {
	agents, remote, err := g.agents(ctx)
	if err != nil {
		return err
	}
	all := askAll[observeapi.Policy](ctx, g, agents, observeapi.PathPolicy, url.Values{"pod": {pod}})
	if remote {
		// The pod is on one node: the other agents do not know it.
		var found []result[observeapi.Policy]
		for _, r := range all {
			if !isNotFound(r.err) {
				found = append(found, r)
			}
		}
		if len(found) == 0 {
			return fmt.Errorf("pod %s is not an endpoint of any agent (no such pod, not running yet, or host-network)", pod)
		}
		all = found
	}
	res, err := report(g, all)
	if res == nil {
		return err
	}
	if g.output == "json" {
		if perr := writeJSON(g.stdout, remote, res); perr != nil {
			return perr
		}
		return err
	}
	for i, r := range res {
		if i > 0 {
			fmt.Fprintln(g.stdout)
		}
		if remote {
			fmt.Fprintf(g.stdout, "%-12s %s\n", "Node:", r.agent.Node)
		}
		if perr := printPolicy(g.stdout, r.val); perr != nil {
			return perr
		}
	}
	return err
}

func printPolicy(w io.Writer, p observeapi.Policy) error {
	e := p.Endpoint
	kv := func(k, v string) { fmt.Fprintf(w, "%-12s %s\n", k+":", v) }
	kv("Pod", e.Pod)
	kv("Addresses", orDash(strings.Join(e.Addrs, ", ")))
	kv("Identity", strconv.FormatUint(uint64(e.Identity), 10))
	kv("Policy ID", policyID(e.PolicyID))
	iso := func(dir string, policies []string) string {
		if len(policies) == 0 {
			return "not isolated: every " + dir + " peer is admitted"
		}
		return "isolated by " + strings.Join(policies, ", ")
	}
	kv("Ingress", iso("ingress", e.IngressPolicies))
	kv("Egress", iso("egress", e.EgressPolicies))
	if len(p.Rules) == 0 {
		if len(e.IngressPolicies)+len(e.EgressPolicies) > 0 {
			fmt.Fprintln(w, "\nNo peer is admitted in the isolated directions.")
		}
		return nil
	}
	fmt.Fprintln(w)
	t := newTable(w, false, "DIRECTION", "PEER", "PROTO", "PORTS", "POLICIES")
	for _, r := range p.Rules {
		t.row("", r.Direction, peer(r.Peer), r.Proto, r.Ports, strings.Join(r.Policies, ","))
		if len(r.Peer.Pods) > 0 {
			t.rowRaw("", "", "  pods: "+strings.Join(r.Peer.Pods, ","))
		}
	}
	return t.flush()
}

func ctCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "ct", Short: "Conntrack entries of the datapath"}
	var pod, service, proto string
	list := &cobra.Command{
		Use:   "list",
		Short: "Live conntrack entries, named: service flows with their backend, replies, flows policy let through",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			for k, v := range map[string]string{"pod": pod, "service": service, "proto": strings.ToLower(proto)} {
				if v != "" {
					q.Set(k, v)
				}
			}
			return query(cmd, g, observeapi.PathConntrack, q, printConntrack)
		},
	}
	list.Flags().StringVar(&pod, "pod", "", "only entries of this pod (NAMESPACE/NAME), either side or the backend")
	list.Flags().StringVar(&service, "service", "", "only entries of this Service (NAMESPACE/NAME)")
	list.Flags().StringVar(&proto, "proto", "", "only this protocol: tcp, udp, sctp, icmp, icmpv6")
	c.AddCommand(list)
	return c
}

func printConntrack(w io.Writer, remote bool, res []result[[]observeapi.ConntrackEntry]) error {
	t := newTable(w, remote, "PROTO", "KIND", "SOURCE", "DESTINATION", "SERVICE", "BACKEND", "FLAGS", "EXPIRES")
	for _, r := range res {
		for _, e := range r.val {
			be := ""
			switch {
			case e.Backend != nil:
				be = addrPort(*e.Backend)
			case e.Client != nil: // a masq entry: whom the replies go back to
				be = "client " + addrPort(*e.Client)
			}
			t.row(r.agent.Node, strings.ToUpper(e.Proto), e.Kind, addrPort(e.Src), addrPort(e.Dst), e.Service, be,
				strings.Join(e.Flags, ","), roundDuration(e.ExpiresIn))
		}
	}
	return t.flush()
}

func dropsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "drops",
		Short: "Dropped packets by reason and hook, since the datapath was loaded and in the last minute",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return query(cmd, g, observeapi.PathDrops, nil, printDrops)
		},
	}
}

func printDrops(w io.Writer, remote bool, res []result[observeapi.Drops]) error {
	t := newTable(w, remote, "REASON", "HOOK", "DIRECTION", "PACKETS", "BYTES", "LAST-MINUTE", "SINCE")
	for _, r := range res {
		since := "-"
		if !r.val.Since.IsZero() {
			since = r.val.Since.Local().Format(time.DateTime)
		}
		if len(r.val.Drops) == 0 && remote {
			t.row(r.agent.Node, "(none)", "", "", "0", "0", "0", since)
		}
		for _, d := range r.val.Drops {
			t.row(r.agent.Node, d.Reason, d.Hook, d.Direction, strconv.FormatUint(d.Packets, 10),
				strconv.FormatUint(d.Bytes, 10), strconv.FormatUint(d.LastMinute, 10), since)
		}
	}
	return t.flush()
}

// indent prefixes every line written through it.
type indent struct {
	w      io.Writer
	prefix string
	mid    bool // inside a line
}

func (in *indent) Write(p []byte) (int, error) {
	var b strings.Builder
	for _, c := range string(p) {
		if !in.mid {
			b.WriteString(in.prefix)
			in.mid = true
		}
		b.WriteRune(c)
		if c == '\n' {
			in.mid = false
		}
	}
	if _, err := io.WriteString(in.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}
