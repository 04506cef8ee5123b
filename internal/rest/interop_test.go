package rest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"amqphub/internal/auth"
	"amqphub/internal/registry"
	"amqphub/internal/sas"
)

// testCA issues a CA certificate and a server certificate for ip, and
// returns the TLS config for the server and the CA in PEM for the client.
func testCA(t *testing.T, ip net.IP) (*tls.Config, []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "amqphub test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: ip.String()},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{ip},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}},
		MinVersion:   tls.VersionTLS12,
	}
	return cfg, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

// listen443 binds port 443 on a random 127.x.y.z address, because the
// azure-iothub Registry always dials port 443 of the connection string's
// HostName; a random loopback address keeps parallel test runs apart.
func listen443(t *testing.T) net.Listener {
	t.Helper()
	var last error
	for range 20 {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		ip := net.IPv4(127, b[0]%254+1, b[1]%254+1, b[2]%254+1)
		ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "443"))
		if err == nil {
			return ln
		}
		last = err
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			break
		}
	}
	t.Fatalf("cannot listen on port 443 of a loopback address (%v): azure-iothub's Registry only ever connects to https://{HostName}:443, so this test needs root or CAP_NET_BIND_SERVICE (or net.ipv4.ip_unprivileged_port_start<=443)", last)
	return nil
}

// TestNodeRegistryInterop runs interop/node/test/registry.test.js — the
// official azure-iothub Registry client — against the handler served over
// TLS on port 443, the way the hub binary must serve it.
func TestNodeRegistryInterop(t *testing.T) {
	nodeDir, err := filepath.Abs(filepath.Join("..", "..", "interop", "node"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("node is not on PATH (%v); install Node.js 20+ and run `npm ci` in %s", err, nodeDir)
	}
	if _, err := os.Stat(filepath.Join(nodeDir, "node_modules", "azure-iothub")); err != nil {
		t.Fatalf("azure-iothub is not installed (%v); run `npm ci` in %s", err, nodeDir)
	}

	ln := listen443(t)
	ip := ln.Addr().(*net.TCPAddr).IP
	tlsCfg, caPEM := testCA(t, ip)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	reg, err := registry.OpenPebble("", registry.PebbleOptions{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	hostName := ip.String()
	a, err := auth.New(auth.Config{HostName: hostName, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{Registry: reg, Auth: a})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: tlsCfg, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	}()

	connStr := func(policy, key string) string {
		return sas.IoTHubConnectionString{HostName: hostName, SharedAccessKeyName: policy, SharedAccessKey: key}.String()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "--test", "--test-reporter=spec", filepath.Join("test", "registry.test.js"))
	cmd.Dir = nodeDir
	cmd.Env = append(os.Environ(),
		"AMQPHUB_SERVICE_CONNSTR="+connStr(auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey),
		"AMQPHUB_REGISTRY_READ_CONNSTR="+connStr(auth.PolicyRegistryRead, auth.DevRegistryReadPrimaryKey),
		"NODE_EXTRA_CA_CERTS="+caFile,
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test registry.test.js against https://%s:443: %v\n%s", hostName, err, out)
	}
	t.Logf("node --test registry.test.js against https://%s:443:\n%s", hostName, out)
	if ds, err := reg.ListDevices(context.Background(), "", 0); err != nil || len(ds) != 0 {
		t.Errorf("devices left behind by the Node test: %d, %v", len(ds), err)
	}
}
