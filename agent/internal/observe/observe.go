// Package observe serves the agent's observer API (internal/observeapi):
// what the datapath holds and the flows it saw, on a unix socket for the
// `sluice` CLI on the node or in the agent's pod, and on a TLS port for the
// CLI on a workstation, which reaches it through the API server's pod
// proxy with a token of the observer service account.
package observe

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sluice-net/sluice/internal/observeapi"
)

// Source is what the server shows; the agent implements it.
type Source interface {
	Status() observeapi.Status
	Services() []observeapi.Service
	Endpoints() []observeapi.Endpoint
	// Policy is the policy of the pod NAMESPACE/NAME on this node; an
	// error wrapping ErrNotFound when no such pod is here.
	Policy(pod string) (observeapi.Policy, error)
	Conntrack(f ConntrackFilter) ([]observeapi.ConntrackEntry, error)
	Drops() observeapi.Drops
	// Flows: the buffered flows matching f (oldest first, honouring
	// f.Last), then, when f.Follow, the following ones on the channel
	// until ctx ends.
	Flows(ctx context.Context, f observeapi.FlowFilter) (buffered []observeapi.Flow, follow <-chan observeapi.Flow)
}

// ConntrackFilter selects conntrack entries; empty fields match all.
type ConntrackFilter struct {
	Pod     string // NAMESPACE/NAME: either side (or the backend) is the pod
	Service string // NAMESPACE/NAME: entries of the Service's frontends
	Proto   string // lower case: tcp, udp, sctp, icmp, icmpv6
}

// ErrNotFound is what a Source's error wraps when the thing asked for
// (a pod) is not on this node: the server answers 404.
var ErrNotFound = errors.New("not found")

// ErrUnauthenticated is what a token reviewer's error wraps when it
// refuses a token (401); any other error of a reviewer means the token
// could not be reviewed (503).
var ErrUnauthenticated = errors.New("unauthenticated")

// Options says where to serve.
type Options struct {
	// Socket is the unix socket (mode 0600: root only needs no token);
	// "" serves none.
	Socket string
	// Addr is the TLS listen address for remote observers (":4245"); ""
	// serves none.
	Addr string
	// Review authenticates a remote request's token (TokenHeader); nil
	// refuses every remote request.
	Review func(ctx context.Context, token string) error
}

// protos are the ConntrackFilter.Proto values.
var protos = []string{"tcp", "udp", "sctp", "icmp", "icmpv6"}

// flowWriteTimeout bounds one write of a flow to a client: a client that
// stops reading loses its stream rather than holding it open forever.
const flowWriteTimeout = 30 * time.Second

// Serve serves src on the unix socket and the TLS address of opts until
// ctx ends (then it returns nil) or a listener fails.
func Serve(ctx context.Context, log *slog.Logger, opts Options, src Source) error {
	if opts.Socket == "" && opts.Addr == "" {
		<-ctx.Done()
		return nil
	}
	var servers []*http.Server
	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}
	if opts.Socket != "" {
		l, err := listenUnix(opts.Socket)
		if err != nil {
			return err
		}
		listeners = append(listeners, l)
		servers = append(servers, newServer(log, Handler(log, src)))
	}
	if opts.Addr != "" {
		cert, err := selfSignedCert()
		if err != nil {
			closeAll()
			return err
		}
		l, err := net.Listen("tcp", opts.Addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("observer: listen on %s: %w", opts.Addr, err)
		}
		l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		listeners = append(listeners, l)
		servers = append(servers, newServer(log, Authenticate(log, opts.Review, Handler(log, src))))
	}
	errc := make(chan error, len(servers))
	for i, srv := range servers {
		go func() {
			log.Info("observer API serving", "addr", listeners[i].Addr().String())
			err := srv.Serve(listeners[i])
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			errc <- err
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("observer: serve: %w", err)
	}
	for _, srv := range servers {
		// Streams of --follow never end by themselves: close, not Shutdown.
		_ = srv.Close()
	}
	// Closing the unix listener removed its socket.
	return err
}

func newServer(log *slog.Logger, h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second, // the TLS handshake too
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// listenUnix listens on path, replacing a stale socket of an earlier run,
// with mode 0600 so only root (the agent's user) may connect.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("observer: socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("observer: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("observer: remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("observer: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("observer: socket mode: %w", err)
	}
	return l, nil
}

// selfSignedCert makes the TLS port's certificate. Nobody verifies it: the
// API server's pod proxy does not check pods' certificates; TLS keeps the
// token and the flows off the wire.
func selfSignedCert() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("observer: key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "sluice-agent observer"},
		DNSNames:     []string{host},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("observer: certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// Authenticate lets through the requests whose TokenHeader review accepts;
// others get 401 (a refused or missing token) or 503 (the token could not
// be reviewed).
func Authenticate(log *slog.Logger, review func(ctx context.Context, token string) error, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token := r.Header.Get(observeapi.TokenHeader)
		var err error
		switch {
		case review == nil:
			err = fmt.Errorf("%w: this agent accepts no remote observers", ErrUnauthenticated)
		case token == "":
			err = fmt.Errorf("%w: no token: send the observer service account's token (audience %q) in header %s",
				ErrUnauthenticated, observeapi.TokenAudience, observeapi.TokenHeader)
		default:
			err = review(r.Context(), token)
		}
		if err != nil {
			status := http.StatusUnauthorized
			if !errors.Is(err, ErrUnauthenticated) {
				status = http.StatusServiceUnavailable
			}
			log.Debug("observer: request refused", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
			httpError(w, status, err.Error())
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Handler serves the API's paths from src, with no authentication.
func Handler(log *slog.Logger, src Source) http.Handler {
	mux := http.NewServeMux()
	get := func(path string, params []string, fn func(w http.ResponseWriter, r *http.Request, q url.Values)) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				w.Header().Set("Allow", "GET")
				httpError(w, http.StatusMethodNotAllowed, "method "+r.Method+": want GET")
				return
			}
			q := r.URL.Query()
			for k := range q {
				if !slices.Contains(params, k) {
					want := "none"
					if len(params) > 0 {
						want = strings.Join(params, ", ")
					}
					httpError(w, http.StatusBadRequest, fmt.Sprintf("unknown parameter %q: %s takes %s", k, path, want))
					return
				}
			}
			fn(w, r, q)
		})
	}
	get(observeapi.PathStatus, nil, func(w http.ResponseWriter, _ *http.Request, _ url.Values) {
		writeJSON(w, src.Status())
	})
	get(observeapi.PathServices, nil, func(w http.ResponseWriter, _ *http.Request, _ url.Values) {
		writeJSON(w, nonNil(src.Services()))
	})
	get(observeapi.PathEndpoints, nil, func(w http.ResponseWriter, _ *http.Request, _ url.Values) {
		writeJSON(w, nonNil(src.Endpoints()))
	})
	get(observeapi.PathPolicy, []string{"pod"}, func(w http.ResponseWriter, _ *http.Request, q url.Values) {
		pod := q.Get("pod")
		if err := checkName("pod", pod, true); err != nil {
			httpError(w, http.StatusBadRequest, err.Error())
			return
		}
		p, err := src.Policy(pod)
		if err != nil {
			sourceError(w, log, err)
			return
		}
		writeJSON(w, p)
	})
	get(observeapi.PathConntrack, []string{"pod", "service", "proto"}, func(w http.ResponseWriter, _ *http.Request, q url.Values) {
		f := ConntrackFilter{Pod: q.Get("pod"), Service: q.Get("service"), Proto: strings.ToLower(q.Get("proto"))}
		for _, p := range []struct{ name, v string }{{"pod", f.Pod}, {"service", f.Service}} {
			if err := checkName(p.name, p.v, false); err != nil {
				httpError(w, http.StatusBadRequest, err.Error())
				return
			}
		}
		if f.Proto != "" && !slices.Contains(protos, f.Proto) {
			httpError(w, http.StatusBadRequest, fmt.Sprintf("proto %q: want one of %s", q.Get("proto"), strings.Join(protos, ", ")))
			return
		}
		entries, err := src.Conntrack(f)
		if err != nil {
			sourceError(w, log, err)
			return
		}
		writeJSON(w, nonNil(entries))
	})
	get(observeapi.PathDrops, nil, func(w http.ResponseWriter, _ *http.Request, _ url.Values) {
		d := src.Drops()
		d.Drops = nonNil(d.Drops)
		writeJSON(w, d)
	})
	get(observeapi.PathFlows, []string{"pod", "namespace", "service", "verdict", "since", "follow", "last"},
		func(w http.ResponseWriter, r *http.Request, q url.Values) {
			f, err := observeapi.ParseFlowFilter(q)
			if err != nil {
				httpError(w, http.StatusBadRequest, err.Error())
				return
			}
			serveFlows(w, r, log, src, f)
		})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpError(w, http.StatusNotFound, fmt.Sprintf("no such path %q: this agent serves %s", r.URL.Path, strings.Join([]string{
			observeapi.PathStatus, observeapi.PathServices, observeapi.PathEndpoints, observeapi.PathPolicy,
			observeapi.PathConntrack, observeapi.PathDrops, observeapi.PathFlows}, ", ")))
	})
	return mux
}

// serveFlows writes the buffered flows, then the following ones, one JSON
// object a line, each flushed as it is written. Only this request's
// goroutine waits on a slow client: the source's channel is its own.
func serveFlows(w http.ResponseWriter, r *http.Request, log *slog.Logger, src Source, f observeapi.FlowFilter) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel() // tells the source this follower is gone
	buffered, follow := src.Flows(ctx, f)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	// The headers go out at once, before any flow: a merging client knows
	// the stream is open.
	if err := rc.Flush(); err != nil {
		return
	}
	enc := json.NewEncoder(w)
	send := func(fl observeapi.Flow) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(flowWriteTimeout))
		if err := enc.Encode(fl); err != nil {
			log.Debug("observer: flow stream ended", "remote", r.RemoteAddr, "err", err)
			return false
		}
		return rc.Flush() == nil
	}
	for _, fl := range buffered {
		if !send(fl) {
			return
		}
	}
	if !f.Follow || follow == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case fl, ok := <-follow:
			if !ok || !send(fl) {
				return
			}
		}
	}
}

// checkName checks a NAMESPACE/NAME parameter.
func checkName(param, v string, required bool) error {
	if v == "" {
		if required {
			return fmt.Errorf("missing parameter %s: want NAMESPACE/NAME", param)
		}
		return nil
	}
	ns, name, ok := strings.Cut(v, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("%s %q: want NAMESPACE/NAME", param, v)
	}
	return nil
}

func sourceError(w http.ResponseWriter, log *slog.Logger, err error) {
	if errors.Is(err, ErrNotFound) {
		httpError(w, http.StatusNotFound, err.Error())
		return
	}
	log.Warn("observer: request failed", "err", err)
	httpError(w, http.StatusInternalServerError, err.Error())
}

func httpError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	fmt.Fprintln(w, msg)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// nonNil makes an empty list [] rather than null in JSON.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
