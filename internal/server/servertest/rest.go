// Package servertest helps tests talk to a hub started with
// server.StartTest: a REST client signed with a shared access policy.
package servertest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"amqphub/internal/auth"
	"amqphub/internal/sas"
	"amqphub/internal/server"
)

// REST calls a hub's service REST API with a policy's SAS token.
type REST struct {
	t      testing.TB
	base   string
	token  string
	client *http.Client
}

// NewREST returns a client signing with policy's key (base64).
func NewREST(t testing.TB, s *server.Server, policy, keyB64 string) *REST {
	key, err := base64.StdEncoding.DecodeString(keyB64)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: s.ClientTLS}
	t.Cleanup(tr.CloseIdleConnections)
	return &REST{
		t:      t,
		base:   "https://" + s.HTTPSAddr,
		token:  sas.Sign(s.Options.HostName, key, policy, time.Now().Add(time.Hour)),
		client: &http.Client{Transport: tr, Timeout: 30 * time.Second},
	}
}

// NewRESTAt returns a client for base (a URL such as an httptest
// server's) that sends token as Authorization ("" sends none) with hc.
func NewRESTAt(t testing.TB, base, token string, hc *http.Client) *REST {
	return &REST{t: t, base: base, token: token, client: hc}
}

// Base returns the URL the client calls; HTTPClient its HTTP client.
func (c *REST) Base() string { return c.base }

// HTTPClient returns the client's HTTP client.
func (c *REST) HTTPClient() *http.Client { return c.client }

// Owner returns a client with the development iothubowner policy.
func Owner(t testing.TB, s *server.Server) *REST {
	return NewREST(t, s, auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey)
}

// Do sends a request (body JSON-encoded unless it is a string; header as
// name, value pairs) and returns the status, the decoded JSON object of
// the response (nil when empty) and the response headers.
func (c *REST) Do(method, path string, body any, header ...string) (int, map[string]any, http.Header) {
	c.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, c.base+path+"?api-version=2021-04-12", rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", c.token)
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.client.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	var out map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			c.t.Fatalf("%s %s: %d with a body that is not a JSON object: %q", method, path, resp.StatusCode, raw)
		}
	}
	return resp.StatusCode, out, resp.Header
}

// ErrorCode returns the IoT Hub error code of an error body
// ("ErrorCode:DeviceNotFound;..." in its Message).
func ErrorCode(body map[string]any) string {
	msg, _ := body["Message"].(string)
	code, _, _ := strings.Cut(strings.TrimPrefix(msg, "ErrorCode:"), ";")
	return code
}
