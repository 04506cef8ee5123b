package loadgen_test

import (
	"context"
	"testing"
	"time"

	"amqphub/internal/auth"
	"amqphub/internal/loadgen"
	"amqphub/internal/server"
)

// hubTarget starts an in-memory hub and returns a target for its plain or
// TLS listener.
func hubTarget(t *testing.T, useTLS bool) (*server.Server, *loadgen.Target) {
	t.Helper()
	s := server.StartTest(t, nil)
	tg := &loadgen.Target{
		Addr:     s.AMQPAddr,
		HostName: s.Options.HostName,
		Hub: &loadgen.IoTHub{
			HostName:   s.Options.HostName,
			Registry:   loadgen.StoreRegistry(s.Registry),
			PolicyName: auth.PolicyIoTHubOwner,
			PolicyKey:  auth.DevIoTHubOwnerPrimaryKey,
		},
	}
	if useTLS {
		tg.Addr, tg.TLS = s.AMQPSAddr, s.ClientTLS
	}
	return s, tg
}

func TestD2CCountsAreConsistent(t *testing.T) {
	tests := []struct {
		name string
		cfg  loadgen.D2CConfig
		tls  bool
	}{
		{"go-amqp unbounded", loadgen.D2CConfig{Connections: 2, InFlight: 50, Client: loadgen.ClientGoAMQP}, false},
		{"go-amqp fixed rate over TLS", loadgen.D2CConfig{Connections: 3, Rate: 600, Client: loadgen.ClientGoAMQP}, true},
		{"raw unbounded", loadgen.D2CConfig{Connections: 2, InFlight: 50, Client: loadgen.ClientRaw}, false},
		{"raw fixed rate over TLS", loadgen.D2CConfig{Connections: 3, Rate: 600, Client: loadgen.ClientRaw}, true},
		{"raw large messages", loadgen.D2CConfig{Connections: 1, InFlight: 8, MessageSize: 200 << 10, Client: loadgen.ClientRaw}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, tg := hubTarget(t, tc.tls)
			cfg := tc.cfg
			cfg.Duration = 500 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			rep, err := loadgen.RunD2C(ctx, tg, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Sent == 0 || rep.Sent != rep.Accepted || rep.Rejected != 0 || rep.Failed != 0 {
				t.Fatalf("sent %d, accepted %d, rejected %d, failed %d (errors %v)", rep.Sent, rep.Accepted, rep.Rejected, rep.Failed, rep.Errors)
			}
			if rep.Latency == nil || rep.Latency.Count != rep.Accepted {
				t.Fatalf("latency %+v for %d accepted", rep.Latency, rep.Accepted)
			}
			t.Logf("%+v %v", rep, rep.Latency)
		})
	}
}

func TestReadCountsAreConsistent(t *testing.T) {
	for _, client := range []string{loadgen.ClientGoAMQP, loadgen.ClientRaw} {
		t.Run(client, func(t *testing.T) {
			_, tg := hubTarget(t, false)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			rep, err := loadgen.RunRead(ctx, tg, loadgen.ReadConfig{
				Messages: 3000, Partition: 1, Client: client,
				Fill: loadgen.D2CConfig{Connections: 2, Client: loadgen.ClientRaw},
			})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Accepted != 3000 || rep.Received != 3000 || rep.MsgsPerSec <= 0 {
				t.Fatalf("accepted %d, received %d, %.0f msgs/s", rep.Accepted, rep.Received, rep.MsgsPerSec)
			}
		})
	}
}
