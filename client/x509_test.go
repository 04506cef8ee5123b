package client_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"testing"
	"time"

	"amqphub/client"
)

// selfSigned makes a certificate for name, valid for an hour.
func selfSigned(t *testing.T, name string, server bool) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{name}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// TestX509ClientPresentsCertificate: an X.509 client sends its
// certificate in the TLS handshake and nothing else to authenticate (no
// SASL, no CBS). The hub does not authenticate X.509 devices yet, so
// against it the client's first link is refused with ErrUnauthorized.
func TestX509ClientPresentsCertificate(t *testing.T) {
	checkNoLeaks(t)
	devCert := selfSigned(t, "dev1", false)
	srvCert := selfSigned(t, "localhost", true)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientAuth: tls.RequireAnyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type seen struct {
		cert   []byte
		header []byte
	}
	got := make(chan seen, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- seen{}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			got <- seen{}
			return
		}
		hdr := make([]byte, 8)
		n, _ := c.Read(hdr)
		var cert []byte
		if pcs := tc.ConnectionState().PeerCertificates; len(pcs) > 0 {
			cert = pcs[0].Raw
		}
		got <- seen{cert, hdr[:n]}
	}()
	pool := x509.NewCertPool()
	pool.AddCert(srvCert.Leaf)
	d, err := client.NewDeviceClientFromX509("localhost", "dev1", "", devCert, &client.DeviceOptions{
		TLSConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		Address:   ln.Addr().String(),
		Retry:     client.RetryOptions{MaxRetries: -1},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := testCtx(t, 15*time.Second)
	if err := d.Connect(ctx); err == nil {
		t.Error("connected to a server that never answered the AMQP header")
	}
	s := <-got
	if !bytes.Equal(s.cert, devCert.Certificate[0]) {
		t.Fatal("the server did not receive the device's certificate")
	}
	// "AMQP" 0 1 0 0: the plain AMQP header, no SASL layer.
	if !bytes.Equal(s.header, []byte{'A', 'M', 'Q', 'P', 0, 1, 0, 0}) {
		t.Errorf("protocol header %q, want AMQP 0 1 0 0 (no SASL)", s.header)
	}

	// Against the hub: the connection opens, the link is refused.
	h := startHub(t, nil)
	o := deviceOpts(h)
	o.Retry.MaxRetries = -1
	hd, err := client.NewDeviceClientFromX509(h.Options.HostName, "dev1", "", devCert, o)
	if err != nil {
		t.Fatal(err)
	}
	defer hd.Close()
	if err := hd.SendEvent(ctx, &client.Message{Body: []byte("x")}); !errors.Is(err, client.ErrUnauthorized) {
		t.Fatalf("X.509 send to the hub: %v, want ErrUnauthorized", err)
	}
}
