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

func TestE2ECountsAreConsistent(t *testing.T) {
	for _, client := range []string{loadgen.ClientGoAMQP, loadgen.ClientRaw} {
		t.Run(client, func(t *testing.T) {
			_, tg := hubTarget(t, false)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			rep, err := loadgen.RunE2E(ctx, tg, loadgen.E2EConfig{D2CConfig: loadgen.D2CConfig{
				Connections: 3, Rate: 1000, Duration: 500 * time.Millisecond, Client: client,
			}})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Sent != 500 || rep.Accepted != rep.Sent || rep.Received != rep.Accepted || rep.Duplicates != 0 {
				t.Fatalf("sent %d, accepted %d, received %d, duplicates %d (errors %v)", rep.Sent, rep.Accepted, rep.Received, rep.Duplicates, rep.Errors)
			}
			if rep.Latency == nil || rep.Latency.Count != rep.Received || rep.AckLatency == nil || rep.AckLatency.Count != rep.Accepted {
				t.Fatalf("latency %+v, ack latency %+v", rep.Latency, rep.AckLatency)
			}
		})
	}
}

func TestConnectionsReportsMemory(t *testing.T) {
	for _, client := range []string{loadgen.ClientGoAMQP, loadgen.ClientRaw} {
		t.Run(client, func(t *testing.T) {
			_, tg := hubTarget(t, true)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			rep, err := loadgen.RunConnections(ctx, tg, loadgen.ConnectionsConfig{
				Connections: 20, Hold: 10 * time.Millisecond, Client: client, Links: []string{"events", "c2d"},
				Memory: loadgen.InProcessMemory, MemorySource: "in-process",
			})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Opened != 20 || rep.ConnectLatency == nil || rep.ConnectLatency.Count != 20 {
				t.Fatalf("opened %d, connect latency %+v", rep.Opened, rep.ConnectLatency)
			}
			if rep.HubLoaded <= 0 || rep.HubBaseline <= 0 {
				t.Fatalf("memory before %d, after %d", rep.HubBaseline, rep.HubLoaded)
			}
		})
	}
}

func TestC2DRoundTrips(t *testing.T) {
	_, tg := hubTarget(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := loadgen.RunC2D(ctx, tg, loadgen.C2DConfig{Devices: 2, InFlight: 5, Duration: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent == 0 || rep.Accepted != rep.Sent || rep.Received != rep.Sent || rep.Feedback != rep.Sent {
		t.Fatalf("sent %d, accepted %d, received %d, feedback %d (errors %v)", rep.Sent, rep.Accepted, rep.Received, rep.Feedback, rep.Errors)
	}
	if rep.Latency == nil || rep.Latency.Count != rep.Feedback {
		t.Fatalf("round-trip latency %+v", rep.Latency)
	}
}

func TestBadConfigIsAnError(t *testing.T) {
	tg := &loadgen.Target{Addr: "127.0.0.1:1", Generic: &loadgen.Generic{Address: "q"}}
	ctx := context.Background()
	tests := []struct {
		name string
		run  func() error
	}{
		{"negative connections", func() error {
			_, err := loadgen.RunD2C(ctx, tg, loadgen.D2CConfig{Connections: -1})
			return err
		}},
		{"tiny messages", func() error { _, err := loadgen.RunD2C(ctx, tg, loadgen.D2CConfig{MessageSize: 3}); return err }},
		{"unknown client", func() error {
			_, err := loadgen.RunD2C(ctx, tg, loadgen.D2CConfig{Client: "carrier-pigeon", Duration: time.Millisecond})
			return err
		}},
		{"nothing listening", func() error {
			_, err := loadgen.RunD2C(ctx, tg, loadgen.D2CConfig{Duration: time.Millisecond})
			return err
		}},
		{"generic target without address", func() error {
			_, err := loadgen.RunD2C(ctx, &loadgen.Target{Addr: "127.0.0.1:1", Generic: &loadgen.Generic{}}, loadgen.D2CConfig{})
			return err
		}},
		{"read needs a hub", func() error { _, err := loadgen.RunRead(ctx, tg, loadgen.ReadConfig{}); return err }},
		{"connections: unknown link", func() error {
			_, err := loadgen.RunConnections(ctx, tg, loadgen.ConnectionsConfig{Links: []string{"twin"}})
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); err == nil {
				t.Fatal("no error")
			}
		})
	}
}
