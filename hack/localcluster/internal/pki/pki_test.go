package pki

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"testing"
)

func TestIssuedCertificatesVerify(t *testing.T) {
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	parse := func(p Pair) *x509.Certificate {
		b, _ := pem.Decode(p.CertPEM)
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	serving, err := ca.Serving("apiserver", []net.IP{net.ParseIP("192.168.77.2")}, []string{"kubernetes.default.svc"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parse(serving).Verify(x509.VerifyOptions{Roots: roots, DNSName: "192.168.77.2"}); err != nil {
		t.Errorf("serving certificate for the control plane IP: %v", err)
	}
	client, err := ca.Client("admin", "system:masters")
	if err != nil {
		t.Fatal(err)
	}
	c := parse(client)
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if c.Subject.CommonName != "admin" || len(c.Subject.Organization) != 1 || c.Subject.Organization[0] != "system:masters" {
		t.Errorf("client subject %v, want CN=admin O=system:masters (the API server's user and group)", c.Subject)
	}
}
