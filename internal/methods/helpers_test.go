package methods_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/auth"
	"amqphub/internal/sas"
	"amqphub/internal/server"
)

const (
	d1Key = "ZDEtcHJpbWFyeS1rZXktZm9yLW1ldGhvZC10ZXN0cy0w"
	d2Key = "ZDItcHJpbWFyeS1rZXktZm9yLW1ldGhvZC10ZXN0cy0w"
)

func startHub(t testing.TB, mod func(*server.Options)) *server.Server {
	t.Helper()
	return server.StartTest(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{
			{ID: "d1", PrimaryKey: d1Key, SecondaryKey: d2Key, Modules: []string{"m1"}},
			{ID: "d2", PrimaryKey: d2Key, SecondaryKey: d1Key},
		}
		if mod != nil {
			mod(o)
		}
	})
}

// dialIdentity connects over plain AMQP with SASL PLAIN as a device
// (module "") or module, with a token signed by the identity's key.
func dialIdentity(t testing.TB, s *server.Server, device, module string) *goamqp.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var keyB64, user, resource string
	host := s.Options.HostName
	if module == "" {
		d, err := s.Registry.GetDevice(ctx, device)
		if err != nil {
			t.Fatal(err)
		}
		keyB64 = d.Authentication.SymmetricKey.PrimaryKey
		user = device + "@sas." + s.Options.HubName
		resource = host + "/devices/" + device
	} else {
		m, err := s.Registry.GetModule(ctx, device, module)
		if err != nil {
			t.Fatal(err)
		}
		keyB64 = m.Authentication.SymmetricKey.PrimaryKey
		user = device + "/modules/" + module + "@sas." + s.Options.HubName
		resource = host + "/devices/" + device + "/modules/" + module
	}
	key, err := base64.StdEncoding.DecodeString(keyB64)
	if err != nil {
		t.Fatal(err)
	}
	token := sas.Sign(resource, key, "", time.Now().Add(time.Hour))
	c, err := goamqp.Dial(ctx, "amqp://"+s.AMQPAddr, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain(user, token), HostName: host})
	if err != nil {
		t.Fatalf("dial as %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close() })
	sess, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// service calls the hub's REST API with a policy's SAS token.
type service struct {
	t      testing.TB
	base   string
	token  string
	client *http.Client
}

func newService(t testing.TB, s *server.Server, policy, keyB64 string) *service {
	key, err := base64.StdEncoding.DecodeString(keyB64)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: s.ClientTLS}
	t.Cleanup(tr.CloseIdleConnections)
	return &service{
		t:      t,
		base:   "https://" + s.HTTPSAddr,
		token:  sas.Sign(s.Options.HostName, key, policy, time.Now().Add(time.Hour)),
		client: &http.Client{Transport: tr, Timeout: 30 * time.Second},
	}
}

func owner(t testing.TB, s *server.Server) *service {
	return newService(t, s, auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey)
}

// do sends a request; body is JSON-encoded unless it is a string.
func (c *service) do(method, path string, body any, header ...string) (int, map[string]any, http.Header) {
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

// errorCode returns the IoT Hub error code of an error body.
func errorCode(body map[string]any) string {
	msg, _ := body["Message"].(string)
	code, _, _ := strings.Cut(strings.TrimPrefix(msg, "ErrorCode:"), ";")
	return code
}

// stacksContain reports whether any goroutine's stack mentions fragment.
func stacksContain(fragment string) bool {
	buf := make([]byte, 1<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), fragment)
}

// waitNoGoroutines polls until no goroutine runs code matching fragment,
// failing after a few seconds: nothing may outlive its call or link.
func waitNoGoroutines(t testing.TB, fragment string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for stacksContain(fragment) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines in %s still running:\n%s", fragment, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
