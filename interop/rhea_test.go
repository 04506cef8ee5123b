package interop

import (
	"net"
	"testing"
	"time"

	"amqphub/amqp"
	"amqphub/amqp/amqptest"
	"amqphub/internal/demo"
)

// TestRhea runs the rhea suite (interop/node/test/rhea*.test.js) against
// the engine's demo application, the same contract the suite checks
// against rhea's own reference server.
func TestRhea(t *testing.T) {
	srv := amqptest.Start(t, amqp.Config{
		Handler:     demo.NewHandler(),
		SASL:        demo.Authenticator{},
		AllowNoSASL: true,
		IdleTimeout: 30 * time.Second,
	})
	host, port, _ := net.SplitHostPort(srv.Addr)
	RunNode(t, 3*time.Minute, Env("AMQP_HOST", host, "AMQP_PORT", port),
		"test/rhea-connection.test.js", "test/rhea-links.test.js", "test/rhea-messaging.test.js")
}
