package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/sas"
)

// TestRESTIdentityChangeClosesConnectionsAtOnce: a REST change of an
// identity (module deleted, device disabled, device deleted) closes its
// live AMQP connection within a second, instead of at the hub's periodic
// revalidation (every 5 s by default). Each step alone could pass by luck
// when a periodic check happens to fall in its second (about one time in
// five); all three by luck about one time in a hundred and twenty-five.
func TestRESTIdentityChangeClosesConnectionsAtOnce(t *testing.T) {
	s := startAuthHub(t, nil)
	host, hubName := s.Options.HostName, s.Options.HubName
	ctx := context.Background()
	m1, err := s.Registry.GetModule(ctx, "d1", "m1")
	if err != nil {
		t.Fatal(err)
	}
	modToken := sas.Sign(host+"/devices/d1/modules/m1", key(t, m1.Authentication.SymmetricKey.PrimaryKey), "", time.Now().Add(time.Hour))

	steps := []struct {
		name         string
		user, token  string
		method, path string
		change       func(d map[string]any) // for PUT: edits the device read first
		want         int
	}{
		{"module deleted", "d1/modules/m1@sas." + hubName, modToken, http.MethodDelete, "/devices/d1/modules/m1", nil, http.StatusNoContent},
		{"device disabled", "d1@sas." + hubName, deviceToken(t, host, "d1", d1Key, time.Hour), http.MethodPut, "/devices/d1",
			func(d map[string]any) { d["status"] = "disabled" }, http.StatusOK},
		{"device deleted", "d2@sas." + hubName, deviceToken(t, host, "d2", d2Key, time.Hour), http.MethodDelete, "/devices/d2", nil, http.StatusNoContent},
	}
	for _, st := range steps {
		c, err := dialPlain(t, s, st.user, st.token)
		if err != nil {
			t.Fatalf("%s: dial: %v", st.name, err)
		}
		var body any
		if st.change != nil {
			code, raw := restDo(t, s, http.MethodGet, st.path, ownerTok(t, s), "", nil)
			if code != http.StatusOK {
				t.Fatalf("%s: GET: %d %s", st.name, code, raw)
			}
			var d map[string]any
			if err := json.Unmarshal(raw, &d); err != nil {
				t.Fatal(err)
			}
			st.change(d)
			body = d
		}
		select {
		case <-c.Done():
			t.Fatalf("%s: the connection ended before the change: %v", st.name, c.Err())
		default:
		}
		ifMatch := ""
		if st.method == http.MethodPut {
			ifMatch = "*"
		}
		if code, raw := restDo(t, s, st.method, st.path, ownerTok(t, s), ifMatch, body); code != st.want {
			t.Fatalf("%s: %s %s: %d %s", st.name, st.method, st.path, code, raw)
		}
		changed := time.Now()
		if cond := connCond(t, c, time.Second); cond != goamqp.ErrCondUnauthorizedAccess {
			t.Fatalf("%s: connection within 1 s of the change: %q, want %s", st.name, cond, goamqp.ErrCondUnauthorizedAccess)
		}
		t.Logf("%s: connection closed %v after the response", st.name, time.Since(changed))
	}
}
