package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
)

func TestEnsureLocalCA(t *testing.T) {
	dir := t.TempDir()
	cert, caPath, err := EnsureLocalCA(dir, []string{"myhub.local"})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := CAPool(caPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"localhost", "127.0.0.1", "myhub.local"} {
		if _, err := cert.Leaf.Verify(x509Opts(pool, name)); err != nil {
			t.Errorf("certificate does not verify for %s: %v", name, err)
		}
	}
	// A second start reuses the same CA and certificate.
	cert2, caPath2, err := EnsureLocalCA(dir, []string{"myhub.local"})
	if err != nil {
		t.Fatal(err)
	}
	if caPath2 != caPath || string(cert2.Leaf.Raw) != string(cert.Leaf.Raw) {
		t.Fatal("restart re-issued the certificate without reason")
	}
	// A new name re-issues the server certificate from the same CA.
	cert3, _, err := EnsureLocalCA(dir, []string{"other.local"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert3.Leaf.Verify(x509Opts(pool, "other.local")); err != nil {
		t.Fatalf("re-issued certificate: %v", err)
	}
	if c := ServerConfig(cert3); c.MinVersion != tls.VersionTLS12 {
		t.Fatal("TLS below 1.2 allowed")
	}
}

func x509Opts(pool *x509.CertPool, name string) x509.VerifyOptions {
	return x509.VerifyOptions{Roots: pool, DNSName: name}
}
