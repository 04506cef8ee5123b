package methods_test

import (
	"runtime"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/server"
	"amqphub/internal/server/servertest"
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

// dialIdentity connects as a device (module "") or module.
func dialIdentity(t testing.TB, s *server.Server, device, module string) *goamqp.Session {
	t.Helper()
	return servertest.DialIdentity(t, s, device, module)
}

// service is the hub's REST API with a policy's SAS token.
type service = servertest.REST

func newService(t testing.TB, s *server.Server, policy, keyB64 string) *service {
	return servertest.NewREST(t, s, policy, keyB64)
}

func owner(t testing.TB, s *server.Server) *service { return servertest.Owner(t, s) }

func errorCode(body map[string]any) string { return servertest.ErrorCode(body) }

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
