package rest

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"amqphub/internal/auth"
	"amqphub/internal/registry"
	"amqphub/internal/sas"
)

// Fuzz targets for the parsing of service REST requests: the JSON bodies
// of the registry routes on their own, and whole requests (method, path,
// query, headers, body) through the handler. Both check that bad input
// always gets a clear client error: never a panic, never a 5xx, and an
// error body in IoT Hub's format. Seeds are in testdata/fuzz.

// seedBodies are bodies as the SDKs send them, and malformed variants.
var seedBodies = []string{
	`{"deviceId":"dev1","status":"enabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":null,"secondaryKey":null},"x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null}},"capabilities":{"iotEdge":false}}`,
	`{"deviceId":"dev1","cloudToDeviceMessageCount":"0","etag":"AAAA","status":"disabled","statusReason":"why"}`,
	`{"deviceId":"dev1","authentication":{"type":"sas","symmetricKey":{"primaryKey":"not base64!","secondaryKey":""}}}`,
	`{"moduleId":"m1","deviceId":"dev1","managedBy":"IotEdge"}`,
	`[{"id":"a","importMode":"create"},{"id":"b","importMode":"delete","eTag":"x"}]`,
	`[{"deviceId":"a","importMode":"createOrUpdateIfMatchETag","status":"enabled"}]`,
	`null`, `[]`, `{}`, ``, `{"deviceId":1}`, `{"deviceId":"a"} {"deviceId":"b"}`, `{"deviceId":"a",}`,
	"\xef\xbb\xbf{}", `{"deviceId":"\ud800"}`, `{"status":"enabled","status":"disabled"}`,
	`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
	`{"deviceId":"` + strings.Repeat("x", 200) + `"}`, `{"capabilities":{"iotEdge":"yes"}}`, `{"parentScopes":[1,2]}`,
}

// FuzzDecodeBody decodes a body into each request type the registry
// routes read. A body that decodes must be one valid JSON value; one that
// does not must map to a 4xx.
func FuzzDecodeBody(f *testing.F) {
	for _, b := range seedBodies {
		for kind := uint8(0); kind < 3; kind++ {
			f.Add([]byte(b), kind)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, kind uint8) {
		r := httptest.NewRequest(http.MethodPut, "/devices/x", bytes.NewReader(body))
		r.Body = http.MaxBytesReader(httptest.NewRecorder(), r.Body, 4<<10)
		var err error
		switch kind % 3 {
		case 0:
			var in deviceInput
			if err = decodeBody(r, &in); err == nil {
				in.toRegistry()
			}
		case 1:
			var in moduleInput
			if err = decodeBody(r, &in); err == nil {
				in.Authentication.toRegistry()
			}
		case 2:
			var in []bulkDevice
			if err = decodeBody(r, &in); err == nil {
				for _, e := range in {
					e.toRegistry()
				}
			}
		}
		if err == nil {
			if !json.Valid(bytes.TrimSpace(body)) {
				t.Fatalf("decoded a body that is not one JSON value: %q", body)
			}
			return
		}
		status, code := StatusFor(err)
		if status != http.StatusBadRequest && status != http.StatusRequestEntityTooLarge {
			t.Fatalf("bad body %q gives %d %s (%v), want 400 or 413", body, status, code, err)
		}
	})
}

// fuzzHandler is one handler shared by every fuzz input: opening a store
// per input would leave no time for fuzzing. State left by one input
// (devices created) does not change the invariants checked.
var fuzzHandler struct {
	once sync.Once
	h    *Handler
	err  error
}

func fuzzREST(t *testing.T) *Handler {
	fuzzHandler.once.Do(func() {
		reg, err := registry.OpenPebble("", registry.PebbleOptions{InMemory: true})
		if err != nil {
			fuzzHandler.err = err
			return
		}
		a, err := auth.New(auth.Config{HostName: hubHost, Registry: reg})
		if err != nil {
			fuzzHandler.err = err
			return
		}
		fuzzHandler.h, fuzzHandler.err = New(Config{Registry: reg, Auth: a, MaxBodyBytes: 16 << 10, Logger: slog.New(slog.DiscardHandler)})
	})
	if fuzzHandler.err != nil {
		t.Fatal(fuzzHandler.err)
	}
	return fuzzHandler.h
}

var fuzzMethods = []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete, http.MethodPatch, http.MethodHead, "OPTIONS", "BREW"}

// fuzzToken picks the Authorization header: none, a hub owner token, a
// read-only policy token, a device token, an expired one, or garbage.
func fuzzToken(t *testing.T, which uint8) string {
	k := func(b64 string) []byte {
		b, err := sas.DecodeIoTHubKey(b64)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	exp := time.Now().Add(time.Hour)
	switch which % 6 {
	case 1:
		return sas.Sign(hubHost, k(auth.DevIoTHubOwnerPrimaryKey), auth.PolicyIoTHubOwner, exp)
	case 2:
		return sas.Sign(hubHost, k(auth.DevRegistryReadPrimaryKey), "registryRead", exp)
	case 3:
		return sas.Sign(hubHost+"/devices/dev1", k(key1), "", exp)
	case 4:
		return sas.Sign(hubHost, k(auth.DevIoTHubOwnerPrimaryKey), auth.PolicyIoTHubOwner, time.Now().Add(-time.Hour))
	case 5:
		return "SharedAccessSignature sr=" + hubHost + "&sig=%%%&se=notanumber&skn="
	}
	return ""
}

// FuzzServiceREST sends whole requests through the handler.
func FuzzServiceREST(f *testing.F) {
	type seed struct {
		method        uint8
		path, query   string
		ifMatch       string
		token         uint8
		body          string
		authorization string
	}
	seeds := []seed{
		{0, "/devices", "top=10", "", 1, "", ""},
		{0, "/devices/", "api-version=2021-04-12", "", 2, "", ""},
		{0, "/devices", "top=-1", "", 1, "", ""},
		{0, "/devices", "top=99999999999999999999", "", 1, "", ""},
		{1, "/devices/dev1", "", "", 1, seedBodies[0], ""},
		{1, "/devices/dev1", "", "*", 1, seedBodies[1], ""},
		{1, "/devices/dev1", "", `"AAAA"`, 1, seedBodies[2], ""},
		{1, "/devices/dev1/modules/m1", "", "", 1, seedBodies[3], ""},
		{2, "/devices", "", "", 1, seedBodies[4], ""},
		{2, "/devices", "", "", 1, seedBodies[5], ""},
		{3, "/devices/dev1", "", "*", 1, "", ""},
		{3, "/devices/dev1/modules/m1", "", "W/\"x\"", 1, "", ""},
		{0, "/statistics/devices", "", "", 2, "", ""},
		{1, "/devices/dev1", "", "", 2, seedBodies[0], ""},
		{0, "/devices/dev1", "", "", 3, "", ""},
		{0, "/devices/dev1", "", "", 4, "", ""},
		{0, "/devices/dev1", "", "", 5, "", ""},
		{0, "/devices/%2e%2e/modules", "", "", 1, "", ""},
		{1, "/devices/a%2Fb", "", "", 1, `{}`, ""},
		{4, "/devices/dev1", "", "", 1, `{}`, ""},
		{7, "/devices", "", "", 1, "", ""},
		{0, "/nowhere", "", "", 0, "", ""},
		{1, "/devices/" + strings.Repeat("d", 300), "", "", 1, `{}`, ""},
		{0, "/devices/dev1", "", "", 0, "", "SharedAccessSignature sr=myhub.azure-devices.net&sig=x&se=1&skn=iothubowner"},
		{0, "/devices/dev1", "", "", 0, "", "Bearer eyJhbGciOi"},
		{2, "/devices", "", "", 1, `[` + strings.Repeat(`{"id":"x","importMode":"create"},`, 120) + `{"id":"y","importMode":"create"}]`, ""},
	}
	for _, s := range seeds {
		f.Add(s.method, s.path, s.query, s.ifMatch, s.token, []byte(s.body), s.authorization)
	}
	f.Fuzz(func(t *testing.T, method uint8, path, query, ifMatch string, token uint8, body []byte, authorization string) {
		h := fuzzREST(t)
		u, err := url.Parse("http://" + hubHost + "/")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		if p, err := url.PathUnescape(path); err == nil {
			u.Path, u.RawPath = p, path
		} else {
			u.Path = path
		}
		u.RawQuery = query
		r, err := http.NewRequest(fuzzMethods[int(method)%len(fuzzMethods)], u.String(), bytes.NewReader(body))
		if err != nil {
			return // not a request net/http would ever hand the handler
		}
		tok := fuzzToken(t, token)
		if authorization != "" {
			tok = authorization
		}
		setHeader(r, "Authorization", tok)
		setHeader(r, "If-Match", ifMatch)
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		checkResponse(t, r, w)
	})
}

// setHeader sets a header value if net/http would send it.
func setHeader(r *http.Request, k, v string) {
	if v != "" && !strings.ContainsAny(v, "\r\n\x00") {
		r.Header.Set(k, v)
	}
}

func checkResponse(t *testing.T, r *http.Request, w *httptest.ResponseRecorder) {
	t.Helper()
	status := w.Code
	what := r.Method + " " + r.URL.String()
	if status >= 500 {
		t.Fatalf("%s: %d %s", what, status, w.Body.Bytes())
	}
	if status == http.StatusMethodNotAllowed && w.Header().Get("iothub-errorcode") == "" {
		return // the ServeMux's own answer for a path that has other methods
	}
	if status == http.StatusNoContent || r.Method == http.MethodHead {
		return
	}
	if status >= 300 && status < 400 {
		// The ServeMux redirects unclean paths ("/a/../b", "/.") to
		// their clean form; clients follow and land on a route.
		if w.Header().Get("Location") == "" {
			t.Fatalf("%s: %d without a Location", what, status)
		}
		return
	}
	body := w.Body.Bytes()
	if !json.Valid(body) {
		t.Fatalf("%s: %d with a body that is not JSON: %q", what, status, body)
	}
	if !strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") {
		t.Fatalf("%s: %d with content type %q", what, status, w.Header().Get("Content-Type"))
	}
	if status < 400 {
		return
	}
	code := w.Header().Get("iothub-errorcode")
	var eb struct{ Message, ExceptionMessage string }
	if err := json.Unmarshal(body, &eb); err != nil || code == "" || !strings.HasPrefix(eb.Message, "ErrorCode:"+code+";") {
		t.Fatalf("%s: %d error not in IoT Hub's format (code %q): %s", what, status, code, body)
	}
}
