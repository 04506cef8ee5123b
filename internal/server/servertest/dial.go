package servertest

import (
	"context"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/server"
)

// DialIdentity connects to the hub's plain AMQP listener with SASL PLAIN
// as a device (module "") or module, with a token signed by the identity's
// key, and returns a session on it. The connection closes when the test
// ends.
func DialIdentity(t testing.TB, s *server.Server, device, module string) *goamqp.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	user, token, err := s.DeviceLogin(ctx, device, module, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := goamqp.Dial(ctx, "amqp://"+s.AMQPAddr, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain(user, token), HostName: s.Options.HostName})
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
