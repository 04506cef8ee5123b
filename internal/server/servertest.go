package server

import (
	"testing"

	"amqphub/amqp/amqptest"
)

// StartTest starts an in-memory hub on random loopback ports (HTTPS
// included) and closes it when the test ends. mod adjusts the options.
func StartTest(t testing.TB, mod func(*Options)) *Server {
	t.Helper()
	o := Options{
		InMemory:  true,
		AMQPAddr:  "127.0.0.1:0",
		AMQPSAddr: "127.0.0.1:0",
		HTTPSAddr: "127.0.0.1:0",
		Logger:    amqptest.TestLogger(t),
	}
	if mod != nil {
		mod(&o)
	}
	s, err := Start(o)
	if err != nil {
		t.Fatalf("start hub: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
