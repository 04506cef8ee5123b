package eventhub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/auth"
	"amqphub/internal/server"
)

type restClient struct {
	t    *testing.T
	s    *server.Server
	http *http.Client
}

func (c *restClient) do(method, path, token string) (int, []byte) {
	c.t.Helper()
	req, err := http.NewRequest(method, "https://"+c.s.HTTPSAddr+path+"?api-version=2021-04-12", nil)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", token)
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.StatusCode, b
}

func groupNames(t *testing.T, b []byte) []string {
	t.Helper()
	var gs []struct {
		Name      string    `json:"name"`
		CreatedAt time.Time `json:"createdAt"`
	}
	if err := json.Unmarshal(b, &gs); err != nil {
		t.Fatalf("list body %s: %v", b, err)
	}
	var out []string
	for _, g := range gs {
		if g.CreatedAt.IsZero() {
			t.Errorf("group %s has no createdAt", g.Name)
		}
		out = append(out, g.Name)
	}
	return out
}

func TestConsumerGroupsREST(t *testing.T) {
	s := server.StartTest(t, func(o *server.Options) { o.EventHub.ConsumerGroups = []string{"fromconfig"} })
	host := s.Options.HostName
	c := &restClient{t, s, httpsClient(s)}
	owner := ownerToken(t, host)
	service := policyToken(t, host, auth.PolicyService, auth.DevServicePrimaryKey)
	readOnly := policyToken(t, host, auth.PolicyRegistryRead, auth.DevRegistryReadPrimaryKey)
	device := policyToken(t, host, auth.PolicyDevice, auth.DevDevicePrimaryKey)
	base := "/eventHubs/consumerGroups"

	steps := []struct {
		method, path, token string
		status              int
		body                string // substring
	}{
		{"GET", base, owner, 200, `"$Default"`},
		{"GET", base, readOnly, 200, `"fromconfig"`},
		{"GET", base, device, 401, "IotHubUnauthorizedAccess"},
		{"PUT", base + "/analytics", owner, 201, `"name":"analytics"`},
		{"PUT", base + "/ANALYTICS", owner, 200, `"name":"analytics"`},
		{"PUT", base + "/svc-1", service, 201, `"svc-1"`},
		{"PUT", base + "/nope", readOnly, 401, "IotHubUnauthorizedAccess"},
		{"PUT", base + "/bad%20name", owner, 400, "ArgumentInvalid"},
		{"PUT", base + "/-dash", owner, 400, "ArgumentInvalid"},
		{"PUT", base + "/" + strings.Repeat("x", 51), owner, 400, "ArgumentInvalid"},
		{"PUT", base + "/$Default", owner, 200, `"$Default"`},
		{"GET", base + "/Analytics", readOnly, 200, `"analytics"`},
		{"GET", base + "/$default", readOnly, 200, `"$Default"`},
		{"GET", base + "/missing", owner, 404, "NotFound"},
		{"DELETE", base + "/$Default", owner, 400, "cannot be deleted"},
		{"DELETE", base + "/missing", owner, 404, "NotFound"},
		{"DELETE", base + "/svc-1", readOnly, 401, "IotHubUnauthorizedAccess"},
		{"DELETE", base + "/svc-1", service, 204, ""},
	}
	for _, st := range steps {
		status, body := c.do(st.method, st.path, st.token)
		if status != st.status || !strings.Contains(string(body), st.body) {
			t.Fatalf("%s %s: %d %s, want %d containing %q", st.method, st.path, status, body, st.status, st.body)
		}
	}
	_, body := c.do("GET", base, owner)
	if got := fmt.Sprint(groupNames(t, body)); got != "[$Default analytics fromconfig]" {
		t.Fatalf("groups %s", got)
	}

	// The limit is 20 including $Default: 17 more fit.
	for i := range 17 {
		if status, body := c.do("PUT", fmt.Sprintf("%s/g%02d", base, i), owner); status != 201 {
			t.Fatalf("group %d: %d %s", i, status, body)
		}
	}
	if status, body := c.do("PUT", base+"/onetoomany", owner); status != 403 || !strings.Contains(string(body), "IotHubQuotaExceeded") {
		t.Fatalf("21st group: %d %s, want 403 IotHubQuotaExceeded", status, body)
	}
}

// TestConsumerGroupLifecycle: readers need their group to exist, and
// deleting a group detaches its readers.
func TestConsumerGroupLifecycle(t *testing.T) {
	s := server.StartTest(t, nil)
	c := &restClient{t, s, httpsClient(s)}
	owner := ownerToken(t, s.Options.HostName)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess := newSession(t, dialOwner(t, s))
	addr := partitionAddr(s, "Reports", 0)
	if _, err := newReceiver(ctx, sess, addr, rcvOpts{}); condOf(err) != goamqp.ErrCondNotFound {
		t.Fatalf("reader before the group exists: %v, want %s", err, goamqp.ErrCondNotFound)
	}
	if status, body := c.do("PUT", "/eventHubs/consumerGroups/reports", owner); status != 201 {
		t.Fatalf("create: %d %s", status, body)
	}
	entries := seed(t, s.Log, 0, 2, 0)
	r, err := newReceiver(ctx, sess, addr, rcvOpts{})
	if err != nil {
		t.Fatalf("reader of the new group (other case): %v", err)
	}
	for i, m := range receiveN(t, ctx, r, 2) {
		checkEvent(t, m, entries[i], i)
	}
	if status, body := c.do("DELETE", "/eventHubs/consumerGroups/"+url.PathEscape("REPORTS"), owner); status != 204 {
		t.Fatalf("delete: %d %s", status, body)
	}
	if err := detachedWith(t, ctx, r); condOf(err) != goamqp.ErrCondNotFound || !strings.Contains(err.Error(), "deleted") {
		t.Fatalf("reader of the deleted group: %v, want %s", err, goamqp.ErrCondNotFound)
	}
}

// TestConsumerGroupsPersist: groups survive a restart on disk.
func TestConsumerGroupsPersist(t *testing.T) {
	dir := t.TempDir()
	start := func() *server.Server {
		s, err := server.Start(server.Options{
			DataDir:   dir,
			AMQPAddr:  "127.0.0.1:0",
			AMQPSAddr: "127.0.0.1:0",
			HTTPSAddr: "127.0.0.1:0",
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := start()
	c := &restClient{t, s, httpsClient(s)}
	owner := ownerToken(t, s.Options.HostName)
	for _, g := range []string{"keep", "drop"} {
		if status, body := c.do("PUT", "/eventHubs/consumerGroups/"+g, owner); status != 201 {
			t.Fatalf("create %s: %d %s", g, status, body)
		}
	}
	if status, _ := c.do("DELETE", "/eventHubs/consumerGroups/drop", owner); status != 204 {
		t.Fatalf("delete: %d", status)
	}
	_, body := c.do("GET", "/eventHubs/consumerGroups", owner)
	before := groupNames(t, body)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = start()
	defer s.Close()
	c = &restClient{t, s, httpsClient(s)}
	_, body = c.do("GET", "/eventHubs/consumerGroups", owner)
	if after := groupNames(t, body); fmt.Sprint(after) != fmt.Sprint(before) || fmt.Sprint(after) != "[$Default keep]" {
		t.Fatalf("after restart %v, before %v", after, before)
	}
}
