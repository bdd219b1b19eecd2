// Package compile turns Services and EndpointSlices into the complete
// desired set of service frontends and their backends for one node, the
// way kube-proxy decides them. It is pure: no kernel, no API server, so
// every rule is table-tested (compile_test.go).
package compile

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/agent/internal/apiobj"
	"github.com/sluice-net/sluice/bpf"
)

// Labels and annotations with meaning for a service proxy.
const (
	LabelServiceProxyName  = "service.kubernetes.io/service-proxy-name"
	LabelServiceName       = discovery.LabelServiceName
	AnnotationTopologyMode = "service.kubernetes.io/topology-mode"
	// AnnotationSourceRanges is the older form of
	// spec.loadBalancerSourceRanges (comma-separated), which kube-proxy
	// still reads when the field is empty.
	AnnotationSourceRanges = v1.AnnotationLoadBalancerSourceRangesKey
	// DefaultAffinityTimeout is ClientIP affinity's default, 3 hours.
	DefaultAffinityTimeout = 10800
)

// Scope says which traffic a frontend answers (the datapath's svc_scope).
type Scope uint8

const (
	// ScopeInternal: traffic from pods and host processes on the node.
	ScopeInternal = Scope(bpf.ScopeInternal)
	// ScopeExternal: traffic entering the node from outside (NodePort,
	// ExternalIPs, LoadBalancer IPs).
	ScopeExternal = Scope(bpf.ScopeExternal)
)

// Node is what the compiler needs to know about the node it runs on.
type Node struct {
	Name string
	Zone string // topology.kubernetes.io/zone
	// NodePortAddrs are the node addresses NodePorts answer on.
	NodePortAddrs []netip.Addr
	// Addrs are all the node's addresses (InternalIP and ExternalIP): the
	// node's own sockets may use a LoadBalancer IP whose source ranges
	// hold one of them.
	Addrs []netip.Addr
}

// Frontend is one address, port and protocol a service answers on.
type Frontend struct {
	Addr  netip.AddrPort
	Proto uint8
	Scope Scope
}

func (f Frontend) String() string {
	s := "internal"
	if f.Scope == ScopeExternal {
		s = "external"
	}
	return fmt.Sprintf("%s/%d/%s", f.Addr, f.Proto, s)
}

// Backend is one endpoint of a frontend.
type Backend struct {
	Addr        netip.AddrPort
	Local       bool // on this node
	Terminating bool // the endpoint is terminating
}

// Entry is the desired state of one frontend.
type Entry struct {
	Service  types.NamespacedName
	PortName string
	// Kind is what the frontend's address is to the Service: KindClusterIP,
	// KindExternalIP, KindLoadBalancer or KindNodePort.
	Kind string
	// Created is the Service's creationTimestamp: of several Services
	// claiming one frontend, the oldest owns it (see Resolve).
	Created time.Time
	// Backends that may take new connections (the Maglev table), sorted by
	// address. Empty means the frontend rejects.
	Backends []Backend
	// Draining are the frontend's other terminating endpoints, sorted by
	// address: new connections never pick them, but they keep their
	// backend (ID and entry) while the EndpointSlice lists them, so the
	// connections they already serve finish there, as under kube-proxy.
	Draining []Backend
	// AffinityTimeout is ClientIP affinity in seconds; 0 means none.
	AffinityTimeout uint32
	// LocalOnly: only this node's endpoints serve (a Local traffic policy).
	LocalOnly bool
	// TerminatingFallback: no endpoint is ready, so serving terminating
	// endpoints take the traffic.
	TerminatingFallback bool
	// Restricted: a LoadBalancer IP of a Service with
	// loadBalancerSourceRanges, which only clients in SourceRanges (those
	// of the frontend's family, masked and sorted) may use. Empty
	// SourceRanges then admit nobody: the Service's ranges are all of the
	// other family, or none of them parses.
	Restricted   bool
	SourceRanges []netip.Prefix
	// NodeInRanges: a node address is in SourceRanges, so the node's own
	// sockets, whose source address is chosen later, may use it.
	NodeInRanges bool
	// ServicesOnly (scope external only): the address is a LoadBalancer
	// IP or an ExternalIP that is none of the node's addresses, so it
	// serves Services only, and traffic from outside to any of its ports
	// that no Service serves is dropped rather than handed to the stack.
	ServicesOnly bool
}

// Kinds of frontend (Entry.Kind).
const (
	KindClusterIP    = "ClusterIP"
	KindExternalIP   = "ExternalIP"
	KindLoadBalancer = "LoadBalancer"
	KindNodePort     = "NodePort"
)

// Desired is the complete set of frontends for a node.
type Desired map[Frontend]Entry

// Skipped says why the proxy ignores a Service, or "" when it handles it.
func Skipped(svc *v1.Service) string {
	switch {
	case svc.Labels[LabelServiceProxyName] != "":
		return "handled by service proxy " + svc.Labels[LabelServiceProxyName]
	case svc.Spec.Type == v1.ServiceTypeExternalName:
		return "ExternalName service"
	case svc.Spec.ClusterIP == v1.ClusterIPNone:
		return "headless service"
	}
	return ""
}

// Conflict is a frontend several Services claim: Owner, the oldest, gets
// it; the Losers get no traffic there.
type Conflict struct {
	Frontend Frontend
	Owner    types.NamespacedName
	Losers   []types.NamespacedName // oldest first
}

func (c Conflict) String() string {
	return fmt.Sprintf("%s: owned by %s, also claimed by %v", c.Frontend, c.Owner, c.Losers)
}

// Older orders the claims of two Services on a frontend: the older
// Service (creationTimestamp) first, ties broken by namespace/name.
func Older(a, b Entry) int {
	if c := a.Created.Compare(b.Created); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Service.Namespace, b.Service.Namespace); c != 0 {
		return c
	}
	return cmp.Compare(a.Service.Name, b.Service.Name)
}

// Resolve gives a frontend to one of the Services claiming it (claims, one
// entry each, in any order): the oldest. With more than one claim it also
// returns the Conflict.
func Resolve(f Frontend, claims []Entry) (Entry, *Conflict) {
	owner := slices.MinFunc(claims, Older)
	if len(claims) == 1 {
		return owner, nil
	}
	c := &Conflict{Frontend: f, Owner: owner.Service}
	rest := slices.Clone(claims)
	slices.SortFunc(rest, Older)
	for _, e := range rest[1:] {
		c.Losers = append(c.Losers, e.Service)
	}
	return owner, c
}

// Compile computes the desired frontends of every Service on this node;
// a frontend several Services claim goes to the oldest (Resolve), and the
// conflicts are returned, sorted by frontend.
func Compile(services []*v1.Service, slices []*discovery.EndpointSlice, node Node) (Desired, []Conflict, []error) {
	bySvc := map[types.NamespacedName][]*discovery.EndpointSlice{}
	for _, s := range slices {
		name := s.Labels[LabelServiceName]
		if name == "" {
			continue
		}
		key := types.NamespacedName{Namespace: s.Namespace, Name: name}
		bySvc[key] = append(bySvc[key], s)
	}
	claims := map[Frontend][]Entry{}
	var errs []error
	for _, svc := range services {
		key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		d, e := Service(svc, bySvc[key], node)
		for f, entry := range d {
			claims[f] = append(claims[f], entry)
		}
		errs = append(errs, e...)
	}
	out := make(Desired, len(claims))
	var conflicts []Conflict
	for f, cs := range claims {
		owner, c := Resolve(f, cs)
		out[f] = owner
		if c != nil {
			conflicts = append(conflicts, *c)
		}
	}
	sortConflicts(conflicts)
	return out, conflicts, errs
}

// sortConflicts sorts conflicts by frontend.
func sortConflicts(cs []Conflict) {
	slices.SortFunc(cs, func(a, b Conflict) int { return cmp.Compare(a.Frontend.String(), b.Frontend.String()) })
}

// Service compiles one Service with its EndpointSlices: the unit an
// incremental sync recompiles when either changes. A skipped Service
// compiles to nothing.
func Service(svc *v1.Service, slices []*discovery.EndpointSlice, node Node) (Desired, []error) {
	out := Desired{}
	if Skipped(svc) != "" {
		return out, nil
	}
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	return out, compileService(out, svc, key, slices, node)
}

// compileService adds the frontends of every port of svc, in each IP
// family, to out, and returns what it had to leave out.
func compileService(out Desired, svc *v1.Service, key types.NamespacedName, slices []*discovery.EndpointSlice, node Node) []error {
	var errs []error
	bad := func(field, reason string) {
		// A malformed field costs that field (an address, a port); the rest
		// of the Service still compiles.
		errs = append(errs, &apiobj.Error{Kind: "Service", Object: key, Field: field, Reason: reason})
	}
	s := settingsOf(svc, key, bad)
	for i, sp := range svc.Spec.Ports {
		proto, ok := apiobj.Protocol(sp.Protocol)
		if !ok {
			bad(fmt.Sprintf("spec.ports[%d].protocol", i), fmt.Sprintf("%q is not TCP, UDP or SCTP", sp.Protocol))
			continue
		}
		if sp.Port <= 0 || sp.Port > 65535 {
			bad(fmt.Sprintf("spec.ports[%d].port", i), fmt.Sprintf("%d is not a port", sp.Port))
			continue
		}
		eps := endpointsFor(slices, sp.Name, sp.Protocol, node)
		for _, fam := range []family{ipv4, ipv6} {
			s.addPort(out, sp, proto, fam, eps, node)
		}
	}
	return errs
}

// family is an IP family: a frontend gets backends of its own family only.
type family uint8

const (
	ipv4 family = iota
	ipv6
)

func familyOf(a netip.Addr) family {
	if a.Is4() {
		return ipv4
	}
	return ipv6
}

// serviceSettings are what every port of a Service compiles with.
type serviceSettings struct {
	key                types.NamespacedName
	created            time.Time
	internal, external []netip.Addr        // clusterIPs; externalIPs and load balancer IPs
	loadBalancer       map[netip.Addr]bool // the external addresses that are load balancer IPs
	affinity           uint32              // ClientIP affinity timeout in seconds, 0: none
	internalLocal      bool                // internalTrafficPolicy Local
	externalLocal      bool                // externalTrafficPolicy Local
	nodePorts          bool                // a NodePort or LoadBalancer Service
	// families are the Service's own IP families: its NodePorts answer in
	// them only.
	families map[family]bool
	topology bool // zone-local routing asked for
	// restricted: the Service lists loadBalancerSourceRanges, which
	// sourceRanges holds (the ones that parse, masked).
	restricted   bool
	sourceRanges []netip.Prefix
}

// settingsOf reads the Service-wide settings, reporting malformed
// addresses to bad.
func settingsOf(svc *v1.Service, key types.NamespacedName, bad func(field, reason string)) *serviceSettings {
	s := &serviceSettings{
		key:           key,
		created:       svc.CreationTimestamp.Time,
		affinity:      affinityTimeout(svc),
		internalLocal: svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal,
		externalLocal: svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal,
		nodePorts:     svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer,
		families:      map[family]bool{},
		topology:      topologyAware(svc),
	}
	var lbIPs []netip.Addr
	s.internal, s.external, lbIPs = serviceAddrs(svc, bad)
	s.loadBalancer = map[netip.Addr]bool{}
	for _, a := range lbIPs {
		s.loadBalancer[a] = true
	}
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		s.sourceRanges, s.restricted = sourceRanges(svc, bad)
	}
	for _, a := range s.internal {
		s.families[familyOf(a)] = true
	}
	for _, f := range svc.Spec.IPFamilies {
		if f == v1.IPv4Protocol {
			s.families[ipv4] = true
		} else {
			s.families[ipv6] = true
		}
	}
	return s
}

// serviceAddrs returns the Service's internal addresses (clusterIPs) and
// external ones (externalIPs, and load balancer IPs of a LoadBalancer),
// reporting those that do not parse to bad.
func serviceAddrs(svc *v1.Service, bad func(field, reason string)) (internal, external, lbIPs []netip.Addr) {
	parse := func(field, s string) (netip.Addr, bool) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			bad(field, fmt.Sprintf("%q is not an IP address", s))
		}
		return a, err == nil
	}
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 && svc.Spec.ClusterIP != "" {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	for i, s := range clusterIPs {
		if a, ok := parse(fmt.Sprintf("spec.clusterIPs[%d]", i), s); ok {
			internal = append(internal, a)
		}
	}
	for i, s := range svc.Spec.ExternalIPs {
		if a, ok := parse(fmt.Sprintf("spec.externalIPs[%d]", i), s); ok {
			external = append(external, a)
		}
	}
	if svc.Spec.Type != v1.ServiceTypeLoadBalancer {
		return internal, external, nil
	}
	for i, ing := range svc.Status.LoadBalancer.Ingress {
		// ipMode Proxy: the load balancer proxies and sends its own
		// address to the nodes, so the IP is the load balancer's alone
		// and kube-proxy leaves it to it, pods' traffic included.
		if ing.IP == "" || ing.IPMode != nil && *ing.IPMode == v1.LoadBalancerIPModeProxy {
			continue
		}
		if a, ok := parse(fmt.Sprintf("status.loadBalancer.ingress[%d].ip", i), ing.IP); ok {
			external = append(external, a)
			lbIPs = append(lbIPs, a)
		}
	}
	return internal, external, lbIPs
}

// sourceRanges reads spec.loadBalancerSourceRanges, or when it is empty
// the annotation kube-proxy also reads. restricted is whether the Service
// lists any range at all: one that does not parse is reported and admits
// nobody, rather than opening the Service to everyone.
func sourceRanges(svc *v1.Service, bad func(field, reason string)) (ranges []netip.Prefix, restricted bool) {
	field, list := "spec.loadBalancerSourceRanges", svc.Spec.LoadBalancerSourceRanges
	if len(list) == 0 {
		if v := strings.TrimSpace(svc.Annotations[AnnotationSourceRanges]); v != "" {
			field, list = "metadata.annotations["+AnnotationSourceRanges+"]", strings.Split(v, ",")
		}
	}
	for i, r := range list {
		p, err := netip.ParsePrefix(strings.TrimSpace(r))
		if err != nil {
			bad(fmt.Sprintf("%s[%d]", field, i), fmt.Sprintf("%q is not a CIDR such as 203.0.113.0/24; it admits no client", r))
			continue
		}
		ranges = append(ranges, p.Masked())
	}
	slices.SortFunc(ranges, netip.Prefix.Compare)
	return slices.Compact(ranges), len(list) > 0
}

// restrict applies the Service's source ranges to the entry of a
// LoadBalancer IP a.
func (s *serviceSettings) restrict(e Entry, a netip.Addr, node Node) Entry {
	if !s.restricted {
		return e
	}
	e.Restricted = true
	for _, p := range s.sourceRanges {
		if p.Addr().Is4() == a.Is4() {
			e.SourceRanges = append(e.SourceRanges, p)
		}
	}
	e.NodeInRanges = slices.ContainsFunc(node.Addrs, func(n netip.Addr) bool {
		return slices.ContainsFunc(e.SourceRanges, func(p netip.Prefix) bool { return p.Contains(n) })
	})
	return e
}

// affinityTimeout is the Service's ClientIP affinity in seconds; 0: none.
func affinityTimeout(svc *v1.Service) uint32 {
	if svc.Spec.SessionAffinity != v1.ServiceAffinityClientIP {
		return 0
	}
	if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		return uint32(*c.ClientIP.TimeoutSeconds)
	}
	return DefaultAffinityTimeout
}

// addPort adds the frontends of one port in one family: on the clusterIPs,
// on the external addresses, and on the node's addresses for a NodePort.
func (s *serviceSettings) addPort(out Desired, sp v1.ServicePort, proto uint8, fam family, eps []endpoint, node Node) {
	all := selectBackends(eps, fam, false, s.topology, node.Zone)
	local := selectBackends(eps, fam, true, false, node.Zone)
	kind := KindClusterIP
	entry := func(sel selection, localOnly bool) Entry {
		return Entry{Service: s.key, PortName: sp.Name, Kind: kind, Created: s.created, Backends: sel.backends, Draining: sel.draining,
			AffinityTimeout: s.affinity, LocalOnly: localOnly, TerminatingFallback: sel.fallback}
	}
	port := uint16(sp.Port)
	for _, a := range s.internal {
		if familyOf(a) != fam {
			continue
		}
		f := Frontend{Addr: netip.AddrPortFrom(a, port), Proto: proto, Scope: ScopeInternal}
		if s.internalLocal {
			out[f] = entry(local, true)
		} else {
			out[f] = entry(all, false)
		}
	}
	addExternal := func(a netip.Addr, port uint16) {
		// Pods reaching an external address get any endpoint, as
		// kube-proxy short-circuits them; traffic from outside honours
		// externalTrafficPolicy. Source ranges hold for both, as
		// kube-proxy filters every packet to a LoadBalancer IP.
		internal, external := entry(all, false), entry(all, false)
		if s.externalLocal {
			external = entry(local, true)
		}
		if kind == KindLoadBalancer {
			internal, external = s.restrict(internal, a, node), s.restrict(external, a, node)
		}
		external.ServicesOnly = kind != KindNodePort && !slices.Contains(node.Addrs, a) && !slices.Contains(node.NodePortAddrs, a)
		out[Frontend{Addr: netip.AddrPortFrom(a, port), Proto: proto, Scope: ScopeInternal}] = internal
		out[Frontend{Addr: netip.AddrPortFrom(a, port), Proto: proto, Scope: ScopeExternal}] = external
	}
	for _, a := range s.external {
		if familyOf(a) == fam {
			kind = KindExternalIP
			if s.loadBalancer[a] {
				kind = KindLoadBalancer
			}
			addExternal(a, port)
		}
	}
	kind = KindNodePort
	if !s.nodePorts || sp.NodePort <= 0 || !s.families[fam] {
		return
	}
	for _, a := range node.NodePortAddrs {
		if familyOf(a) == fam {
			addExternal(a, uint16(sp.NodePort))
		}
	}
}

// topologyAware says whether the service asks for zone-local routing.
func topologyAware(svc *v1.Service) bool {
	if d := svc.Spec.TrafficDistribution; d != nil && (*d == v1.ServiceTrafficDistributionPreferClose ||
		*d == "PreferSameZone") {
		return true
	}
	m := svc.Annotations[AnnotationTopologyMode]
	return m == "Auto" || m == "auto"
}

type endpoint struct {
	addr        netip.AddrPort
	local       bool
	ready       bool
	serving     bool
	terminating bool
	zones       []string
	hinted      bool
}

// endpointsFor collects the endpoints of one service port across slices,
// resolving the target port by the port's name (named targetPorts arrive
// resolved per endpoint slice).
func endpointsFor(slices []*discovery.EndpointSlice, portName string, proto v1.Protocol, node Node) []endpoint {
	if proto == "" {
		proto = v1.ProtocolTCP
	}
	var out []endpoint
	seen := map[netip.AddrPort]bool{}
	for _, s := range slices {
		if s.AddressType != discovery.AddressTypeIPv4 && s.AddressType != discovery.AddressTypeIPv6 {
			continue
		}
		var port int32 = -1
		for _, p := range s.Ports {
			pn := ""
			if p.Name != nil {
				pn = *p.Name
			}
			pp := v1.ProtocolTCP
			if p.Protocol != nil {
				pp = *p.Protocol
			}
			if pn == portName && pp == proto && p.Port != nil {
				port = *p.Port
			}
		}
		if port <= 0 || port > 65535 {
			continue
		}
		for _, ep := range s.Endpoints {
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			serving := ready
			if ep.Conditions.Serving != nil {
				serving = *ep.Conditions.Serving
			}
			terminating := ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
			var zones []string
			if ep.Hints != nil {
				for _, z := range ep.Hints.ForZones {
					zones = append(zones, z.Name)
				}
			}
			for _, as := range ep.Addresses {
				a, err := netip.ParseAddr(as)
				if err != nil {
					continue // the API server validates addresses; skip garbage
				}
				ap := netip.AddrPortFrom(a, uint16(port))
				if seen[ap] {
					continue
				}
				seen[ap] = true
				out = append(out, endpoint{
					addr: ap, local: ep.NodeName != nil && *ep.NodeName == node.Name,
					ready: ready, serving: serving, terminating: terminating,
					zones: zones, hinted: ep.Hints != nil && len(zones) > 0,
				})
			}
		}
	}
	return out
}

type selection struct {
	backends []Backend // new connections pick these
	draining []Backend // terminating endpoints kept for their connections
	fallback bool
}

// selectBackends applies kube-proxy's rules: ready endpoints first; when
// none is ready, serving-and-terminating ones; optionally only local ones;
// with topology, only same-zone ones when every endpoint carries hints and
// some name this zone. Every other terminating endpoint (of the family,
// local if asked) drains: it keeps serving the connections it has.
func selectBackends(eps []endpoint, fam family, localOnly, topology bool, zone string) selection {
	var cands []endpoint
	for _, e := range eps {
		if familyOf(e.addr.Addr()) == fam && (!localOnly || e.local) {
			cands = append(cands, e)
		}
	}
	sel := pickBackends(cands, topology, zone)
	picked := map[netip.AddrPort]bool{}
	for _, b := range sel.backends {
		picked[b.Addr] = true
	}
	for _, e := range cands {
		if e.terminating && !picked[e.addr] {
			sel.draining = append(sel.draining, Backend{Addr: e.addr, Local: e.local, Terminating: true})
		}
	}
	byAddr := func(a, b Backend) int { return cmp.Compare(a.Addr.String(), b.Addr.String()) }
	slices.SortFunc(sel.backends, byAddr)
	slices.SortFunc(sel.draining, byAddr)
	return sel
}

// pickBackends chooses among cands the backends new connections pick.
func pickBackends(cands []endpoint, topology bool, zone string) selection {
	if topology && zone != "" {
		allHinted, any := true, false
		for _, e := range cands {
			allHinted = allHinted && e.hinted
			any = any || slices.Contains(e.zones, zone)
		}
		if allHinted && any {
			var inZone []endpoint
			for _, e := range cands {
				if slices.Contains(e.zones, zone) {
					inZone = append(inZone, e)
				}
			}
			cands = inZone
		}
	}
	var sel selection
	for _, e := range cands {
		if e.ready {
			sel.backends = append(sel.backends, Backend{Addr: e.addr, Local: e.local})
		}
	}
	if len(sel.backends) == 0 {
		for _, e := range cands {
			if e.serving && e.terminating {
				sel.backends = append(sel.backends, Backend{Addr: e.addr, Local: e.local, Terminating: true})
			}
		}
		sel.fallback = len(sel.backends) > 0
	}
	return sel
}

// HealthCheck is what a Service's healthCheckNodePort reports: external
// load balancers send traffic only to nodes with local endpoints.
type HealthCheck struct {
	Port           uint16
	Service        types.NamespacedName
	LocalEndpoints int
}

// ServiceHealthCheck returns the health check of a LoadBalancer Service
// with externalTrafficPolicy Local, counting this node's ready endpoints as
// kube-proxy does; ok is false for every other Service.
func ServiceHealthCheck(svc *v1.Service, slices []*discovery.EndpointSlice, node Node) (hc HealthCheck, ok bool) {
	if Skipped(svc) != "" || svc.Spec.Type != v1.ServiceTypeLoadBalancer ||
		svc.Spec.ExternalTrafficPolicy != v1.ServiceExternalTrafficPolicyLocal ||
		svc.Spec.HealthCheckNodePort <= 0 || svc.Spec.HealthCheckNodePort > 65535 {
		return hc, false
	}
	hc = HealthCheck{Port: uint16(svc.Spec.HealthCheckNodePort), Service: types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}}
	local := map[string]bool{}
	for _, s := range slices {
		for _, ep := range s.Endpoints {
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			if ready && ep.NodeName != nil && *ep.NodeName == node.Name && len(ep.Addresses) > 0 {
				local[ep.Addresses[0]] = true
			}
		}
	}
	hc.LocalEndpoints = len(local)
	return hc, true
}
