package shim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sluice-net/sluice/hack/localcluster/internal/nsexec"
)

// probe runs one readiness check the way the kubelet does: TCP and HTTP
// from the node to the pod IP, exec inside the pod's network namespace.
func (s *Shim) probe(ctx context.Context, p *v1.Probe, c *v1.Container, podIP string, target nsexec.Target) error {
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case p.TCPSocket != nil:
		port, err := resolvePort(p.TCPSocket.Port, c)
		if err != nil {
			return err
		}
		host := p.TCPSocket.Host
		if host == "" {
			host = podIP
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case p.HTTPGet != nil:
		port, err := resolvePort(p.HTTPGet.Port, c)
		if err != nil {
			return err
		}
		host := p.HTTPGet.Host
		if host == "" {
			host = podIP
		}
		scheme := "http"
		if p.HTTPGet.Scheme == v1.URISchemeHTTPS {
			scheme = "https"
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+net.JoinHostPort(host, strconv.Itoa(port))+p.HTTPGet.Path, nil)
		if err != nil {
			return err
		}
		for _, h := range p.HTTPGet.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe answered %d", resp.StatusCode)
		}
		return nil
	case p.Exec != nil:
		if len(p.Exec.Command) == 0 {
			return errors.New("exec probe without a command")
		}
		argv := append([]string{HostPath(p.Exec.Command[0], s.cfg.Agnhost)}, p.Exec.Command[1:]...)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		if err := nsexec.Start(target, cmd); err != nil {
			return err
		}
		return cmd.Wait()
	default:
		return errors.New("probe type not supported by the local cluster (tcpSocket, httpGet and exec are)")
	}
}

// resolvePort turns a probe's port, a number or a container port name,
// into a number.
func resolvePort(port intstr.IntOrString, c *v1.Container) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, port.StrVal)
}
