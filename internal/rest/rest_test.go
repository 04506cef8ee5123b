package rest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"amqphub/internal/auth"
	"amqphub/internal/registry"
	"amqphub/internal/sas"
)

const (
	hubHost = "myhub.azure-devices.net"
	key1    = "a2V5MWtleTFrZXkxa2V5MWtleTFrZXkxa2V5MWtleTE="
	key2    = "a2V5MmtleTJrZXkya2V5MmtleTJrZXkya2V5MmtleTI="
)

type env struct {
	t   *testing.T
	srv *httptest.Server
	h   *Handler
	reg registry.Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, registry.PebbleOptions{}, nil)
}

// newEnvWith is newEnv with registry options (always in memory) and a
// function that adjusts the handler's configuration.
func newEnvWith(t *testing.T, ro registry.PebbleOptions, mod func(*Config)) *env {
	t.Helper()
	ro.InMemory = true
	reg, err := registry.OpenPebble("", ro)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	a, err := auth.New(auth.Config{HostName: hubHost, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Registry: reg, Auth: a, MaxBodyBytes: 64 << 10}
	if mod != nil {
		mod(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &env{t: t, srv: srv, h: h, reg: reg}
}

func policyToken(t *testing.T, policy, key string) string {
	t.Helper()
	k, err := sas.DecodeIoTHubKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return sas.SignEncoded(hubHost, k, policy, time.Now().Add(time.Hour))
}

func ownerToken(t *testing.T) string {
	return policyToken(t, auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey)
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (e *env) do(method, path, token string, body any, hdr map[string]string) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp{res.StatusCode, res.Header, b}
}

// wantError checks status and IoT Hub's error format, including what the
// Node SDK extracts: the code between "ErrorCode:" and the first ';'.
func wantError(t *testing.T, r resp, status int, code ErrorCode) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("content type %q", ct)
	}
	if got := r.header.Get("iothub-errorcode"); got != string(code) {
		t.Fatalf("iothub-errorcode %q, want %q", got, code)
	}
	var eb struct{ Message, ExceptionMessage string }
	if err := json.Unmarshal(r.body, &eb); err != nil {
		t.Fatalf("error body %s: %v", r.body, err)
	}
	parts := strings.Split(eb.Message, ";")
	if len(parts) != 2 || parts[0] != "ErrorCode:"+string(code) || parts[1] == "" {
		t.Fatalf("Message %q is not ErrorCode:%s;<text>", eb.Message, code)
	}
	if !strings.HasPrefix(eb.ExceptionMessage, "Tracking ID:") {
		t.Fatalf("ExceptionMessage %q", eb.ExceptionMessage)
	}
}

func decodeDevice(t *testing.T, r resp) registry.Device {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	var d registry.Device
	if err := json.Unmarshal(r.body, &d); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
	if etag := r.header.Get("ETag"); etag != `"`+d.ETag+`"` {
		t.Fatalf("ETag header %q, body etag %q", etag, d.ETag)
	}
	return d
}

func TestAuthorization(t *testing.T) {
	e := newEnv(t)
	if _, err := e.reg.CreateDevice(t.Context(), registry.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	devKey, _ := sas.DecodeIoTHubKey(mustDevice(t, e.reg, "d1").Authentication.SymmetricKey.PrimaryKey)
	tokens := map[string]string{
		"none":        "",
		"garbage":     "Bearer abc",
		"owner":       ownerToken(t),
		"read":        policyToken(t, auth.PolicyRegistryRead, auth.DevRegistryReadPrimaryKey),
		"readwrite":   policyToken(t, auth.PolicyRegistryReadWrite, auth.DevRegistryReadWritePrimaryKey),
		"service":     policyToken(t, auth.PolicyService, auth.DevServicePrimaryKey),
		"device":      sas.Sign(hubHost+"/devices/d1", devKey, "", time.Now().Add(time.Hour)),
		"expired":     sas.SignEncoded(hubHost, mustKey(t, auth.DevIoTHubOwnerPrimaryKey), "iothubowner", time.Now().Add(-time.Minute)),
		"wrong key":   sas.SignEncoded(hubHost, mustKey(t, auth.DevServicePrimaryKey), "iothubowner", time.Now().Add(time.Hour)),
		"other host":  sas.SignEncoded("elsewhere.azure-devices.net", mustKey(t, auth.DevIoTHubOwnerPrimaryKey), "iothubowner", time.Now().Add(time.Hour)),
		"scoped away": sas.Sign(hubHost+"/twins", mustKey(t, auth.DevIoTHubOwnerPrimaryKey), "iothubowner", time.Now().Add(time.Hour)),
	}
	routes := []struct {
		method, path string
		write        bool
	}{
		{"GET", "/devices?api-version=2021-04-12", false},
		{"GET", "/devices/d1?api-version=2021-04-12", false},
		{"GET", "/devices/d1/modules", false},
		{"GET", "/statistics/devices", false},
		{"PUT", "/devices/new?api-version=2021-04-12", true},
		{"DELETE", "/devices/nope", true},
		{"POST", "/devices", true},
		{"PUT", "/devices/d1/modules/m", true},
		{"DELETE", "/devices/d1/modules/m", true},
	}
	allowed := map[string]func(write bool) bool{
		"owner":     func(bool) bool { return true },
		"readwrite": func(bool) bool { return true },
		"read":      func(write bool) bool { return !write },
	}
	for _, rt := range routes {
		for name, tok := range tokens {
			t.Run(rt.method+" "+rt.path+" as "+name, func(t *testing.T) {
				var body any
				if rt.method == "PUT" {
					body = map[string]any{}
				} else if rt.method == "POST" {
					body = []map[string]any{{"id": "bulk", "importMode": "create"}}
				}
				r := e.do(rt.method, rt.path, tok, body, nil)
				ok := allowed[name] != nil && allowed[name](rt.write)
				if !ok {
					wantError(t, r, http.StatusUnauthorized, CodeUnauthorized)
					return
				}
				if r.status == http.StatusUnauthorized {
					t.Fatalf("refused: %s", r.body)
				}
			})
		}
	}
}

func mustKey(t *testing.T, b64 string) []byte {
	t.Helper()
	k, err := sas.DecodeIoTHubKey(b64)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustDevice(t *testing.T, reg registry.Store, id string) registry.Device {
	t.Helper()
	d, err := reg.GetDevice(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDeviceLifecycle(t *testing.T) {
	e := newEnv(t)
	tok := ownerToken(t)
	q := "?api-version=2021-04-12"

	// Create without If-Match, keys generated.
	created := decodeDevice(t, e.do("PUT", "/devices/dev1"+q, tok, map[string]any{"deviceId": "dev1"}, nil))
	if created.DeviceID != "dev1" || created.Status != registry.StatusEnabled || created.Authentication.Type != registry.AuthSAS ||
		created.Authentication.SymmetricKey.PrimaryKey == "" || created.GenerationID == "" || created.ConnectionState != registry.Disconnected {
		t.Fatalf("created %+v", created)
	}
	wantError(t, e.do("PUT", "/devices/dev1"+q, tok, map[string]any{"deviceId": "dev1"}, nil), http.StatusConflict, CodeDeviceAlreadyExists)

	got := decodeDevice(t, e.do("GET", "/devices/dev1"+q, tok, nil, nil))
	if got.ETag != created.ETag || got.Authentication.SymmetricKey != created.Authentication.SymmetricKey {
		t.Fatalf("get %+v", got)
	}

	// Conditional replace.
	upd := map[string]any{"deviceId": "dev1", "status": "disabled", "statusReason": "maintenance"}
	wantError(t, e.do("PUT", "/devices/dev1"+q, tok, upd, map[string]string{"If-Match": `"stale"`}), http.StatusPreconditionFailed, CodePreconditionFailed)
	replaced := decodeDevice(t, e.do("PUT", "/devices/dev1"+q, tok, upd, map[string]string{"If-Match": `"` + created.ETag + `"`}))
	if replaced.Status != registry.StatusDisabled || replaced.StatusReason != "maintenance" || replaced.ETag == created.ETag ||
		replaced.Authentication.SymmetricKey != created.Authentication.SymmetricKey {
		t.Fatalf("replaced %+v", replaced)
	}
	forced := decodeDevice(t, e.do("PUT", "/devices/dev1"+q, tok, map[string]any{"deviceId": "dev1", "status": "enabled"}, map[string]string{"If-Match": `"*"`}))
	if forced.Status != registry.StatusEnabled {
		t.Fatalf("forced %+v", forced)
	}
	wantError(t, e.do("PUT", "/devices/ghost"+q, tok, map[string]any{"deviceId": "ghost"}, map[string]string{"If-Match": "*"}), http.StatusNotFound, CodeDeviceNotFound)

	// Delete.
	wantError(t, e.do("DELETE", "/devices/dev1"+q, tok, nil, map[string]string{"If-Match": `"stale"`}), http.StatusPreconditionFailed, CodePreconditionFailed)
	if r := e.do("DELETE", "/devices/dev1"+q, tok, nil, map[string]string{"If-Match": `"*"`}); r.status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	wantError(t, e.do("GET", "/devices/dev1"+q, tok, nil, nil), http.StatusNotFound, CodeDeviceNotFound)
	wantError(t, e.do("DELETE", "/devices/dev1"+q, tok, nil, nil), http.StatusNotFound, CodeDeviceNotFound)
}

func TestDeviceJSONShape(t *testing.T) {
	e := newEnv(t)
	r := e.do("PUT", "/devices/shape", ownerToken(t), map[string]any{
		"deviceId":       "shape",
		"authentication": map[string]any{"type": "sas", "symmetricKey": map[string]any{"primaryKey": key1, "secondaryKey": key2}},
		"capabilities":   map[string]any{"iotEdge": true},
	}, nil)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatal(err)
	}
	wantKeys := []string{"authentication", "capabilities", "cloudToDeviceMessageCount", "connectionState", "connectionStateUpdatedTime", "deviceId", "etag", "generationId", "lastActivityTime", "status", "statusUpdatedTime"}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if strings.Join(keys, ",") != strings.Join(wantKeys, ",") {
		t.Fatalf("device keys %v, want %v", keys, wantKeys)
	}
	a := m["authentication"].(map[string]any)
	sk := a["symmetricKey"].(map[string]any)
	if a["type"] != "sas" || sk["primaryKey"] != key1 || sk["secondaryKey"] != key2 || a["x509Thumbprint"] == nil {
		t.Fatalf("authentication %v", a)
	}
	if m["capabilities"].(map[string]any)["iotEdge"] != true || m["connectionState"] != "Disconnected" || m["status"] != "enabled" {
		t.Fatalf("device %v", m)
	}
	if m["cloudToDeviceMessageCount"] != float64(0) || m["lastActivityTime"] != "0001-01-01T00:00:00Z" {
		t.Fatalf("device %v", m)
	}
}

// TestNodeDeviceClassBody sends what `new Device({...})` from azure-iothub
// serialises to: nulls everywhere and cloudToDeviceMessageCount as a string.
func TestNodeDeviceClassBody(t *testing.T) {
	e := newEnv(t)
	body := `{"deviceId":"nodecls","generationId":null,"etag":null,"connectionState":"disconnected","status":"enabled",
	"statusReason":null,"connectionStateUpdatedTime":null,"statusUpdatedTime":null,"lastActivityTime":null,
	"cloudToDeviceMessageCount":"0","capabilities":{},"authentication":{"symmetricKey":{"primaryKey":null,"secondaryKey":null},
	"x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null},"type":"sas"}}`
	d := decodeDevice(t, e.do("PUT", "/devices/nodecls", ownerToken(t), body, nil))
	if d.DeviceID != "nodecls" || d.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("device %+v", d)
	}
}

func TestDeviceErrors(t *testing.T) {
	e := newEnv(t)
	tok := ownerToken(t)
	tests := []struct {
		name, method, path string
		body               any
		status             int
		code               ErrorCode
	}{
		{"id mismatch", "PUT", "/devices/a", map[string]any{"deviceId": "b"}, 400, CodeArgumentInvalid},
		{"invalid id", "PUT", "/devices/a%20b", map[string]any{}, 400, CodeArgumentInvalid},
		{"slash in id", "PUT", "/devices/a%2Fb", map[string]any{}, 400, CodeArgumentInvalid},
		{"bad json", "PUT", "/devices/a", `{"deviceId":`, 400, CodeFormatError},
		{"empty body", "PUT", "/devices/a", nil, 400, CodeFormatError},
		{"null body", "PUT", "/devices/a", `null`, 400, CodeFormatError},
		{"null body with spaces", "PUT", "/devices/a", " null \n", 400, CodeFormatError},
		{"null module body", "PUT", "/devices/a/modules/m", `null`, 400, CodeFormatError},
		{"null bulk body", "POST", "/devices", `null`, 400, CodeFormatError},
		{"trailing data", "PUT", "/devices/a", `{} {}`, 400, CodeFormatError},
		{"wrong type", "PUT", "/devices/a", `{"status":5}`, 400, CodeFormatError},
		{"bad status", "PUT", "/devices/a", map[string]any{"status": "paused"}, 400, CodeArgumentInvalid},
		{"bad key", "PUT", "/devices/a", map[string]any{"authentication": map[string]any{"symmetricKey": map[string]any{"primaryKey": "zzz"}}}, 400, CodeArgumentInvalid},
		{"body too large", "PUT", "/devices/a", `{"statusReason":"` + strings.Repeat("x", 70<<10) + `"}`, 413, CodeMessageTooLarge},
		{"top not a number", "GET", "/devices?top=ten", nil, 400, CodeArgumentInvalid},
		{"top too big", "GET", "/devices?top=1001", nil, 400, CodeArgumentInvalid},
		{"missing device", "GET", "/devices/none", nil, 404, CodeDeviceNotFound},
		{"unknown route", "GET", "/nothing/here", nil, 404, CodeNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantError(t, e.do(tt.method, tt.path, tok, tt.body, nil), tt.status, tt.code)
		})
	}
	// Nothing was created by the failed requests.
	ds, err := e.reg.ListDevices(t.Context(), "", 0)
	if err != nil || len(ds) != 0 {
		t.Fatalf("devices after failed requests: %v, %v", ds, err)
	}
}

func TestEncodedIDs(t *testing.T) {
	e := newEnv(t)
	tok := ownerToken(t)
	id := "we#ird?id$+'(x)"
	path := "/devices/" + url.PathEscape(id)
	d := decodeDevice(t, e.do("PUT", strings.ReplaceAll(path, "?", "%3F"), tok, map[string]any{"deviceId": id}, nil))
	if d.DeviceID != id {
		t.Fatalf("id %q", d.DeviceID)
	}
	got := decodeDevice(t, e.do("GET", "/devices/"+url.QueryEscape(id), tok, nil, nil))
	if got.DeviceID != id {
		t.Fatalf("get id %q", got.DeviceID)
	}
}

func TestListDevices(t *testing.T) {
	e := newEnv(t)
	tok := ownerToken(t)
	r := e.do("GET", "/devices", tok, nil, nil)
	if r.status != 200 || strings.TrimSpace(string(r.body)) != "[]" {
		t.Fatalf("empty list: %d %s", r.status, r.body)
	}
	for _, id := range []string{"c", "a", "b"} {
		decodeDevice(t, e.do("PUT", "/devices/"+id, tok, map[string]any{}, nil))
	}
	tests := []struct {
		query string
		want  string
	}{{"", "a,b,c"}, {"?top=2", "a,b"}, {"?top=1000&api-version=2021-04-12", "a,b,c"}, {"/?api-version=2021-04-12", "a,b,c"}}
	for _, tt := range tests {
		r := e.do("GET", "/devices"+tt.query, tok, nil, nil)
		var ds []registry.Device
		if err := json.Unmarshal(r.body, &ds); err != nil || r.status != 200 {
			t.Fatalf("%s: %d %s", tt.query, r.status, r.body)
		}
		var ids []string
		for _, d := range ds {
			ids = append(ids, d.DeviceID)
		}
		if strings.Join(ids, ",") != tt.want {
			t.Errorf("GET /devices%s = %v, want %s", tt.query, ids, tt.want)
		}
	}
}

func TestModules(t *testing.T) {
	e := newEnv(t)
	tok := ownerToken(t)
	wantError(t, e.do("PUT", "/devices/host/modules/m1", tok, map[string]any{"moduleId": "m1", "deviceId": "host"}, nil), 404, CodeDeviceNotFound)
	decodeDevice(t, e.do("PUT", "/devices/host", tok, map[string]any{}, nil))

	r := e.do("PUT", "/devices/host/modules/m1", tok, map[string]any{"moduleId": "m1", "deviceId": "host", "managedBy": "me",
		"authentication": map[string]any{"type": "sas", "symmetricKey": map[string]any{"primaryKey": "", "secondaryKey": ""}}}, nil)
	var m registry.Module
	if err := json.Unmarshal(r.body, &m); err != nil || r.status != 200 {
		t.Fatalf("create module: %d %s", r.status, r.body)
	}
	if m.ModuleID != "m1" || m.DeviceID != "host" || m.ManagedBy != "me" || m.Authentication.SymmetricKey.PrimaryKey == "" || r.header.Get("ETag") != `"`+m.ETag+`"` {
		t.Fatalf("module %+v", m)
	}
	wantError(t, e.do("PUT", "/devices/host/modules/m1", tok, map[string]any{}, nil), 409, CodeModuleAlreadyExists)
	wantError(t, e.do("PUT", "/devices/host/modules/m1", tok, map[string]any{"moduleId": "other"}, nil), 400, CodeArgumentInvalid)
	wantError(t, e.do("PUT", "/devices/host/modules/m1", tok, map[string]any{}, map[string]string{"If-Match": `"old"`}), 412, CodePreconditionFailed)
	r = e.do("PUT", "/devices/host/modules/m1", tok, map[string]any{"managedBy": "you"}, map[string]string{"If-Match": `"` + m.ETag + `"`})
	var m2 registry.Module
	if err := json.Unmarshal(r.body, &m2); err != nil || r.status != 200 || m2.ManagedBy != "you" || m2.Authentication.SymmetricKey != m.Authentication.SymmetricKey {
		t.Fatalf("update module: %d %s", r.status, r.body)
	}

	r = e.do("GET", "/devices/host/modules", tok, nil, nil)
	var ms []registry.Module
	if err := json.Unmarshal(r.body, &ms); err != nil || r.status != 200 || len(ms) != 1 || ms[0].ModuleID != "m1" {
		t.Fatalf("list modules: %d %s", r.status, r.body)
	}
	wantError(t, e.do("GET", "/devices/host/modules/zz", tok, nil, nil), 404, CodeModuleNotFound)
	wantError(t, e.do("GET", "/devices/nohost/modules", tok, nil, nil), 404, CodeDeviceNotFound)
	wantError(t, e.do("DELETE", "/devices/host/modules/m1", tok, nil, map[string]string{"If-Match": `"` + m.ETag + `"`}), 412, CodePreconditionFailed)
	if r := e.do("DELETE", "/devices/host/modules/m1", tok, nil, map[string]string{"If-Match": `"` + m2.ETag + `"`}); r.status != 204 {
		t.Fatalf("delete module: %d %s", r.status, r.body)
	}
	wantError(t, e.do("GET", "/devices/host/modules/m1", tok, nil, nil), 404, CodeModuleNotFound)
}

func TestBulk(t *testing.T) {
	e := newEnv(t)
	tok := ownerToken(t)
	decodeDevice(t, e.do("PUT", "/devices/exists", tok, map[string]any{}, nil))
	bulk := func(body any) BulkRegistryOperationResult {
		t.Helper()
		r := e.do("POST", "/devices?api-version=2021-04-12", tok, body, nil)
		if r.status != 200 {
			t.Fatalf("bulk: %d %s", r.status, r.body)
		}
		var res BulkRegistryOperationResult
		if err := json.Unmarshal(r.body, &res); err != nil {
			t.Fatal(err)
		}
		return res
	}
	res := bulk([]map[string]any{
		{"id": "b1", "importMode": "create"},
		{"id": "b2", "importMode": "create", "status": "disabled"},
		{"id": "exists", "importMode": "create"},
	})
	if res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].DeviceID != "exists" || res.Errors[0].ErrorCode != CodeDeviceAlreadyExists {
		t.Fatalf("create result %+v", res)
	}
	if d := mustDevice(t, e.reg, "b2"); d.Status != registry.StatusDisabled {
		t.Fatalf("b2 %+v", d)
	}
	res = bulk([]map[string]any{
		{"id": "b1", "importMode": "Update", "status": "disabled"},
		{"id": "b2", "importMode": "UpdateIfMatchETag", "eTag": "stale"},
		{"id": "b3", "importMode": "UpdateIfMatchETag"},
	})
	if res.IsSuccessful || len(res.Errors) != 2 || res.Errors[0].ErrorCode != CodePreconditionFailed || res.Errors[1].ErrorCode != CodeDeviceNotFound {
		t.Fatalf("update result %+v", res)
	}
	if d := mustDevice(t, e.reg, "b1"); d.Status != registry.StatusDisabled {
		t.Fatalf("b1 %+v", d)
	}
	res = bulk([]map[string]any{{"id": "b1", "importMode": "Delete"}, {"id": "b2", "importMode": "DeleteIfMatchETag", "eTag": mustDevice(t, e.reg, "b2").ETag}})
	if !res.IsSuccessful || len(res.Errors) != 0 {
		t.Fatalf("delete result %+v", res)
	}
	for _, bad := range []any{
		[]map[string]any{},
		[]map[string]any{{"id": "x", "importMode": "explode"}},
		[]map[string]any{{"importMode": "create"}},
		[]map[string]any{{"id": "x", "importMode": "create"}, {"id": "x", "importMode": "delete"}},
		`{"id":"x"}`,
	} {
		r := e.do("POST", "/devices", tok, bad, nil)
		if r.status != 400 {
			t.Errorf("bulk %v: status %d %s", bad, r.status, r.body)
		}
	}
	many := make([]map[string]any, MaxBulkDevices+1)
	for i := range many {
		many[i] = map[string]any{"id": "m" + string(rune('a'+i%26)) + strings.Repeat("x", i/26), "importMode": "create"}
	}
	wantError(t, e.do("POST", "/devices", tok, many, nil), 413, CodeTooManyDevices)
}

func TestStatistics(t *testing.T) {
	e := newEnv(t)
	tok := ownerToken(t)
	decodeDevice(t, e.do("PUT", "/devices/on", tok, map[string]any{}, nil))
	decodeDevice(t, e.do("PUT", "/devices/off", tok, map[string]any{"status": "disabled"}, nil))
	r := e.do("GET", "/statistics/devices", tok, nil, nil)
	var st RegistryStatistics
	if err := json.Unmarshal(r.body, &st); err != nil || st != (RegistryStatistics{2, 1, 1}) {
		t.Fatalf("statistics %d %s", r.status, r.body)
	}
}

// TestHandleExtension registers a route the way the twin and method
// packages will, and checks it gets the same authorization.
func TestHandleExtension(t *testing.T) {
	e := newEnv(t)
	var seen auth.Identity
	e.h.Handle("POST /twins/{id}/methods", auth.ServiceConnect, func(w http.ResponseWriter, r *http.Request, id auth.Identity) {
		seen = id
		WriteJSON(w, http.StatusOK, map[string]string{"device": r.PathValue("id")})
	})
	r := e.do("POST", "/twins/d1/methods?api-version=2021-04-12", policyToken(t, auth.PolicyService, auth.DevServicePrimaryKey), map[string]any{}, nil)
	if r.status != 200 || !strings.Contains(string(r.body), `"device":"d1"`) || seen.PolicyName != auth.PolicyService {
		t.Fatalf("extension route: %d %s (identity %+v)", r.status, r.body, seen)
	}
	wantError(t, e.do("POST", "/twins/d1/methods", policyToken(t, auth.PolicyRegistryRead, auth.DevRegistryReadPrimaryKey), map[string]any{}, nil), 401, CodeUnauthorized)
}

func TestNewValidation(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without registry succeeded")
	}
	reg, err := registry.OpenPebble("", registry.PebbleOptions{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if _, err := New(Config{Registry: reg}); err == nil {
		t.Fatal("New without auth succeeded")
	}
}

func TestClosedRegistry(t *testing.T) {
	e := newEnv(t)
	e.reg.Close()
	wantError(t, e.do("GET", "/devices/x", ownerToken(t), nil, nil), http.StatusServiceUnavailable, CodeServiceUnavailable)
}
