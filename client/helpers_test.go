package client_test

import (
	"context"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"amqphub/client"
	"amqphub/internal/auth"
	"amqphub/internal/server"
)

// Device keys of the test hubs (base64).
const (
	devKey   = "dGVzdC1kZXZpY2Uta2V5LWZvci1jbGllbnQtdGVzdHM="
	otherKey = "b3RoZXIta2V5LWZvci1jbGllbnQtdGVzdHMtLi4uLi4="
)

// startHub starts an in-memory hub with devices dev1, dev2 (and module
// dev1/mod1) and a disabled device off.
func startHub(t testing.TB, mod func(*server.Options)) *server.Server {
	t.Helper()
	s := server.StartTest(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{
			{ID: "dev1", PrimaryKey: devKey, SecondaryKey: otherKey, Modules: []string{"mod1"}},
			{ID: "dev2", PrimaryKey: devKey, SecondaryKey: otherKey},
			{ID: "off", PrimaryKey: devKey, SecondaryKey: otherKey, Disabled: true},
		}
		if mod != nil {
			mod(o)
		}
	})
	warmUp(t, s)
	return s
}

// warmUp makes one HTTPS request before any AMQPS connection. The hub
// shares its *tls.Config between the AMQPS listener and the HTTPS server,
// which writes to it when it starts serving; a TLS handshake racing that
// trips the race detector (a hub issue). A served request orders the
// write before every later handshake.
func warmUp(t testing.TB, s *server.Server) {
	t.Helper()
	if s.HTTPSAddr == "" {
		return
	}
	tr := &http.Transport{TLSClientConfig: s.ClientTLS}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + s.HTTPSAddr + "/")
	if err != nil {
		t.Fatalf("HTTPS warm-up: %v", err)
	}
	resp.Body.Close()
}

func deviceCS(s *server.Server, id, key string) string {
	return "HostName=" + s.Options.HostName + ";DeviceId=" + id + ";SharedAccessKey=" + key
}

func serviceCS(s *server.Server, policy, key string) string {
	return "HostName=" + s.Options.HostName + ";SharedAccessKeyName=" + policy + ";SharedAccessKey=" + key
}

func ownerCS(s *server.Server) string {
	return serviceCS(s, auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey)
}

// fastRetry keeps reconnect tests quick.
var fastRetry = client.RetryOptions{MinDelay: 20 * time.Millisecond, MaxDelay: 300 * time.Millisecond}

func deviceOpts(s *server.Server) *client.DeviceOptions {
	return &client.DeviceOptions{TLSConfig: s.ClientTLS, Address: s.AMQPSAddr, Retry: fastRetry}
}

func serviceOpts(s *server.Server) *client.ServiceOptions {
	return &client.ServiceOptions{TLSConfig: s.ClientTLS, Address: s.AMQPSAddr, RESTURL: "https://" + s.HTTPSAddr, Retry: fastRetry}
}

func newDevice(t testing.TB, s *server.Server, id string, mod func(*client.DeviceOptions)) *client.DeviceClient {
	t.Helper()
	o := deviceOpts(s)
	if mod != nil {
		mod(o)
	}
	d, err := client.NewDeviceClient(deviceCS(s, id, devKey), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func newService(t testing.TB, s *server.Server, mod func(*client.ServiceOptions)) *client.ServiceClient {
	t.Helper()
	o := serviceOpts(s)
	if mod != nil {
		mod(o)
	}
	svc, err := client.NewServiceClient(ownerCS(s), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readEvents reads n events (from the start) and returns them.
func readEvents(t testing.TB, ctx context.Context, svc *client.ServiceClient, opts *client.EventReaderOptions, n int) []*client.Event {
	t.Helper()
	r, err := svc.NewEventReader(ctx, opts)
	if err != nil {
		t.Fatalf("event reader: %v", err)
	}
	defer r.Close()
	var out []*client.Event
	for len(out) < n {
		e, err := r.Receive(ctx)
		if err != nil {
			t.Fatalf("after %d of %d events: %v", len(out), n, err)
		}
		out = append(out, e)
	}
	return out
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// checkNoLeaks fails if goroutines of the client library (or of go-amqp
// under it) started during the test outlive it. Call it first, so that its
// cleanup runs after the clients' and the hub's.
func checkNoLeaks(t *testing.T) {
	t.Helper()
	verify := leakCheck(t)
	t.Cleanup(verify)
}

// leakCheck records the goroutines now; the function it returns polls
// until the library goroutines started since are gone, and fails the test
// if they stay.
func leakCheck(t *testing.T) func() {
	before := goroutineIDs()
	return func() {
		t.Helper()
		var extra []string
		deadline := time.Now().Add(10 * time.Second)
		for {
			extra = extra[:0]
			for id, stack := range goroutineStacks() {
				if _, ok := before[id]; !ok && ours(stack) {
					extra = append(extra, stack)
				}
			}
			if len(extra) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if len(extra) > 0 {
			t.Errorf("%d goroutines leaked:\n%s", len(extra), strings.Join(extra, "\n\n"))
		}
	}
}

// ours reports whether a goroutine runs library code: amqphub/client
// (not its tests) or go-amqp.
func ours(stack string) bool {
	return strings.Contains(stack, "amqphub/client.") || strings.Contains(stack, "github.com/Azure/go-amqp")
}

func goroutineIDs() map[string]struct{} {
	out := map[string]struct{}{}
	for id := range goroutineStacks() {
		out[id] = struct{}{}
	}
	return out
}

func goroutineStacks() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		head, _, _ := strings.Cut(g, "\n")
		fields := strings.Fields(head)
		if len(fields) >= 2 {
			out[fields[1]] = g
		}
	}
	return out
}
