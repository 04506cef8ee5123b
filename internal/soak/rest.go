package soak

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"amqphub/internal/auth"
	"amqphub/internal/sas"
	"amqphub/internal/tlsutil"
)

// restClient calls the hub's service REST API as iothubowner.
type restClient struct {
	base string
	hc   *http.Client
	key  []byte
}

// newREST trusts the CA the hub keeps in its data directory.
func newREST(spec ChildSpec) (*restClient, error) {
	pem, err := os.ReadFile(filepath.Join(spec.DataDir, "tls", tlsutil.CACertFile))
	if err != nil {
		return nil, fmt.Errorf("soak: hub CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("soak: hub CA %s holds no certificate", tlsutil.CACertFile)
	}
	key, err := base64.StdEncoding.DecodeString(auth.DevIoTHubOwnerPrimaryKey)
	if err != nil {
		return nil, err
	}
	return &restClient{
		base: "https://" + spec.HTTPSAddr,
		hc: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: HostName, MinVersion: tls.VersionTLS12},
		}},
		key: key,
	}, nil
}

// statusError is a REST answer other than 2xx.
type statusError struct {
	status int
	body   string
}

func (e *statusError) Error() string { return fmt.Sprintf("status %d: %s", e.status, e.body) }

// do sends a request and decodes a 2xx JSON answer into out (if not nil).
func (r *restClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.base+path+"?api-version=2021-04-12", rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", sas.Sign(HostName, r.key, auth.PolicyIoTHubOwner, time.Now().Add(time.Hour)))
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	resp, err := r.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return &statusError{resp.StatusCode, string(b)}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("soak: %s %s: %w", method, path, err)
		}
	}
	return nil
}

// device is the part of a registry device the soak checks.
type device struct {
	DeviceID       string `json:"deviceId"`
	Status         string `json:"status"`
	GenerationID   string `json:"generationId"`
	Authentication struct {
		SymmetricKey struct {
			PrimaryKey   string `json:"primaryKey"`
			SecondaryKey string `json:"secondaryKey"`
		} `json:"symmetricKey"`
	} `json:"authentication"`
}

// twin is the part of a twin the soak checks.
type twin struct {
	Version int64 `json:"version"`
	Tags    struct {
		Soak struct {
			N int64 `json:"n"`
		} `json:"soak"`
	} `json:"tags"`
	Properties struct {
		Desired struct {
			SoakN int64 `json:"soakN"`
		} `json:"desired"`
	} `json:"properties"`
}
