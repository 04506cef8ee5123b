package amqp_test

import (
	"context"
	"errors"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp"
	"amqphub/internal/demo"
)

// closeInOpen closes every connection from inside OnOpen, as a hub's
// revalidation does when it meets a connection it has just registered and
// whose credential was revoked meanwhile.
type closeInOpen struct{ *demo.Handler }

func (closeInOpen) OnOpen(c *amqp.Conn) *amqp.Error {
	c.Close(amqp.NewError(amqp.ErrCondUnauthorizedAccess, "revoked while opening"))
	return nil
}

// TestCloseWhileOpening: a Close asked for between the peer's Open and
// ours reaches the peer as Open followed by Close with the error, not as a
// dropped socket (a revocation right after a client connected showed up as
// a bare EOF).
func TestCloseWhileOpening(t *testing.T) {
	srv := startDemo(t, func(c *amqp.Config) { c.Handler = closeInOpen{demo.NewHandler()} })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := goamqp.Dial(ctx, srv.URL, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("guest", "guest")})
	if err == nil {
		select {
		case <-c.Done():
			err = c.Err()
		case <-ctx.Done():
			t.Fatal("the connection stayed open")
		}
	}
	var ce *goamqp.ConnError
	if !errors.As(err, &ce) || ce.RemoteErr == nil || ce.RemoteErr.Condition != goamqp.ErrCondUnauthorizedAccess {
		t.Fatalf("connection ended with %v; want the server's Close with amqp:unauthorized-access", err)
	}
}
