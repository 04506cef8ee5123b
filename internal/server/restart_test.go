package server_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"amqphub/internal/auth"
	"amqphub/internal/registry"
	"amqphub/internal/server"
	"amqphub/internal/testutil"
	"amqphub/internal/tlsutil"
)

// TestRegistrySurvivesRestart: devices created through the store are there
// after the hub stops and starts on the same data directory.
func TestRegistrySurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	opts := server.Options{DataDir: dir, AMQPAddr: "127.0.0.1:0", AMQPSAddr: "127.0.0.1:0", HTTPSAddr: "off"}
	s, err := server.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d, err := s.Registry.CreateDevice(ctx, registry.Device{DeviceID: "persisted"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := server.Start(opts)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer s2.Close()
	got, err := s2.Registry.GetDevice(ctx, "persisted")
	if err != nil {
		t.Fatalf("device after restart: %v", err)
	}
	if got.Authentication.SymmetricKey.PrimaryKey != d.Authentication.SymmetricKey.PrimaryKey || got.GenerationID != d.GenerationID {
		t.Fatal("device changed across the restart")
	}
	// Its key still authenticates.
	tok := deviceToken(t, s2.Options.HostName, "persisted", got.Authentication.SymmetricKey.PrimaryKey, time.Hour)
	if _, err := dialPlain(t, s2, "persisted@sas.amqphub", tok); err != nil {
		t.Fatalf("SASL PLAIN after restart: %v", err)
	}
}

// TestNoSecretsInLogs drives successful and failed authentications at
// debug level and checks that no key, token or signature reaches the log.
func TestNoSecretsInLogs(t *testing.T) {
	var logs testutil.LockedBuffer
	s := startAuthHub(t, func(o *server.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	host := s.Options.HostName
	good := deviceToken(t, host, "d1", d1Key, time.Hour)
	bad := deviceToken(t, host, "d1", d3Key, time.Hour)
	owner := policyToken(t, host, "iothubowner", auth.DevIoTHubOwnerPrimaryKey, time.Hour)
	dialPlain(t, s, "d1@sas.amqphub", good)
	dialPlain(t, s, "d1@sas.amqphub", bad)
	dialPlain(t, s, "iothubowner@sas.root.amqphub", owner)
	dialPlain(t, s, "service@sas.root.amqphub", owner)
	c, err := dialPlain(t, s, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	cbs := newCBS(t, ctx, sess)
	cbs.putToken(ctx, "1", host+"/devices/d1", bad)
	cbs.putToken(ctx, "2", host+"/devices/d1", good)
	out := logs.String()
	if out == "" {
		t.Fatal("nothing was logged; the test would prove nothing")
	}
	for _, tok := range []string{good, bad, owner} {
		sig := tok[strings.Index(tok, "sig=")+4:]
		sig = sig[:strings.IndexByte(sig, '&')]
		dec, _ := url.QueryUnescape(sig)
		if strings.Contains(out, sig) || strings.Contains(out, dec) {
			t.Fatalf("a token signature appears in the log:\n%s", out)
		}
	}
	for _, k := range []string{d1Key, d3Key, auth.DevIoTHubOwnerPrimaryKey} {
		if strings.Contains(out, k) {
			t.Fatalf("a key appears in the log")
		}
	}
}

// TestUserCertificate: a configured certificate and key replace the
// generated local CA.
func TestUserCertificate(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := tlsutil.EnsureLocalCA(dir, []string{"user.example"}); err != nil {
		t.Fatal(err)
	}
	s := server.StartTest(t, func(o *server.Options) {
		o.TLSCertFile = filepath.Join(dir, tlsutil.ServerCertFile)
		o.TLSKeyFile = filepath.Join(dir, tlsutil.ServerKeyFile)
	})
	if s.CAFile != "" {
		t.Fatalf("a local CA was generated (%s) although a certificate was configured", s.CAFile)
	}
	pool, err := tlsutil.CAPool(filepath.Join(dir, tlsutil.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", s.AMQPSAddr, &tls.Config{RootCAs: pool, ServerName: "user.example", MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS with the user's certificate: %v", err)
	}
	conn.Close()
	if _, err := server.Start(server.Options{InMemory: true, TLSCertFile: "/nonexistent.pem", TLSKeyFile: "/nonexistent-key.pem", AMQPAddr: "off", AMQPSAddr: "127.0.0.1:0", HTTPSAddr: "off"}); err == nil {
		t.Fatal("a missing certificate file was accepted")
	}
}
