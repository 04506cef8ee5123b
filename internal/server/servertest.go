package server

import (
	"fmt"
	mrand "math/rand/v2"
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

// StartTestWellKnown starts an in-memory hub whose AMQPS and HTTPS
// listeners use the well-known ports 5671 and 443 on a random 127.x.y.z
// address, with that address as the hub's HostName. The Node SDKs always
// dial port 443 (REST, AmqpWs) or 5671 (Amqp) of the HostName, and a fresh
// loopback address per hub lets several such tests run at once. Binding
// ports below 1024 needs root (or CAP_NET_BIND_SERVICE).
func StartTestWellKnown(t testing.TB, mod func(*Options)) *Server {
	t.Helper()
	var last error
	for range 20 {
		ip := fmt.Sprintf("127.%d.%d.%d", 1+mrand.IntN(250), mrand.IntN(250), 1+mrand.IntN(250))
		o := Options{
			InMemory:  true,
			HostName:  ip,
			TLSNames:  []string{ip},
			AMQPAddr:  ip + ":0",
			AMQPSAddr: ip + ":5671",
			HTTPSAddr: ip + ":443",
			Logger:    amqptest.TestLogger(t),
		}
		if mod != nil {
			mod(&o)
		}
		s, err := Start(o)
		if err != nil {
			last = err
			continue
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	t.Fatalf("start hub on well-known ports of a 127.x.y.z address (needs root or CAP_NET_BIND_SERVICE): %v", last)
	return nil
}
